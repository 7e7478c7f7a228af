"""Supervisor: starts every stage as its own process, watches heartbeats, restarts crashed or hung
stages (bounded), reports status, and on SIGINT/SIGTERM drains the pipeline from the sources down.

Exit codes of a stage: 0 done, 2 bad config, 3 bad input (not worth a restart), others: a crash.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
import zmq

from pipeline.runtime.config import ConfigError, PipelineConfig
from pipeline.runtime.frame_store import remove_dead_rings, remove_rings
from pipeline.runtime.heartbeats import MAX_BEAT_BYTES, ended_streams, parse_beat, resume_frame
from pipeline.runtime.registry import stage_name
from pipeline.runtime.schema import to_plain
from pipeline.runtime.stage import curve_keys
from pipeline.runtime.status import Progress, Prometheus, format_status
from pipeline.runtime.storage import append_line, is_storage_full, replace_file
from pipeline.runtime.transport import Endpoint, close_context, connect_problem, open_socket, remove_ipc_sockets

log = logging.getLogger("pipeline.runtime.supervisor")
EXIT_BAD_INPUT = 3  # a stage's exit code for bad input or a fatal error (StageFatalError): no restart
STARTUP_GRACE_S = 60.0  # model loading may take a while before the first heartbeat
REMOTE_NOTE_S = 5.0  # while the other host's stage is not up, say so this often


@dataclass
class StageProcess:
    label: str  # "detect" or "capture:cam0"
    argv: list[str]
    stage: str = ""  # the stage name: "capture" for "capture:cam0"
    is_source: bool = False  # one process per source: restarts resume its frame numbering
    proc: subprocess.Popen | None = None
    restarts: int = 0
    started: float = 0.0
    last_beat: dict = field(default_factory=dict)
    last_beat_time: float = 0.0
    exit_code: int | None = None
    release_sent: bool = False
    upstream_eos_due: bool = False  # restarted: its upstream must send the EOS it may have lost

    carried: dict = field(default_factory=dict)  # counters of this stage's earlier processes

    def __post_init__(self):
        self.stage = self.stage or self.label.split(":")[0]

    def carry_counters(self) -> None:
        """Before a restart: what the ending process counted stays in the books (a restarted stage counts
        from 0 again); its beat is no longer the stage's state."""
        for key, value in self.last_beat.items():
            if _is_counter(key, value):
                self.carried[key] = self.carried.get(key, 0) + value
        self.last_beat = {k: v for k, v in self.last_beat.items() if not _is_counter(k, v)} | {"state": "restarting"}

    def counted_beat(self) -> dict:
        """The last beat with the counters of earlier processes added."""
        beat = dict(self.last_beat)
        for key, value in self.carried.items():
            beat[key] = beat.get(key, 0) + value
        return beat

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, start_new_session=True)  # Ctrl-C reaches only the supervisor
        self.started, self.exit_code, self.last_beat_time, self.release_sent = time.time(), None, 0.0, False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)


GAUGES = {"t", "pid", "fps", "next_frame", "frames_total", "clients", "senders"}  # states, not counts: never summed


def _is_counter(key: str, value) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool) and key not in GAUGES
            and not key.endswith(("_p50", "_p99")))


def write_run_config(cfg: PipelineConfig) -> Path:
    """The resolved config (endpoints, ipc folder) every stage of this run reads."""
    out = cfg.resolve(cfg.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # under a file, read-only, no permission: one line, exit 2
        raise ConfigError(f"config key 'output_dir': cannot create {out} ({exc.strerror or exc})") from None
    path = out / "run_config.yaml"
    try:
        written = replace_file(path, yaml.safe_dump(to_plain(cfg), sort_keys=False))
    except OSError as exc:
        raise ConfigError(f"config key 'output_dir': cannot write {path} ({exc.strerror or exc})") from None
    if not written:
        raise ConfigError(f"output_dir {out}: the disk is full (cannot write run_config.yaml)")
    return path


def wait_for_remote_side(cfg: PipelineConfig) -> None:
    """Either host of a split may start first: the sending side waits, saying so, until the stage it
    sends to on the other host listens, for at most transport.remote_wait_s (then ConfigError)."""
    pending = {key: Endpoint.parse(cfg.endpoint(key)) for key in cfg.remote_links()}
    pending = {key: ep for key, ep in pending.items() if ep.is_tcp}
    started, noted = time.monotonic(), None
    while pending:
        problems = {key: connect_problem(ep) for key, ep in pending.items()}
        waited = time.monotonic() - started
        for key in [k for k, problem in problems.items() if problem is None]:
            if noted is not None:
                log.info("%s is up (after %.0f s)", pending[key].address, waited)
            del pending[key]
        if not pending:
            return
        key, problem = next((k, problems[k]) for k in pending)
        where = f"{pending[key].address} (endpoints.{key}: {key[:-3]} runs on another host)"
        if waited >= cfg.transport.remote_wait_s:
            raise ConfigError(f"config key 'endpoints.{key}': {pending[key].address} still unreachable after "
                              f"{waited:.0f} s ({problem}): is the pipeline on that host running? "
                              "(transport.remote_wait_s)")
        if noted is None or time.monotonic() - noted >= REMOTE_NOTE_S:
            noted = time.monotonic()
            log.warning("waiting for %s: %s; %.0f of %.0f s", where, problem, waited, cfg.transport.remote_wait_s)
        time.sleep(0.5)


class Supervisor:
    def __init__(self, cfg: PipelineConfig, progress: bool = True):
        self.cfg = cfg
        self.run_config = write_run_config(cfg)
        self.ctx = zmq.Context()
        curve = curve_keys(cfg)  # the stages and the view connect with Curve where it is configured
        self.control = open_socket(self.ctx, cfg.endpoint("control"), hwm=1000, curve=curve,
                                   max_message_bytes=MAX_BEAT_BYTES)
        self.status_pub = open_socket(self.ctx, cfg.endpoint("status"), hwm=10, curve=curve)
        self.stream_states: dict[str, str] = {}
        self.bad_beats = 0
        self.disk_full_reported: set[str] = set()
        # this run's id: its frames carry it, and its shared-memory rings are named by it
        self.session = os.urandom(6).hex()
        self.stages = self._plan()
        self.stopping = False
        self.failed: str | None = None
        self.failed_code = 1  # the run's exit code when it failed: a stage's 2 (config) or 3 (input), else 1
        sources = [sp.label for sp in self.stages if sp.is_source]
        self.progress = Progress(sources, cfg.path_names[-1]) if progress and not cfg.live else None
        self.metrics = Prometheus(cfg.supervisor.prometheus_port)

    def _plan(self) -> list[StageProcess]:
        cfg = self.cfg
        base = [sys.executable, "-m", "pipeline", "stage"]
        plan = []
        # frames carry this run's id: a recorder on another host that restarts knows its books go on
        session = [f"--session={self.session}"]
        for name in reversed(cfg.path_names):  # receivers first, so their sockets are bound early
            if name not in cfg.run_stages:
                continue
            if cfg.stage_class(name).role == "source":
                plan += [StageProcess(f"{name}:{s.id}", [*base, name, str(self.run_config), "--source", s.id,
                                                         *session], name, True) for s in cfg.sources]
            else:
                plan.append(StageProcess(name, base + [name, str(self.run_config), *session], name))
        for name in dict.fromkeys(stage_name(ref) for ref in cfg.consumers):
            cls = cfg.stage_class(name)
            # a consumer runs where it is listed, or by default beside the stage it follows
            if cls.enabled(cfg) and (name in cfg.run_stages or cls.beside in cfg.run_stages):
                plan.append(StageProcess(name, base + [name, str(self.run_config)], name))
        return plan

    # ------------------------------------------------------------------ run
    def run(self) -> int:
        if remove_dead_rings():  # an earlier run's, whose supervisor was killed before it could
            log.info("removed shared-memory frame rings of processes that no longer run")
        try:
            return self._run()
        finally:  # the stages have exited (or the supervisor failed): nobody reads their frames any more
            remove_rings(self.session)

    def _run(self) -> int:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        self._start_consumers_then_sources()
        log.info("started %d stage processes; outputs in %s", len(self.stages), self.cfg.resolve(self.cfg.output_dir))
        last_status, drain_deadline = 0.0, None
        while any(sp.alive() for sp in self.stages):
            self._read_heartbeats(timeout_ms=self._poll_ms())
            self._check_processes()
            self._release_flushed()
            if self.failed and not self.stopping:
                self._begin_drain()
            if self.stopping:
                drain_deadline = drain_deadline or time.time() + self.cfg.supervisor.drain_timeout_s
                if time.time() > drain_deadline:
                    self._terminate_rest()
            if time.time() - last_status >= self.cfg.supervisor.status_interval_s:
                self._report()
                last_status = time.time()
        self._read_heartbeats(timeout_ms=20)  # the last beats are in already: each stage beats before it exits
        self._record_last_exits()
        self._report(final=True)
        self.control.close(0)
        self.status_pub.close(0)
        close_context(self.ctx)
        remove_ipc_sockets(self.cfg.endpoints.values(), self.cfg.transport.ipc_dir)
        if self.failed:
            print(f"pipeline failed: {self.failed}", file=sys.stderr)
            return self.failed_code
        return 0

    def _start_consumers_then_sources(self) -> None:
        """Sources start once every other stage beats (models loaded): a live camera's first seconds
        are not dropped while the detector is still loading."""
        for sp in self.stages:
            if not sp.is_source:
                sp.start()
        deadline = time.time() + STARTUP_GRACE_S
        waiting = [sp for sp in self.stages if not sp.is_source]
        while waiting and time.time() < deadline and not self.stopping:
            self._read_heartbeats(timeout_ms=200)
            waiting = [sp for sp in waiting if not sp.last_beat_time and sp.alive()]
        for sp in self.stages:
            if sp.is_source and not self.stopping:
                sp.start()

    def _on_signal(self, signum, frame) -> None:
        if not self.stopping:
            log.info("signal %d: draining (sources stop, every stage flushes)", signum)
            self._begin_drain()

    def _begin_drain(self) -> None:
        """Sources stop first; a stage fed from another host ends its streams itself (this host may
        run no source at all), and every stage after them finishes as the ends of stream arrive."""
        self.stopping = True
        for sp in self.stages:
            if sp.is_source or self._fed_from_elsewhere(sp):
                sp.signal(signal.SIGTERM)

    def _fed_from_elsewhere(self, sp: StageProcess) -> bool:
        return sp.stage in self.cfg.path_names and self.cfg.runs_elsewhere(self.cfg.upstream(sp.stage))

    def _terminate_rest(self) -> None:
        for sp in self.stages:
            if sp.alive():
                log.warning("%s did not drain in time: terminating", sp.label)
                sp.signal(signal.SIGTERM)
        deadline = time.time() + 5
        while time.time() < deadline and any(sp.alive() for sp in self.stages):
            time.sleep(0.1)
        for sp in self.stages:
            if sp.alive():
                sp.proc.kill()
                sp.proc.wait()

    def _sends_elsewhere(self, sp: StageProcess) -> bool:
        return self.cfg.runs_elsewhere(self.cfg.downstream(sp.stage))

    # ------------------------------------------------------------------ watch
    def _read_heartbeats(self, timeout_ms: int) -> None:
        if not self.control.poll(timeout_ms):
            return
        while True:
            try:
                raw = self.control.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            beat, problem = parse_beat(raw)
            sp = next((s for s in self.stages if beat and s.label == beat.get("stage")), None)
            if problem is None and (sp is None or sp.proc is None or beat["pid"] != sp.proc.pid):
                problem = f"no stage process {str(beat.get('stage'))[:40]!r} with pid {beat.get('pid')}"
            if problem is not None:
                self._bad_beat(problem)
                continue
            sp.last_beat, sp.last_beat_time = beat, time.time()
            if sp.upstream_eos_due and sp.proc is not None and beat.get("pid") == sp.proc.pid:
                self._resend_upstream_eos(sp)

    def _bad_beat(self, problem: str) -> None:
        """A heartbeat that is not one: dropped and counted, never trusted (the control socket is only
        as private as its ipc folder or loopback port)."""
        self.bad_beats += 1
        if self.bad_beats <= 10 or self.bad_beats % 1000 == 0:
            log.warning("dropped a malformed heartbeat (%d so far): %s", self.bad_beats, problem)

    def _resend_upstream_eos(self, sp: StageProcess) -> None:
        """A killed stage may have taken its upstream's end-of-stream messages down with it (they sat in
        its receive queue) and the restarted one would wait for them forever: once it beats (its socket
        is up), ask the upstream stage to send the EOS of every stream it finished again (SIGUSR2;
        a second EOS is ignored). An upstream already gone cannot: the run fails instead of hanging."""
        sp.upstream_eos_due = False
        if self.cfg.runs_elsewhere(self.cfg.upstream(sp.stage)):
            log.info("%s restarted: its sender on the other host repeats every end of stream it has no "
                     "confirmation for; the ends its predecessor had confirmed it takes from here", sp.label)
            return
        upstream = [u for u in self.stages if self.cfg.downstream(u.stage) == sp.stage]
        if not self.cfg.live and any(u.exit_code == 0 for u in upstream):  # live runs end by signal anyway
            self.failed = f"{sp.label} restarted after its upstream had finished: the end of stream was lost"
            return
        for u in upstream:
            if u.proc is not None and u.last_beat.get("pid") == u.proc.pid:  # its handler is installed by now
                u.signal(signal.SIGUSR2)

    def _check_processes(self) -> None:
        now = time.time()
        for sp in self.stages:
            if sp.proc is None:  # a source never started: the run stopped during start-up
                continue
            code = sp.proc.poll()
            if code is None:
                silent_for = now - (sp.last_beat_time or sp.started)
                limit = self.cfg.supervisor.heartbeat_timeout_s + (0 if sp.last_beat_time else STARTUP_GRACE_S)
                if silent_for > limit and not self.stopping:
                    log.error("%s sent no heartbeat for %.0f s: killing it", sp.label, silent_for)
                    sp.proc.kill()
                    sp.proc.wait()
                    if sp.last_beat.get("state") == "exiting":  # its work was done: stuck closing, not hung
                        sp.exit_code = 0
                        continue
                    self._restart(sp, "hung")
                continue
            if sp.exit_code is not None:
                continue
            sp.exit_code = code
            if code == 0:
                continue
            if sp.release_sent:  # released: its downstream had read all it sent, so nothing is lost and a
                log.warning("%s exited with code %d after its output was delivered: counted as done",
                            sp.label, code)  # restart would wait for ends of stream nobody sends again
                continue
            if code in (2, EXIT_BAD_INPUT) or (self.stopping and self._sends_elsewhere(sp)):
                self._failed_by(sp, code)
            elif not self.stopping:
                self._restart(sp, f"exit code {code}")

    def _failed_by(self, sp: StageProcess, code: int) -> None:
        """The run fails: a stage's own error (2 or 3), or a stage sending to another host that did not
        end cleanly (killed, crashed) in a drain: that host may lack the end of its frames."""
        if self.failed:
            return
        if code in (2, EXIT_BAD_INPUT):
            self.failed = f"{sp.label} exited with code {code} (bad config or input; see its message above)"
            self.failed_code = code
        else:
            self.failed = (f"{sp.label} ended (exit code {code}) before {self.cfg.downstream(sp.stage)} on the "
                           "other host confirmed its ends of stream: the output there may be incomplete")
            self.failed_code = EXIT_BAD_INPUT

    def _record_last_exits(self) -> None:
        """Stages that exited after the last check (as the drain timeout ended the run; nothing is
        restarted any more): as in _check_processes, a stage's own error (2 or 3) fails the run, and so
        does a stage sending to another host that did not end cleanly: never a quiet exit 0."""
        for sp in self.stages:
            if sp.proc is None or sp.exit_code is not None:
                continue
            code = sp.exit_code = sp.proc.poll()
            if code != 0 and not sp.release_sent and (code in (2, EXIT_BAD_INPUT) or self._sends_elsewhere(sp)):
                self._failed_by(sp, code)

    def _release_flushed(self) -> None:
        """A stage that sent all its EOS waits, output open, until its downstream stage has taken them
        (see StageRunner._await_release); tell it when that happened: the downstream has exited, or has
        itself sent the EOS of every stream, which it does only after reading every frame and EOS
        before them. So the whole frame path exits at once, not one stage after the other."""
        for sp in self.stages:
            if not sp.alive() or sp.last_beat.get("state") != "flushed" or sp.release_sent:
                continue
            downstream = self.cfg.downstream(sp.stage)
            peers = [d for d in self.stages if d.label == downstream]
            if peers and all(d.proc is not None and (d.exit_code is not None or d.last_beat.get("state") == "flushed")
                             for d in peers):
                sp.signal(signal.SIGUSR1)
                sp.release_sent = True

    def _poll_ms(self) -> int:
        """How long to wait for heartbeats: short once the run is ending (every source done, or a drain;
        an exit sends no beat), so the run ends soon after its last stage does."""
        sources = [sp for sp in self.stages if sp.is_source]
        ending = self.stopping or (bool(sources) and all(
            sp.exit_code is not None or sp.last_beat.get("state") in ("flushed", "exiting") for sp in sources))
        return 20 if ending else 200

    def _restart(self, sp: StageProcess, why: str) -> None:
        self._read_heartbeats(timeout_ms=0)  # the ended process's last beats: which streams it had ended
        if sp.restarts >= self.cfg.supervisor.max_restarts:
            self.failed = f"{sp.label} failed ({why}) after {sp.restarts} restarts"
            return
        sp.restarts += 1
        sp.upstream_eos_due = not sp.is_source
        ended = ended_streams(sp.argv, sp.last_beat, self.cfg.stream_ids)
        sp.argv = [a for a in sp.argv if not a.startswith(("--start-frame=", "--restarts=", "--ended="))]
        sp.argv.append(f"--restarts={sp.restarts}")
        if ended and self.cfg.runs_elsewhere(self.cfg.upstream(sp.stage)):
            # the sender on the other host may be gone: nobody would send these ends again
            sp.argv.append("--ended=" + ",".join(f"{sid}={count}" for sid, count in sorted(ended.items())))
        if sp.is_source:
            sp.argv.append(f"--start-frame={resume_frame(sp.last_beat, self.cfg.live, time.time())}")
        log.warning("restarting %s (%s), restart %d of %d", sp.label, why, sp.restarts,
                    self.cfg.supervisor.max_restarts)
        sp.carry_counters()
        sp.start()

    # ------------------------------------------------------------------ report
    def _report(self, final: bool = False) -> None:
        snapshot = {sp.label: dict(sp.counted_beat(), restarts=sp.restarts, alive=sp.alive(), exit_code=sp.exit_code)
                    for sp in self.stages}
        self.metrics.update(snapshot, self._queue_depths(snapshot))
        if replace_file(self.cfg.resolve(self.cfg.output_dir) / "status.json", json.dumps(snapshot, indent=1)):
            self._disk_space_back()
        else:
            self._disk_full("status.json is not updated")
        self._publish(b"status", snapshot)
        self._stream_events(snapshot)
        if self.progress is not None:
            self.progress.update(snapshot, final)
            if not final:
                return
        print(format_status(snapshot, self._queue_depths(snapshot)), file=sys.stderr, flush=True)

    def _publish(self, topic: bytes, payload: dict) -> None:
        try:
            self.status_pub.send_multipart([topic, json.dumps(payload).encode()], zmq.NOBLOCK)
        except zmq.Again:
            pass

    def _stream_events(self, snapshot: dict) -> None:
        """stream_down / stream_up events when a capture's reported state changes."""
        sources = {sp.label for sp in self.stages if sp.is_source}
        for label, beat in snapshot.items():
            state = beat.get("stream")
            if label not in sources or state not in ("up", "down"):
                continue
            previous = self.stream_states.get(label)
            self.stream_states[label] = state
            if previous is not None and previous != state:
                event = {"type": f"stream_{state}", "stream_id": label.split(":", 1)[1], "t": time.time()}
                self._publish(b"event", event)
                if not self._append_event(event):
                    self._disk_full("stream events are published but not written to events.jsonl")

    def _append_event(self, event: dict) -> bool:
        path = self.cfg.resolve(self.cfg.output_dir) / "events.jsonl"
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)  # read: see append_line
        except OSError as error:
            if is_storage_full(error):
                return False
            raise
        try:
            return append_line(fd, json.dumps(event, separators=(",", ":")))
        finally:
            os.close(fd)

    def _disk_full(self, what: str) -> None:
        """A full disk must not stop a live run: say so once per kind of loss (until space returns), go on."""
        if what not in self.disk_full_reported:
            self.disk_full_reported.add(what)
            log.error("disk full under %s: %s until space returns", self.cfg.output_dir, what)

    def _disk_space_back(self) -> None:
        if self.disk_full_reported:
            log.warning("disk space is back under %s", self.cfg.output_dir)
            self.disk_full_reported.clear()

    def _queue_depths(self, snapshot: dict) -> dict[str, int]:
        """Frames between a stage and its upstream: what upstream sent minus what this one took."""
        path = self.cfg.path_names
        sent_by = {name: 0 for name in path}
        for sp in self.stages:
            if sp.stage in sent_by and sp.label in snapshot:  # consumers beside the frame path have no queue here
                sent_by[sp.stage] += int(snapshot[sp.label].get("sent", 0))
        depths = {}
        for up, down in zip(path, path[1:]):
            if down in snapshot:
                depths[down] = max(0, sent_by[up] - int(snapshot[down].get("received", 0)))
        return depths
