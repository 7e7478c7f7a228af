"""The two-host split (configs/multihost) on loopback, with CurveZMQ: an edge whose client key the
GPU side does not admit stops with one line and exit 3, never a silent hang."""
import subprocess
import sys

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
        result = subprocess.run([sys.executable, "-m", "pipeline", "run", edge, "--no-progress"], cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=120)
    finally:
        gpu_proc.terminate()
        gpu_err = gpu_proc.communicate(timeout=60)[1]
    assert result.returncode == 3, result.stderr[-2000:]
    assert (f"error: preprocess: not admitted by tcp://127.0.0.1:{port}: its transport.curve.client_public is not "
            "this host's client key (transport.curve.client_secret)") in result.stderr
    assert "refused a Curve client whose key" in gpu_err  # and the GPU side says why it heard nothing
