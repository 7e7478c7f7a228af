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


def _split(tmp_path, video, port: int, mode: str = "replay", edge_extra: dict | None = None,
           random_weights=None) -> tuple[str, str]:
    sources = [{"id": "cam0", "uri": str(video), "pace": True}]
    supervisor = {"drain_timeout_s": 30, "heartbeat_interval_s": 0.5}
    gpu = _write(tmp_path / "gpu.yaml", {
        "mode": mode, "sources": sources, "output_dir": str(tmp_path / "gpu"),
        "run_stages": ["detect", "track", "record"], "supervisor": supervisor,
        "endpoints": {"detect_in": f"pull+bind:tcp://{GPU_HOST}:{port}"},
        "stages": {"detect": {"weights": str(random_weights), "backend": "torch"}}})
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
        assert "every queued frame and end of stream went to detect on the other host" in edge.log
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
