"""The loop every stage process runs: receive -> process -> send, with end-of-stream, heartbeats,
live-mode dropping and clean shutdown. A stage module only says what to do with frames.

Live mode keeps latency bounded two ways: sends never block (a full downstream queue drops the
frame here, counted as ``dropped_full``), and a stage that falls behind keeps only the newest queued
frame of each stream (older ones are counted as ``dropped_stale``). Replay mode never drops: sends
wait for room (backpressure reaches the source) and every queued frame is processed.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from typing import ClassVar, Iterator

import zmq

from pipeline.runtime import frame_store
from pipeline.runtime.books import DROPPED, OWN_DROPPED, REMOTE_DROPPED, stamp
from pipeline.runtime.config import PipelineConfig, connect_side
from pipeline.runtime.links import input_key
from pipeline.runtime.messages import FrameMessage, MessageError, StaleFrame
from pipeline.runtime.meter import Meter
from pipeline.runtime.registry import register_stage
from pipeline.runtime.remote_downstream import RemoteDownstream
from pipeline.runtime.remote_ends import RESEND_S, EndReceipts
from pipeline.runtime.transport import CurveKeys, Endpoint, close_context, open_socket, open_watched_socket

log = logging.getLogger("pipeline.runtime.stage")
# what decoding an untrusted message may raise beyond MessageError (a ValueError) where a check is
# missing: still one counted drop, never the stage's end
UNTRUSTED_ERRORS = (ValueError, TypeError, OverflowError)
FATAL_EOS_WAIT_S = 5.0  # how long a failed source waits for a downstream to take its EOS
MALFORMED_LOGGED = 20  # malformed messages logged one by one; after that every 1000th
NO_SENDER_NOTE_S = 30.0  # a stage fed from another host says this often that no sender is there yet


CONTROL_LINGER_MS = 500  # the last beat (final counters, "exiting") still reaches a live supervisor


class StageFatalError(RuntimeError):
    """An error a restart cannot fix (one-line message): the stage exits 3 and the supervisor stops the run."""


class Stage:
    """Subclass per stage; setting ``name`` registers it (pipeline.runtime.registry). Declare:

    ``role``         "source" (one process per configured source: ``frames()``), "filter" (a frame-path
                     stage: ``process``/``process_batch``, ``end_stream``) or "consumer" (beside the frame
                     path, its own ``run()`` loop, e.g. the view)
    ``section``      the dataclass of its ``stages.<name>`` config key (None: no settings)
    ``port_offset``  tcp port offset of its frame input link ``<name>_in`` (None: derived from the name)
    ``binds``        side links it binds: key -> (pattern, port offset), e.g. {"events": ("pub", 5)}
    ``beside``       consumers: the stage whose host runs it when run_stages does not name it
    ``subscribes``   PUB links it follows (e.g. ("events", "status")): some stage of the config must bind them

    The links it reads and writes follow from its place in the frame path: it pulls ``<name>_in`` and
    pushes to the next stage's input.
    """

    name: ClassVar[str] = ""
    role: ClassVar[str] = "filter"
    section: ClassVar[type | None] = None
    port_offset: ClassVar[int | None] = None
    binds: ClassVar[dict[str, tuple[str, int]]] = {}
    beside: ClassVar[str | None] = None
    subscribes: ClassVar[tuple[str, ...]] = ()
    batch_size = 1
    restarts = 0  # set by `pipeline stage --restarts N`: how often the supervisor restarted this stage
    ended_before: dict[str, int] = {}  # `--ended`: streams an earlier process had finished (id -> frames)
    session = ""  # set by `pipeline stage --session ID`: the supervisor run this process belongs to

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__ and cls.name:
            register_stage(cls)

    @classmethod
    def check_config(cls, cfg: PipelineConfig, check_files: bool) -> None:
        """Checks across config sections, at load (ConfigError, one line); ``check_files``: files must exist."""

    @classmethod
    def preflight(cls, cfg: PipelineConfig) -> None:
        """Before a run starts it on this host: what is too slow for every config load (reading a
        weights file's meta, say). ConfigError (one line) stops the run with exit 2."""

    @classmethod
    def enabled(cls, cfg: PipelineConfig) -> bool:
        """Consumers: whether this run starts it at all."""
        return True

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg
        self.counters: dict[str, int] = {}  # stage-specific counts reported in heartbeats

    @property
    def settings(self):
        """This stage's config section (cfg.stages.<name>)."""
        return self.cfg.stages.get(self.name)

    def accept(self, msg: FrameMessage) -> str | None:
        """What is wrong with a decoded frame for this stage (a missing or misshapen buffer, a bad meta
        value), or None: a frame with a problem is dropped and counted as malformed, never processed."""
        return None

    def process(self, msg: FrameMessage) -> list[FrameMessage]:
        return [msg]

    def process_batch(self, msgs: list[FrameMessage]) -> list[FrameMessage]:
        return [out for msg in msgs for out in self.process(msg)]

    def end_stream(self, stream_id: str, frame_count: int = 0) -> list[FrameMessage]:
        """Flush what is held for a stream that ended; returns messages to send before its EOS.
        ``frame_count``: the frames its source sent (from the EOS; 0 where unknown)."""
        return []

    def stream_frame_count(self, stream_id: str) -> int:
        """Source stages: the frames a stream that ran to its end sent (0: unknown or cut short)."""
        return 0

    def frames(self) -> Iterator[FrameMessage | None]:
        """Source stages only: yield frames (or None while idle, to keep heartbeats going)."""
        raise NotImplementedError

    def run(self) -> int:
        """Consumers only: their own loop; returns the exit code."""
        raise NotImplementedError

    def status(self) -> dict:
        return {}

    def close(self) -> None:
        pass


class StageMetrics(Meter):
    """A frame stage's meter: the frame counters every stage reports, latency since capture."""

    def __init__(self):
        super().__init__(("received", "processed", "sent", "dropped_stale", "dropped_full", "malformed"))

    def done(self, msg: FrameMessage, now: float) -> None:
        self.count("processed")
        self.tick(msg.stream_id, now)
        self.observe("latency_ms", msg.age_ms(now))


class StageRunner:
    def __init__(self, stage: Stage, cfg: PipelineConfig, instance: str | None = None):
        self.stage, self.cfg = stage, cfg
        self.label = instance or stage.name
        self.metrics = StageMetrics()
        self.ctx = zmq.Context()
        hwm = 1 if cfg.live else cfg.transport.hwm
        curve = curve_keys(cfg)
        self.inp = self.out = self.in_watch = self.out_watch = None
        self.shared_in: frame_store.FrameStoreReader | None = None  # live, same host: frames in /dev/shm
        self.shared_out: frame_store.FrameStore | None = None
        self.unreachable = False  # the downstream refused us: nothing queued for it can ever go
        # fed from another host: the sender there waits for this stage to confirm its ends of stream
        remote_upstream = stage.role != "source" and cfg.runs_elsewhere(cfg.upstream(stage.name))
        self.receipts = EndReceipts() if remote_upstream else None
        if stage.role != "source":
            in_spec = cfg.endpoint(input_key(stage.name))
            if remote_upstream and Endpoint.parse(in_spec).is_tcp:
                self.inp, self.in_watch = open_watched_socket(self.ctx, in_spec, "server", hwm=hwm, curve=curve,
                                                              max_message_bytes=cfg.max_message_bytes, routed=True)
            else:
                self.inp = open_socket(self.ctx, in_spec, hwm=hwm, curve=curve,
                                       max_message_bytes=cfg.max_message_bytes, routed=remote_upstream)
            if shares_memory(cfg, in_spec, remote_upstream):
                self.shared_in = frame_store.FrameStoreReader(cfg.max_message_bytes)
        self.remote: RemoteDownstream | None = None  # the downstream stage, where it runs on another host
        self._open_output(hwm, curve)
        self.control = open_socket(self.ctx, connect_side(cfg.endpoint("control")), hwm=16, curve=curve)
        self.streams = set(cfg.stream_ids)  # frames and EOS of any other stream are dropped and counted
        # per stream, frames this stage let go by the live policy: stale ones before the stage saw the
        # frame after them (stamped on it as it arrives, so the stage's own books count them as drops,
        # not losses), and those a full downstream refused after the stage saw them (stamped as sent)
        self.drops_stale: dict[str, int] = {}
        self.drops_full: dict[str, int] = {}
        self.frame_counts: dict[str, int] = {}   # the ended streams, with the frame count their EOS carries
        self.stopping = False
        self.fatal: StageFatalError | None = None  # a source's bad input, raised after its EOS went out
        self.awaiting_release = self.released = False
        # SIGTERMs so far; a source, or a stage fed from another host, gets one to begin a drain: the
        # next one (the supervisor's terminate) ends the wait for another host's confirmations
        self.terms = 0
        self.drain_terms = 1 if stage.role == "source" or remote_upstream else 0
        self.parent_pid = os.getppid()  # the supervisor: if it dies, this stage must not live on alone
        self.orphaned = False
        self._last_beat = 0.0
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        self.eos_resend_due = self.downstream_gone = False
        self.sender_noted = 0.0  # when this stage last said it waits for a sender on another host
        signal.signal(signal.SIGUSR1, self._on_release)
        signal.signal(signal.SIGUSR2, self._on_resend_eos)

    def _open_output(self, hwm: int, curve: CurveKeys | None) -> None:
        downstream = self.cfg.downstream(self.stage.name)
        if downstream is None:
            return
        elsewhere = self.cfg.runs_elsewhere(downstream)
        out_spec = connect_side(self.cfg.endpoint(input_key(downstream)))
        # a link to another host: its state is logged, a receiver that does not admit us is exit 3
        if Endpoint.parse(out_spec).is_tcp and (elsewhere or curve is not None):
            self.out, self.out_watch = open_watched_socket(self.ctx, out_spec, "client", hwm=hwm, curve=curve,
                                                           routed=elsewhere)
        else:
            self.out = open_socket(self.ctx, out_spec, hwm=hwm, curve=curve, routed=elsewhere)
        if elsewhere:
            self.remote = RemoteDownstream(self.out, self.out_watch, self.cfg, downstream, self.label)
        elif shares_memory(self.cfg, out_spec, elsewhere):
            self.shared_out = frame_store.FrameStore(self.cfg.transport.shared_memory_slots, self.stage.session)

    @property
    def ended(self) -> set[str]:
        return set(self.frame_counts)

    def _on_term(self, signum, frame):
        self.stopping = True
        self.released = self.released or self.awaiting_release
        self.terms += 1

    def _on_release(self, signum, frame):
        self.released = self.downstream_gone = True  # SIGUSR1: the supervisor saw the downstream exit

    def _on_resend_eos(self, signum, frame):
        self.eos_resend_due = True  # the downstream stage was restarted (see Supervisor._resend_upstream_eos)

    def _resend_eos(self) -> bool:
        if not self.eos_resend_due or self.out is None:
            return False
        self.eos_resend_due = False
        for stream_id in sorted(self.ended):
            self._send(FrameMessage.end_of_stream(stream_id, self.frame_counts.get(stream_id, 0)))
        log.info("%s: sent the end of %d finished stream(s) again for a restarted downstream stage",
                 self.label, len(self.ended))
        return True

    # ------------------------------------------------------------ main loops
    def run(self) -> int:
        try:
            if self.inp is None:
                self._run_source()
            else:
                self._run_filter()
            if self.remote is not None and not (self.unreachable or self.orphaned):
                self._await_confirmations()
            if self.fatal is not None:
                raise self.fatal  # its EOS is in the downstream's pipe: closing with linger delivers it
            if self.out is not None and self.remote is None:
                self._await_release()
            elif self.out is None and self.receipts is not None:  # the last stage, fed from another host:
                self._answer_repeated_ends(until=time.monotonic() + 2 * RESEND_S)  # a lost answer is asked again
        finally:
            self._beat(force=True, state="exiting")
            try:
                self.stage.close()
            finally:
                self._close_sockets()
        return 0

    def _close_sockets(self) -> None:
        # queued output (the stream's last frames and its EOS) must still reach a downstream stage
        # that is slow to start: linger as long as the drain may take, never forever; nothing can
        # reach a downstream that has exited (an EOS sent again for a restarted one may be left), and
        # one on another host has confirmed what it took (or was given up on: _await_confirmations)
        gone = self.orphaned or self.downstream_gone or self.remote is not None or self.unreachable
        linger_ms = 0 if gone else int(self.cfg.supervisor.drain_timeout_s * 1000)
        for watch in (self.in_watch, self.out_watch):
            if watch is not None:
                watch.close()
        for sock in (self.inp, self.out, self.control):
            if sock is not None:  # (the input lingers for the last confirmations to another host)
                sock.close(linger=linger_ms if sock is self.out else
                           CONTROL_LINGER_MS if sock is self.control or self.receipts is not None else 0)
        close_context(self.ctx)  # returns once ZeroMQ has handed every queued message to its peer
        if self.shared_in is not None:
            self.shared_in.close()
        if self.shared_out is not None:  # its files stay for the frames in flight: the supervisor removes
            self.shared_out.close(unlink=self.orphaned)  # them once this process exited (if it is there)

    def _await_confirmations(self) -> None:
        """A downstream on another host has no supervisor here to say it is done: wait until it
        confirms every ended stream, else the run must not end quietly."""
        problem = self.remote.await_confirmations(
            self.frame_counts, self._beat_while_delivering,
            give_up=lambda: self.terms > self.drain_terms or self.orphaned or self.unreachable)
        if problem is None:
            return
        if self.fatal is not None:  # (its own line goes out; this one only to the log)
            log.error("%s: %s", self.label, problem)
        self.fatal = self.fatal or StageFatalError(problem)

    def _beat_while_delivering(self) -> None:
        # a middle host of a chain keeps answering its own sender's repeated ends meanwhile
        self._answer_repeated_ends()
        self._beat(state="delivering")

    def _await_release(self) -> None:
        """Keep the output open until the next stage is done. ZeroMQ drops what a receiver has not yet
        taken in (its queue full: HWM) when the sending peer disconnects, the stream's last frames and
        its EOS among them, so a stage exits only when the supervisor says its downstream has exited
        (SIGUSR1), on a SIGTERM from here on, or after the drain timeout. (A downstream on another
        host is not waited for here: see _await_confirmations.)"""
        self.awaiting_release = True
        deadline = time.time() + self.cfg.supervisor.drain_timeout_s
        while not self.released and time.time() < deadline:
            if self._resend_eos():
                deadline = time.time() + self.cfg.supervisor.drain_timeout_s
            self._answer_repeated_ends()
            self._beat(state="flushed")
            time.sleep(0.05)

    def _answer_repeated_ends(self, until: float = 0.0) -> None:
        """Fed from another host: its sender repeats an end of stream until it has a confirmation
        (the first may have gone to a connection that broke). Frames that still come (this stage
        cut their stream short: a drain) go nowhere and are counted as dropped."""
        while self.receipts is not None:
            for msg in self._receive_batch():
                if not msg.is_eos:
                    self._dropped("dropped_full", msg.stream_id)
            self.receipts.confirm(self.inp)
            if time.monotonic() >= until or self.orphaned:
                return
            self._beat(state="exiting")
            time.sleep(0.05)

    def _run_source(self) -> None:
        try:
            for msg in self.stage.frames():
                if self.stopping:
                    break
                if msg is not None:
                    self.metrics.count("received")
                    self._emit([msg])
                self._beat()
        except StageFatalError as exc:  # raised once the streams ended: downstream finishes its outputs
            self.fatal = exc            # instead of waiting out the drain timeout for an EOS
        for stream_id in self.stage.stream_ids:  # a source owns the streams it reads
            self._finish_stream(stream_id, self.stage.stream_frame_count(stream_id))

    def _run_filter(self) -> None:
        poller = zmq.Poller()
        poller.register(self.inp, zmq.POLLIN)
        interval_ms = int(self.cfg.supervisor.heartbeat_interval_s * 1000)
        self._beat()  # up: the supervisor starts the sources once every stage has beaten
        for stream_id, frame_count in sorted(self.stage.ended_before.items()):
            if stream_id in self.streams:  # an earlier process finished it; its sender may be gone
                log.info("%s: stream %s had ended before this restart (%d frames)", self.label, stream_id,
                         frame_count)
                self._finish_stream(stream_id, frame_count)
                if self.receipts is not None:
                    self.receipts.finished[stream_id] = frame_count
        while not self.stopping and self.ended != self.streams:
            if poller.poll(interval_ms):
                self._handle(self._receive_batch())
                self._confirm_ends()
            self._resend_eos()
            self._beat()
        if self.stopping:  # asked to stop mid-stream: end every stream here, so that what this stage
            for stream_id in self.cfg.stream_ids:  # holds and the stages after it finish their outputs
                self._finish_stream(stream_id)  # (fed from another host, this is how a drain begins)

    # ------------------------------------------------------------ receive
    def _receive_batch(self) -> list[FrameMessage]:
        """Everything queued now, up to batch_size frames (live: only the newest per stream)."""
        limit = self.stage.batch_size if not self.cfg.live else 1 << 30
        batch: list[FrameMessage] = []
        while len(batch) < limit:
            try:
                parts = self.inp.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            self.metrics.count("received")
            sender, parts = (parts[0].bytes, parts[1:]) if self.receipts is not None else (b"", parts)
            msg = self._decode(parts)
            if msg is not None:
                batch.append(msg)
                if self.receipts is not None:
                    self.receipts.took(sender, msg)
        return self._take(batch)

    def _take(self, batch: list[FrameMessage]) -> list[FrameMessage]:
        """The frames (and EOS) of a received batch this stage will handle, booked as they arrive."""
        if self.cfg.live:
            batch = self._newest_per_stream(batch)
        else:
            batch = [msg for msg in batch if msg.is_eos or self._readable(msg)]
        for msg in batch:
            if not msg.is_eos:
                self._arrived(msg)
        return batch

    def _readable(self, msg: FrameMessage) -> bool:
        """Read what is still in shared memory (only the frames kept: live stages drop the rest
        unread), then ask the stage: a slot written over is a stale drop, anything else malformed."""
        try:
            if msg.pending:
                msg.read_shared(self.shared_in)
        except StaleFrame:
            self._dropped("dropped_stale", msg.stream_id)  # it came too late: its slot was reused
            return False
        except UNTRUSTED_ERRORS as exc:
            self._drop(f"{msg.stream_id}#{msg.frame_index}: {exc or type(exc).__name__}")
            return False
        problem = self.stage.accept(msg)
        if problem is not None:
            self._drop(f"{msg.stream_id}#{msg.frame_index}: {problem}")
        return problem is None

    def _arrived(self, msg: FrameMessage) -> None:
        """Book what was dropped before the stage sees the frame: upstream's count as it came (apart,
        when it came from another host) plus this stage's stale drops of the stream so far."""
        if self.in_watch is not None:  # fed from another host: what was dropped before this host
            msg.meta[REMOTE_DROPPED] = msg.meta.get(DROPPED, 0)
        msg.meta[OWN_DROPPED] = self.drops_stale.get(msg.stream_id, 0)
        stamp(msg.meta, msg.meta[OWN_DROPPED])

    def _decode(self, parts) -> FrameMessage | None:
        """The message, or None after counting why it was dropped: untrusted input never leaves here."""
        try:  # (buffers in shared memory are read once the frame is kept: _take)
            msg = FrameMessage.decode(parts, self.shared_in, defer=True)
        except UNTRUSTED_ERRORS as exc:
            return self._drop(str(exc) or type(exc).__name__)
        if msg.stream_id not in self.streams:
            return self._drop(f"stream {msg.stream_id!r} is not one of this run's {sorted(self.streams)}")
        problem = None if msg.is_eos else _books_problem(msg)
        return self._drop(f"{msg.stream_id}#{msg.frame_index}: {problem}") if problem else msg

    def _drop(self, why: str) -> None:
        self.metrics.count("malformed")
        dropped = self.metrics.counts["malformed"]
        if dropped <= MALFORMED_LOGGED or dropped % 1000 == 0:  # a flood must not flood the log too
            log.warning("%s: dropped a malformed message (%d so far): %s", self.label, dropped, why[:300])
        return None

    def _newest_per_stream(self, batch: list[FrameMessage]) -> list[FrameMessage]:
        """Live: of each stream, the newest frame that reads and passes (one that does not lets the
        frame before it in), up to batch_size frames; the rest go unread as stale. EOS after them."""
        queued: dict[str, list[FrameMessage]] = {}
        ends: list[FrameMessage] = []
        for msg in batch:
            (ends if msg.is_eos else queued.setdefault(msg.stream_id, [])).append(msg)
        frames: list[FrameMessage] = []
        for stream_id, msgs in queued.items():
            while msgs and len(frames) < self.stage.batch_size:
                if self._readable(msg := msgs.pop()):
                    frames.append(msg)
                    break
            for _ in msgs:
                self._dropped("dropped_stale", stream_id)
        return frames + ends

    def _dropped(self, counter: str, stream_id: str) -> None:
        """A frame let go by the live policy: counted here, and carried on in the stream's later frames."""
        self.metrics.count(counter)
        drops = self.drops_stale if counter == "dropped_stale" else self.drops_full
        drops[stream_id] = drops.get(stream_id, 0) + 1

    def _handle(self, batch: list[FrameMessage]) -> None:
        frames = [m for m in batch if not m.is_eos]
        if frames:
            self._emit(self.stage.process_batch(frames), processed=frames)
        for msg in batch:
            if msg.is_eos:
                if self.receipts is not None and msg.stream_id not in self.ended:  # a real end, not a drain's
                    self.receipts.finished[msg.stream_id] = msg.frame_index
                self._finish_stream(msg.stream_id, msg.frame_index)

    def _confirm_ends(self) -> None:
        """Answer the ends of stream taken from another host, once the beat that names them is out (a
        successor started after a crash learns from it which streams need no end from the sender)."""
        if self.receipts is not None and self.receipts.due and self._beat(force=True):
            self.receipts.confirm(self.inp)  # (a beat that could not go: confirmed after the next one)

    # ------------------------------------------------------------ send
    def _emit(self, outputs: list[FrameMessage], processed: list[FrameMessage] | None = None) -> None:
        now = time.time()
        for msg in processed if processed is not None else outputs:
            self.metrics.done(msg, now)
        for msg in outputs:
            msg.trace[self.label] = now
            if self.out is not None:
                self._send(msg)

    def _send(self, msg: FrameMessage) -> None:
        if not msg.is_eos:  # (its stale drops were stamped as it arrived: _arrived)
            stamp(msg.meta, self.drops_full.get(msg.stream_id, 0))
        if self.cfg.live and not msg.is_eos and not self.out.poll(0, zmq.POLLOUT):
            self._dropped("dropped_full", msg.stream_id)  # refused before it costs a copy or a slot
            return
        parts = msg.encode(None if msg.is_eos else self.shared_out)
        largest = max([len(parts[0]), *(buffer.nbytes for buffer in msg.buffers.values())])
        if largest > self.cfg.max_message_bytes:  # the next stage's ZeroMQ would cut the link, silently
            raise StageFatalError(f"{msg.stream_id}#{msg.frame_index}: a {largest / (1 << 20):.1f} MB message part is over "
                                  f"transport.max_message_mb ({self.cfg.transport.max_message_mb:g}), which the next "
                                  "stage refuses: raise transport.max_message_mb")
        if self.cfg.live and not msg.is_eos:
            try:
                self.out.send_multipart(parts, zmq.NOBLOCK, copy=False)
                self.metrics.count("sent")
            except zmq.Again:
                self._dropped("dropped_full", msg.stream_id)
            return
        # a source that failed sends its EOS only to a downstream already there (started by hand: none)
        give_up = time.time() + (FATAL_EOS_WAIT_S if self.fatal else self.cfg.supervisor.drain_timeout_s)
        while True:  # replay (and EOS): wait for room, but keep beating and stay stoppable
            if self.out.poll(200, zmq.POLLOUT):
                self.out.send_multipart(parts, copy=False)
                self.metrics.count("sent")
                if self.remote is not None:
                    self.remote.sent()
                return
            self._beat(state="blocked")
            problem = self.remote.waiting_problem(msg) if self.remote is not None else None
            if problem is not None:
                raise StageFatalError(problem)
            # stopping: frames go at once; an EOS waits for a live downstream, not for a dead one
            ending = self.stopping or self.fatal is not None
            gone = self.orphaned or self.downstream_gone or self.unreachable
            if ending and (not msg.is_eos or gone or time.time() > give_up):
                self.metrics.count("dropped_full")
                return

    def _finish_stream(self, stream_id: str, frame_count: int = 0) -> None:
        if stream_id in self.ended:
            return
        self._emit(self.stage.end_stream(stream_id, frame_count))
        self.frame_counts[stream_id] = frame_count
        if self.out is not None and not self.unreachable:
            self._send(FrameMessage.end_of_stream(stream_id, frame_count))
        log.info("%s: stream %s ended", self.label, stream_id)

    # ------------------------------------------------------------ heartbeat
    def _beat(self, force: bool = False, state: str = "running") -> bool:
        """Send a heartbeat when due (or forced); True when one went out."""
        now = time.time()
        first_in_state = state != getattr(self, "_last_state", state)
        self._last_state = state
        if not force and not first_in_state and now - self._last_beat < self.cfg.supervisor.heartbeat_interval_s:
            return False
        if os.getppid() != self.parent_pid and not self.stopping:
            log.error("%s: the supervisor (pid %d) is gone: stopping", self.label, self.parent_pid)
            self.stopping = self.released = self.orphaned = True
        self._last_beat = now
        problem = self._watch_links(now)
        if problem is not None and self.fatal is None:
            self.fatal, self.unreachable = StageFatalError(problem), True
            log.error("%s: %s", self.label, problem)
            self.stopping = True  # ends the loops; run() raises it: exit 3, the run stops with this line
        beat = {"stage": self.label, "pid": os.getpid(), "t": now, "state": state,
                "ended": sorted(self.ended), "ended_at": sorted([sid, n] for sid, n in self.frame_counts.items()),
                **self._link_state(), **self.metrics.snapshot(now), **self.stage.counters,
                **self.stage.status()}
        try:
            self.control.send_string(json.dumps(beat), zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False  # supervisor busy or absent: never block the data path on it

    def _watch_links(self, now: float) -> str | None:
        """Log what changed on the links to other hosts; the downstream's refusal, if any, as a line."""
        for watch in (self.in_watch, self.out_watch):
            for note in watch.notes() if watch is not None else ():
                log.info("%s: %s", self.label, note)
        if self.remote is not None and self.remote.reconnected() and self.ended and not self.unreachable:
            self.remote.send_ends_again(self.frame_counts)  # a restarted receiver lacks its predecessor's ends
        watch = self.in_watch
        if watch is not None and not watch.connected and now - self.sender_noted >= NO_SENDER_NOTE_S:
            self.sender_noted = now
            log.info("%s: waiting for a sender on %s (%s runs on another host)", self.label, watch.address,
                     self.cfg.upstream(self.stage.name))
        return self.out_watch.problem() if self.out_watch is not None else None

    def _link_state(self) -> dict:
        """Beat fields of the links to other hosts: how many senders feed this stage, whether its
        downstream is connected."""
        state = {}
        if self.in_watch is not None:
            state["senders"] = len(self.in_watch.peers)
        if self.shared_in is not None or self.shared_out is not None:
            state["shared_memory"] = True  # frames to or from stages of this host go through /dev/shm
        return {**state, **(self.remote.state() if self.remote is not None else {})}


def shares_memory(cfg: PipelineConfig, spec: str, other_host: bool) -> bool:
    """Whether a frame link sends large buffers through shared memory (pipeline.runtime.frame_store):
    live mode, both ends on this host over ipc, and transport.shared_memory on."""
    return (cfg.live and cfg.transport.shared_memory and not other_host and Endpoint.parse(spec).ipc_path is not None
            and frame_store.available())


def _books_problem(msg: FrameMessage) -> str | None:
    dropped = msg.meta.get(DROPPED, 0)
    if not isinstance(dropped, int) or isinstance(dropped, bool) or not 0 <= dropped < 2 ** 53:
        return f"meta {DROPPED!r} must be a whole number >= 0, got {str(dropped)[:40]}"
    return None


def curve_keys(cfg: PipelineConfig) -> CurveKeys | None:
    c = cfg.transport.curve
    if c is None:
        return None
    resolve = lambda p: str(cfg.resolve(p)) if p else None  # noqa: E731
    return CurveKeys(resolve(c.server_public), resolve(c.server_secret), resolve(c.client_public),
                     resolve(c.client_secret))


def run_stage(stage: Stage, cfg: PipelineConfig, instance: str | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {instance or stage.name}[%(process)d] %(levelname)s %(message)s")
    return StageRunner(stage, cfg, instance).run()
