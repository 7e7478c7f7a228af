"""Hostile input at every stage's door during a real replay: 10,000 generated malformed messages
(mutated real frames, random headers, wrong dtypes, unknown streams, deep nesting, an oversized part)
into every frame stage's input, and forged heartbeats into the supervisor's control socket. No stage
exits, the replay's output equals the clean run's, and every bad message is counted."""
import json
import random
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
import zmq

from pipeline.runtime.messages import FrameMessage
from tests.conftest import REPO_ROOT
from tests.pipeline.runtime.test_supervisor import _concat

pytestmark = pytest.mark.slow
BAD_MESSAGES = 10_000
FILTERS = ("preprocess", "detect", "track", "record")


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


def _frame_header(rng: random.Random) -> dict:
    real = FrameMessage("cam0", rng.randrange(600), 0.1, time.time(), {"image": np.zeros((4, 4, 3), np.uint8)})
    return json.loads(bytes(real.encode()[0]))


INVALID = {  # per header field, values that field may never hold (a real peer never sends them)
    "v": [2, None, "1"], "kind": ["boom", None, 1], "stream_id": ["../../etc", "/tmp/x", "", 5, None, ".."],
    "frame_index": [-1, True, "x", 2 ** 70, 1.5, None], "source_ts": ["x", None, [], True],
    "capture_wall": ["x", None, {}], "buffers": [5, "x", {}, [5]], "detections": [[[1, 2]], "x", [[1, 2, 3, 4, "s", 0]]],
    "track_ids": [[1.5], "x", [1]], "meta": [[1], "x", 5], "trace": [[1], {"a": "b"}, "x"],
}


def bad_message(rng: random.Random) -> list[bytes]:
    """One malformed (or foreign) message, of a randomly chosen kind."""
    kind = rng.randrange(7)
    header = _frame_header(rng)
    if kind == 0:  # random bytes
        return [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))]
    if kind == 1:  # a real header with one field replaced by a value it may never hold
        field = rng.choice(sorted(INVALID))
        header[field] = rng.choice(INVALID[field])
    elif kind == 2:  # a buffer that does not match its spec
        header["buffers"][0]["dtype"] = rng.choice(["object", "float64", "uint8"])
        return [json.dumps(header).encode(), bytes(rng.choice([1, 7, 47, 49, 96]))]  # 48 would fit
    elif kind == 3:  # a stream the run does not have (frame or end of stream)
        header["stream_id"] = rng.choice(["ghost", "cam1", "CAM0"])
        header["kind"] = rng.choice(["frame", "eos"])
        header["buffers"] = header["buffers"] if header["kind"] == "frame" else []
    elif kind == 4:  # deep nesting
        return [b"[" * rng.randrange(10, 2000)]
    elif kind == 5:  # too many parts
        return [json.dumps(header).encode()] + [bytes(48)] * 12
    elif kind == 6:  # an image that is not one
        header["buffers"][0]["shape"] = [4, 4]
        return [json.dumps(header).encode(), bytes(16)]
    image = bytes(48)
    return [json.dumps(header).encode()] + ([image] if isinstance(header.get("buffers"), list) and
                                            len(header["buffers"]) == 1 else [])


def _fuzz(cfg_dir, seconds: float) -> int:
    """Send BAD_MESSAGES into the run's four frame inputs within ``seconds``; returns how many went."""
    run = yaml.safe_load((cfg_dir / "run_config.yaml").read_text())
    ctx = zmq.Context()
    socks = [ctx.socket(zmq.PUSH) for _ in FILTERS]
    for sock, stage in zip(socks, FILTERS):
        sock.setsockopt(zmq.SNDHWM, 2)  # "sent" means taken by the stage's socket, not queued here
        sock.connect(run["endpoints"][f"{stage}_in"].split(":", 1)[1])
    control = ctx.socket(zmq.PUSH)
    control.connect(run["endpoints"]["control"].split(":", 1)[1])
    # every message must be taken before the stages see the end of the stream and stop reading, or it
    # would be neither processed nor counted: the clip runs well past the fuzzing
    rng, sent, turn, deadline = random.Random(0), 0, 0, time.time() + seconds
    message = bad_message(rng)
    while sent < BAD_MESSAGES and time.time() < deadline:
        turn += 1
        try:
            socks[turn % len(socks)].send_multipart(message, zmq.NOBLOCK)
        except zmq.Again:  # that stage's queue is full (busy with real frames): try the next one
            time.sleep(0.0002)
            continue
        sent += 1
        message = bad_message(rng)
        control.send(json.dumps({"stage": rng.choice(["detect", "track"]), "pid": 1, "fps": "x"}).encode(),
                     zmq.NOBLOCK)
    oversized = ctx.socket(zmq.PUSH)  # ZeroMQ drops the connection of a peer sending a part over the limit
    oversized.connect(run["endpoints"]["detect_in"].split(":", 1)[1])
    oversized.send_multipart([b"{}", bytes(5 << 20)])
    time.sleep(0.5)
    for sock in socks + [control, oversized]:
        sock.close(linger=20_000)  # what was queued still goes
    ctx.term()
    return sent


def _rows(folder) -> list[tuple]:
    rows = [json.loads(line) for line in (folder / "cam0" / "tracks.jsonl").read_text().splitlines()]
    return [(r["frame_index"], r["detections"], r["track_ids"]) for r in rows]


def test_ten_thousand_malformed_messages_change_nothing_and_are_all_counted(tmp_path, synthetic_clip,
                                                                            random_weights):
    clip = tmp_path / "long.mp4"
    _concat(synthetic_clip.video, clip, times=20)  # 600 frames: 20 s paced, the fuzzing done in the first 7
    clean = _start(tmp_path, _config(tmp_path, "clean", clip, random_weights, pace=False))
    clean_err = clean.communicate(timeout=240)[1]
    assert clean.returncode == 0, clean_err[-3000:]
    fuzzed = _start(tmp_path, _config(tmp_path, "fuzzed", clip, random_weights, pace=True))
    deadline = time.time() + 120
    while not (tmp_path / "fuzzed" / "status.json").exists() and time.time() < deadline:
        time.sleep(0.1)  # every stage is up once the supervisor writes status
    sent = _fuzz(tmp_path / "fuzzed", seconds=7.0)
    err = fuzzed.communicate(timeout=240)[1]
    assert fuzzed.returncode == 0, err[-3000:]
    assert sent == BAD_MESSAGES
    status = json.loads((tmp_path / "fuzzed" / "status.json").read_text())
    assert all(status[stage]["restarts"] == 0 for stage in FILTERS), status
    assert sum(status[stage]["malformed"] for stage in FILTERS) == BAD_MESSAGES, {
        stage: {k: status[stage].get(k) for k in ("received", "malformed", "processed", "state")} for stage in FILTERS}
    assert _rows(tmp_path / "fuzzed") == _rows(tmp_path / "clean") and len(_rows(tmp_path / "clean")) == 600
