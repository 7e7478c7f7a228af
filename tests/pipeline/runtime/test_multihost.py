"""The two-host split (configs/multihost) on loopback, with CurveZMQ: an edge whose client key the
GPU side does not admit stops with one line and exit 3, never a silent hang."""
import json
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml
import zmq.auth

from tests.conftest import REPO_ROOT, free_port

pytestmark = pytest.mark.slow


def _write(path, cfg) -> str:
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_an_edge_with_a_key_the_gpu_side_refuses_exits_3_with_one_line(tmp_path, synthetic_clip, random_weights):
    keys = tmp_path / "keys"
    keys.mkdir()
    server_pub, server_sec = zmq.auth.create_certificates(keys, "server")
    client_pub, _ = zmq.auth.create_certificates(keys, "client")
    _, stranger_sec = zmq.auth.create_certificates(keys, "stranger")
    port = free_port()
    sources = [{"id": "cam0", "uri": str(synthetic_clip.video), "pace": True, "loop": True}]
    gpu = _write(tmp_path / "gpu.yaml", {
        "mode": "live", "sources": sources, "output_dir": str(tmp_path / "gpu"), "run_stages": ["detect", "track", "record"],
        "endpoints": {"detect_in": f"pull+bind:tcp://127.0.0.1:{port}"},
        "transport": {"curve": {"server_secret": server_sec, "client_public": client_pub}},
        "stages": {"detect": {"weights": str(random_weights), "backend": "torch"}}, "supervisor": {"drain_timeout_s": 5}})
    edge = _write(tmp_path / "edge.yaml", {
        "mode": "live", "sources": sources, "output_dir": str(tmp_path / "edge"), "run_stages": ["capture", "preprocess"],
        "endpoints": {"detect_in": f"pull+connect:tcp://127.0.0.1:{port}"},
        "transport": {"curve": {"server_public": server_pub, "client_secret": stranger_sec}},
        "stages": {"preprocess": {"input_size": [256, 320]}}, "supervisor": {"drain_timeout_s": 5}})
    gpu_proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", gpu, "--no-progress"], cwd=REPO_ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(100):  # the edge's config check needs the GPU side's port open
            try:
                __import__("socket").create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                __import__("time").sleep(0.2)
        try:
            result = subprocess.run([sys.executable, "-m", "pipeline", "run", edge, "--no-progress"], cwd=REPO_ROOT,
                                    capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired as hung:
            result = hung
    finally:
        gpu_proc.terminate()
        gpu_err = gpu_proc.communicate(timeout=60)[1]
    if isinstance(result, subprocess.TimeoutExpired):
        edge_err = (result.stderr or b"").decode(errors="replace")
        gpu_log = "\n".join(line for line in gpu_err.splitlines() if " INFO " in line or " WARNING " in line
                             or " ERROR " in line)
        pytest.fail(f"the edge hung; its stderr:\n{edge_err[:3000]}\n...\nthe GPU side's log:\n{gpu_log[-4000:]}")
    assert result.returncode == 3, result.stderr[-2000:]
    assert (f"error: preprocess: not admitted by tcp://127.0.0.1:{port}: its transport.curve.client_public is not "
            "this host's client key (transport.curve.client_secret)") in result.stderr
    assert "refused a Curve client whose key" in gpu_err  # and the GPU side says why it heard nothing


# ---------------------------------------------------------------- either side first, drains, restarts
# The edge runs capture + preprocess on 127.0.0.1, the GPU side detect + track + record bound on a
# second loopback address, each its own supervisor, as on two hosts.
GPU_HOST = "127.0.0.2"


class Side:
    """One host's `pipeline run`, its stderr collected line by line as it comes."""

    started: list["Side"] = []  # every side of the test, for the message when one hangs

    def __init__(self, config: str):
        Side.started.append(self)
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", config, "--no-progress"], cwd=REPO_ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stderr.readline, "")),
                                       daemon=True)
        self.reader.start()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while text not in self.log:
            assert time.time() < deadline and self.proc.poll() is None, f"no {text!r} in:\n{self.log[-3000:]}"
            time.sleep(0.1)

    def finish(self, timeout: float = 120) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            logs = "\n----\n".join(side.log[-3000:] for side in Side.started)
            pytest.fail(f"still running after {timeout} s; the logs of this test's sides:\n{logs}")
        self.reader.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(autouse=True)
def _no_side_outlives_its_test():
    yield
    for side in Side.started:
        side.kill()
    Side.started.clear()


def _split(tmp_path, video, port: int, mode: str = "replay", edge_extra: dict | None = None,
           random_weights=None, gpu_extra: dict | None = None) -> tuple[str, str]:
    sources = [{"id": "cam0", "uri": str(video), "pace": True}]
    supervisor = {"drain_timeout_s": 30, "heartbeat_interval_s": 0.5}
    gpu = _write(tmp_path / "gpu.yaml", {
        "mode": mode, "sources": sources, "output_dir": str(tmp_path / "gpu"),
        "run_stages": ["detect", "track", "record"], "supervisor": supervisor,
        "endpoints": {"detect_in": f"pull+bind:tcp://{GPU_HOST}:{port}"},
        "stages": {"detect": {"weights": str(random_weights), "backend": "torch"}}, **(gpu_extra or {})})
    edge = _write(tmp_path / "edge.yaml", {
        "mode": mode, "sources": sources, "output_dir": str(tmp_path / "edge"), "run_stages": ["capture", "preprocess"],
        "endpoints": {"detect_in": f"pull+connect:tcp://{GPU_HOST}:{port}"}, "supervisor": supervisor,
        "stages": {"preprocess": {"input_size": [256, 320]}}, **(edge_extra or {})})
    return edge, gpu


def _recorded(tmp_path) -> list[int]:
    path = tmp_path / "gpu" / "cam0" / "tracks.jsonl"
    return [json.loads(line)["frame_index"] for line in path.read_text().splitlines() if line.strip()] \
        if path.is_file() else []


def test_an_edge_started_first_waits_visibly_and_ends_when_its_frames_are_delivered(
        tmp_path, synthetic_clip, random_weights):
    edge_config, gpu_config = _split(tmp_path, synthetic_clip.video, free_port(), random_weights=random_weights)
    edge = Side(edge_config)
    gpu = None
    try:
        edge.wait_for(f"waiting for tcp://{GPU_HOST}:")   # the GPU side is not up: the edge says so
        gpu = Side(gpu_config)
        assert gpu.finish() == 0, gpu.log[-3000:]
        ended = time.time()
        assert edge.finish() == 0, edge.log[-3000:]
        # the end of the replay reached the other host: no waiting out the 30 s drain timeout
        assert time.time() - ended < 10
        assert "detect on the other host confirmed the end of 1 stream(s)" in edge.log
        assert sorted(_recorded(tmp_path)) == list(range(30))
        assert "a sender connected on" in gpu.log
    finally:
        edge.kill()
        if gpu is not None:
            gpu.kill()


def test_an_edge_whose_other_side_never_comes_gives_up_with_one_line(tmp_path, synthetic_clip, random_weights):
    port = free_port()
    edge_config, _ = _split(tmp_path, synthetic_clip.video, port, random_weights=random_weights,
                            edge_extra={"transport": {"remote_wait_s": 2}})
    result = subprocess.run([sys.executable, "-m", "pipeline", "run", edge_config, "--no-progress"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert (f"error: config key 'endpoints.detect_in': tcp://{GPU_HOST}:{port} still unreachable after 2 s "
            "(Connection refused): is the pipeline on that host running? (transport.remote_wait_s)") in result.stderr
    assert "Traceback" not in result.stderr


def test_a_gpu_side_without_sources_says_it_waits_and_drains_on_sigterm(tmp_path, synthetic_clip, random_weights):
    _, gpu_config = _split(tmp_path, synthetic_clip.video, free_port(), mode="live", random_weights=random_weights)
    gpu = Side(gpu_config)
    try:
        gpu.wait_for(f"detect: waiting for a sender on tcp://{GPU_HOST}:")
        gpu.wait_for("started 3 stage processes")
        time.sleep(1)
        stopped = time.time()
        gpu.proc.send_signal(signal.SIGTERM)
        assert gpu.finish(timeout=60) == 0, gpu.log[-3000:]
        assert time.time() - stopped < 15  # drained, not the 30 s drain timeout waited out
        assert "did not drain in time" not in gpu.log
    finally:
        gpu.kill()


def test_frames_lost_when_the_gpu_side_is_killed_are_counted_by_its_successor(tmp_path, random_weights):
    from pipeline.offline.data import synthetic

    clip = synthetic.make_clip(tmp_path / "clip", seed=3, frames=150, size=(320, 256))
    edge_config, gpu_config = _split(tmp_path, clip.video, free_port(), random_weights=random_weights)
    gpu, edge = Side(gpu_config), None
    try:
        gpu.wait_for("started 3 stage processes")
        edge = Side(edge_config)
        deadline = time.time() + 60
        while len(_recorded(tmp_path)) < 40:
            assert time.time() < deadline, gpu.log[-3000:]
            time.sleep(0.1)
        gpu.kill()  # the whole GPU host goes down: its stages stop once they see their supervisor gone
        deadline = time.time() + 20
        gpu_stages = ["pgrep", "-f", str(tmp_path / "gpu" / "run_config.yaml")]
        while subprocess.run(gpu_stages, capture_output=True).returncode == 0:
            assert time.time() < deadline
            time.sleep(0.2)
        first = set(_recorded(tmp_path))
        gpu = Side(gpu_config)
        assert gpu.finish() == 0, gpu.log[-3000:] + edge.log[-3000:]
        assert edge.finish() == 0, edge.log[-3000:]
    finally:
        for side in (gpu, edge):
            if side is not None:
                side.kill()
    recorded = set(_recorded(tmp_path))
    status = json.loads((tmp_path / "gpu" / "status.json").read_text())
    missing = status["record"]["frames_missing"]
    assert len(recorded) + missing == 150, (len(first), len(recorded), missing)  # every frame recorded or counted
    assert "resuming after frame" in gpu.log
    assert "lost the connection to" in edge.log and edge.log.count(f"connected to tcp://{GPU_HOST}") >= 2


# ---------------------------------------------------------------- ends of stream confirmed across hosts
ROOMY = {"transport": {"hwm": 64}}  # every frame of the 30-frame clip fits in the queues between hosts


def _gpu_stage_pid(tmp_path, stage: str) -> int:
    found = subprocess.run(["pgrep", "-f", f"pipeline stage {stage} {tmp_path / 'gpu' / 'run_config.yaml'}"],
                           capture_output=True, text=True)
    pids = [int(p) for p in found.stdout.split()]
    assert len(pids) == 1, found
    return pids[0]


def _await(condition, what: str, side: Side, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"no {what}:\n{side.log[-3000:]}"
        time.sleep(0.1)


def _books(tmp_path) -> tuple[set[int], int]:
    status = json.loads((tmp_path / "gpu" / "status.json").read_text())
    return set(_recorded(tmp_path)), status["record"]["frames_missing"]


def _freeze_detect_mid_run(tmp_path, gpu: Side, edge_config: str) -> tuple[Side, int]:
    """Start the edge once the GPU side is up; freeze (SIGSTOP) detect there once frames flow."""
    gpu.wait_for("started 3 stage processes")
    detect = _gpu_stage_pid(tmp_path, "detect")
    edge = Side(edge_config)
    _await(lambda: len(_recorded(tmp_path)) >= 2, "frames recorded", gpu)
    subprocess.run(["kill", "-STOP", str(detect)], check=True)
    return edge, detect


def test_a_gpu_stage_restarted_before_it_confirmed_the_end_gets_it_again(tmp_path, synthetic_clip, random_weights):
    """detect on the GPU side freezes with the edge's last frames and its end of stream queued, then is
    killed: the edge, still waiting for the confirmation, sends the end again to the restarted detect,
    and both sides end with every frame recorded or counted (before, the edge left once its queue was
    flushed and the restarted detect waited for an end of stream nobody would send)."""
    edge_config, gpu_config = _split(tmp_path, synthetic_clip.video, free_port(), random_weights=random_weights,
                                     edge_extra=ROOMY, gpu_extra=ROOMY)
    gpu, edge = Side(gpu_config), None
    try:
        edge, detect = _freeze_detect_mid_run(tmp_path, gpu, edge_config)
        edge.wait_for("waiting for detect on the other host to confirm the end of 1 stream(s)")
        subprocess.run(["kill", "-KILL", str(detect)], check=True)
        assert gpu.finish() == 0, gpu.log[-3000:]
        assert edge.finish() == 0, edge.log[-3000:]
    finally:
        for side in (gpu, edge):
            if side is not None:
                side.kill()
    assert "restarting detect" in gpu.log and "detect on the other host confirmed the end of 1 stream(s)" in edge.log
    assert "sent the end of 1 of 1 finished stream(s) again to the reconnected detect" in edge.log
    recorded, missing = _books(tmp_path)
    assert len(recorded) + missing == 30 and recorded <= set(range(30)), (sorted(recorded), missing)


def test_a_gpu_stage_restarted_after_an_edge_left_finishes_the_streams_that_edge_had_ended(
        tmp_path, synthetic_clip, random_weights):
    """Two edges feed one GPU side. The first one's stream ends, is confirmed and that edge is gone;
    then detect is killed while the second stream runs: its successor is told which streams had ended
    (with their frame counts) and the run ends, instead of waiting for an end of stream no host will
    send again."""
    from pipeline.offline.data import synthetic

    long_clip = synthetic.make_clip(tmp_path / "long", seed=3, frames=150, size=(320, 256))
    port = free_port()
    edge_a, gpu_config = _split(tmp_path, synthetic_clip.video, port, random_weights=random_weights,
                                edge_extra=ROOMY, gpu_extra=ROOMY)
    gpu_cfg = yaml.safe_load(open(gpu_config))
    gpu_cfg["sources"].append({"id": "cam1", "uri": str(long_clip.video), "pace": True})
    _write(tmp_path / "gpu.yaml", gpu_cfg)
    edge_b_cfg = yaml.safe_load(open(edge_a))
    edge_b_cfg.update(sources=[{"id": "cam1", "uri": str(long_clip.video), "pace": True}],
                      output_dir=str(tmp_path / "edge_b"))
    edge_b = _write(tmp_path / "edge_b.yaml", edge_b_cfg)
    sides = [Side(gpu_config)]
    try:
        gpu = sides[0]
        gpu.wait_for("started 3 stage processes")
        detect = _gpu_stage_pid(tmp_path, "detect")
        sides += [Side(edge_a), Side(edge_b)]
        assert sides[1].finish() == 0, sides[1].log[-3000:]
        assert "detect on the other host confirmed the end of 1 stream(s)" in sides[1].log
        _await(lambda: "cam0" in json.loads((tmp_path / "gpu" / "status.json").read_text())["detect"]["ended"],
               "end of cam0 in detect's beat", gpu)
        assert sides[2].proc.poll() is None, "the second stream must still run"
        subprocess.run(["kill", "-KILL", str(detect)], check=True)
        gpu.wait_for("stream cam0 had ended before this restart (30 frames)")
        assert sides[2].finish() == 0, sides[2].log[-3000:]
        assert gpu.finish() == 0, gpu.log[-3000:]
    finally:
        for side in sides:
            side.kill()
    status = json.loads((tmp_path / "gpu" / "status.json").read_text())
    assert status["detect"]["restarts"] == 1


@pytest.mark.parametrize("queues, says", [
    # every frame was queued and the end sent: the end is never confirmed
    ("roomy", "did not confirm the end of cam0 within supervisor.drain_timeout_s: its output may be incomplete"),
    # frames still wait for room on a link that stays down: bounded by transport.remote_wait_s
    ("tight", "has been unreachable for 3 s (transport.remote_wait_s, at least supervisor.drain_timeout_s) "
              "with cam0#"),
])
def test_an_edge_whose_gpu_side_dies_for_good_exits_3_with_one_line(tmp_path, random_weights, queues, says):
    """The GPU host freezes mid-replay, then goes down and stays down: the edge exits 3 with one line,
    never a quiet exit 0 nor a wait that never ends."""
    from pipeline.offline.data import synthetic

    clip = synthetic.make_clip(tmp_path / "clip", seed=3, frames=150 if queues == "tight" else 30, size=(320, 256))
    edge_extra = {"transport": {"hwm": 64 if queues == "roomy" else 4, "remote_wait_s": 3},
                  "supervisor": {"drain_timeout_s": 3, "heartbeat_interval_s": 0.5}}
    edge_config, gpu_config = _split(tmp_path, clip.video, free_port(), random_weights=random_weights,
                                     edge_extra=edge_extra, gpu_extra=ROOMY if queues == "roomy" else None)
    gpu, edge = Side(gpu_config), None
    try:
        edge, detect = _freeze_detect_mid_run(tmp_path, gpu, edge_config)
        if queues == "roomy":
            edge.wait_for("waiting for detect on the other host to confirm")
        gpu.kill()
        subprocess.run(["kill", "-KILL", str(detect)], check=True)
        assert edge.finish(timeout=90) == 3, edge.log[-3000:]
    finally:
        for side in (gpu, edge):
            if side is not None:
                side.kill()
    assert f"error: preprocess: detect on the other host {says}" in edge.log, edge.log[-2000:]
    assert "Traceback" not in edge.log


def test_a_live_edge_stopped_while_the_gpu_side_is_frozen_does_not_exit_0(tmp_path, synthetic_clip, random_weights):
    """Ctrl-C on the edge: it drains, but the ends of stream it sends are never confirmed (detect on
    the GPU side is frozen), so the run says so and exits 3 instead of reporting a clean stop."""
    edge_config, gpu_config = _split(tmp_path, synthetic_clip.video, free_port(), mode="live",
                                     random_weights=random_weights,
                                     edge_extra={"supervisor": {"drain_timeout_s": 3, "heartbeat_interval_s": 0.5}})
    edge_cfg = yaml.safe_load(open(edge_config))
    edge_cfg["sources"][0]["loop"] = True
    _write(tmp_path / "edge.yaml", edge_cfg)
    gpu, edge = Side(gpu_config), None
    try:
        edge, detect = _freeze_detect_mid_run(tmp_path, gpu, edge_config)
        edge.proc.send_signal(signal.SIGTERM)
        assert edge.finish(timeout=60) == 3, edge.log[-3000:]
    finally:
        subprocess.run(["kill", "-CONT", str(detect)])
        for side in (gpu, edge):
            if side is not None:
                side.kill()
    assert "did not confirm the end of cam0" in edge.log and "Traceback" not in edge.log


def test_a_chain_of_three_hosts_confirms_each_hop_and_records_every_frame(tmp_path, synthetic_clip, random_weights):
    """capture on one host, preprocess on a second, detect + track + record on a third: each sender
    has its ends confirmed by the next host, and every frame is recorded."""
    first, second = free_port(), free_port()
    sources = [{"id": "cam0", "uri": str(synthetic_clip.video), "pace": True}]
    hosts = {
        "camera": {"run_stages": ["capture"], "endpoints": {"preprocess_in": f"pull+connect:tcp://{GPU_HOST}:{first}"}},
        "middle": {"run_stages": ["preprocess"], "stages": {"preprocess": {"input_size": [256, 320]}},
                   "endpoints": {"preprocess_in": f"pull+bind:tcp://{GPU_HOST}:{first}",
                                 "detect_in": f"pull+connect:tcp://{GPU_HOST}:{second}"}},
        "gpu": {"run_stages": ["detect", "track", "record"],
                "endpoints": {"detect_in": f"pull+bind:tcp://{GPU_HOST}:{second}"},
                "stages": {"detect": {"weights": str(random_weights), "backend": "torch"}}},
    }
    sides = {}
    for name in ("gpu", "middle", "camera"):  # each host waits for the next one's port
        sides[name] = Side(_write(tmp_path / f"{name}.yaml", {
            "mode": "replay", "sources": sources, "output_dir": str(tmp_path / name),
            "supervisor": {"drain_timeout_s": 30, "heartbeat_interval_s": 0.5}, **hosts[name]}))
    for name, side in sides.items():
        assert side.finish() == 0, f"{name}:\n{side.log[-3000:]}"
    assert "preprocess on the other host confirmed the end of 1 stream(s)" in sides["camera"].log
    assert "detect on the other host confirmed the end of 1 stream(s)" in sides["middle"].log
    assert sorted(_recorded(tmp_path)) == list(range(30))
