"""A source that cannot be read ends the replay promptly and says so: its EOS still goes out (no stage
waits out the drain timeout), the run exits 3, and a truncated file is never a silent success."""
import subprocess
import sys
import time

import av
import numpy as np
import pytest
import yaml

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def _run(tmp_path, uri, weights, **extra) -> tuple[subprocess.CompletedProcess, float]:
    cfg = {"sources": [{"id": "cam0", "uri": str(uri)}], "output_dir": str(tmp_path / "out"),
           "stages": {"detect": {"weights": str(weights), "backend": "torch"}, "record": {"video": False}}, **extra}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    start = time.time()
    result = subprocess.run([sys.executable, "-m", "pipeline", "run", str(path), "--no-progress"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=180)
    return result, time.time() - start


def _faststart_clip(path, frames: int) -> None:
    """An MP4 with its index first: cut short, the frames before the cut still decode."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 320, 256, "yuv420p"
        for _ in range(frames):
            image = rng.integers(0, 255, (256, 320, 3), dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        out.mux(stream.encode(None))


def test_a_truncated_file_records_what_it_held_and_exits_3(tmp_path, random_weights):
    clip = tmp_path / "clip.mp4"
    _faststart_clip(clip, 40)
    data = clip.read_bytes()
    clip.write_bytes(data[: int(len(data) * 0.6)])
    result, _ = _run(tmp_path, clip, random_weights)
    assert result.returncode == 3, result.stderr[-2000:]
    assert "of the 40 frames its container states (truncated or damaged)" in result.stderr
    rows = (tmp_path / "out" / "cam0" / "tracks.jsonl").read_text().splitlines()
    assert 0 < len(rows) < 40  # what the file held is recorded, and nothing was counted as lost on the way
    assert "lost=" not in result.stderr.strip().splitlines()[-2]


def test_an_unopenable_source_ends_the_run_without_waiting_out_the_drain(tmp_path, random_weights):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    result, seconds = _run(tmp_path, bad, random_weights, supervisor={"drain_timeout_s": 60})
    assert result.returncode == 3, result.stderr[-2000:]
    assert f"error: capture: cannot open {bad}" in result.stderr
    assert seconds < 50  # well under the 60 s drain timeout: the EOS went out


def test_an_output_dir_under_a_file_is_one_line_and_exit_2(tmp_path, random_weights, synthetic_clip):
    (tmp_path / "afile").write_text("x")
    cfg = {"sources": [{"id": "cam0", "uri": str(synthetic_clip.video)}], "output_dir": str(tmp_path / "afile" / "out"),
           "stages": {"detect": {"weights": str(random_weights)}}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = subprocess.run([sys.executable, "-m", "pipeline", "run", str(path)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: config key 'output_dir': cannot create {tmp_path / 'afile' / 'out'} (Not a directory)"]
