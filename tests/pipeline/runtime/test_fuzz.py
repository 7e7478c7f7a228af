"""Hostile input at every stage's door during a real replay: 10,000 generated malformed messages
(mutated real frames, random headers, wrong dtypes, unknown streams, deep nesting, an oversized part)
into every frame stage's input, and forged heartbeats into the supervisor's control socket. No stage
exits, the replay's output equals the clean run's, and every bad message is counted."""
import json
import subprocess
import sys
import time

import pytest
import yaml

from scripts.fuzz import FILTERS, fuzz_run
from tests.conftest import REPO_ROOT
from tests.pipeline.runtime.test_supervisor import _concat

pytestmark = pytest.mark.slow
BAD_MESSAGES = 10_000


def _config(tmp_path, name, clip, weights, pace: bool) -> dict:
    return {"sources": [{"id": "cam0", "uri": str(clip), "pace": pace}], "output_dir": str(tmp_path / name),
            "transport": {"ipc_dir": str(tmp_path / f"ipc_{name}"), "max_message_mb": 4},
            "stages": {"detect": {"weights": str(weights), "backend": "torch"}, "record": {"video": False}},
            "supervisor": {"heartbeat_interval_s": 0.25, "status_interval_s": 0.5}}


def _start(tmp_path, cfg: dict) -> subprocess.Popen:
    path = tmp_path / f"{cfg['output_dir'].rsplit('/', 1)[-1]}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(path), "--no-progress"], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _rows(folder) -> list[tuple]:
    rows = [json.loads(line) for line in (folder / "cam0" / "tracks.jsonl").read_text().splitlines()]
    return [(r["frame_index"], r["detections"], r["track_ids"]) for r in rows]


def test_ten_thousand_malformed_messages_change_nothing_and_are_all_counted(tmp_path, synthetic_clip,
                                                                            random_weights):
    clip = tmp_path / "long.mp4"
    _concat(synthetic_clip.video, clip, times=30)  # 900 frames: 30 s paced; the fuzzing ends by 17 s (14 + 3)
    clean = _start(tmp_path, _config(tmp_path, "clean", clip, random_weights, pace=False))
    clean_err = clean.communicate(timeout=480)[1]
    assert clean.returncode == 0, clean_err[-3000:]
    fuzzed = _start(tmp_path, _config(tmp_path, "fuzzed", clip, random_weights, pace=True))
    deadline = time.time() + 120
    while not (tmp_path / "fuzzed" / "status.json").exists() and time.time() < deadline:
        time.sleep(0.1)  # every stage is up once the supervisor writes status
    run_config = yaml.safe_load((tmp_path / "fuzzed" / "run_config.yaml").read_text())
    sent = fuzz_run(run_config, BAD_MESSAGES, seconds=14.0)  # ~7 s on a quiet 2-core machine
    err = fuzzed.communicate(timeout=480)[1]
    assert fuzzed.returncode == 0, err[-3000:]
    assert sent == BAD_MESSAGES
    status = json.loads((tmp_path / "fuzzed" / "status.json").read_text())
    assert all(status[stage]["restarts"] == 0 for stage in FILTERS), status
    assert sum(status[stage]["malformed"] for stage in FILTERS) == BAD_MESSAGES, {
        stage: {k: status[stage].get(k) for k in ("received", "malformed", "processed", "state")} for stage in FILTERS}
    assert _rows(tmp_path / "fuzzed") == _rows(tmp_path / "clean") and len(_rows(tmp_path / "clean")) == 900
