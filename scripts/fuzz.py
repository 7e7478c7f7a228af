"""Malformed messages for a running pipeline: the fuzz test (tests/pipeline/runtime/test_fuzz.py) and
the soak (scripts/soak.py) send them into every frame stage's input and forged heartbeats into the
supervisor's control socket. Every message here is one no real peer sends: a stage must drop and
count each one and carry on.
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import zmq

from pipeline.runtime.messages import FrameMessage

FILTERS = ("preprocess", "detect", "track", "record")


def _frame_header(rng: random.Random, stream_id: str = "cam0") -> dict:
    real = FrameMessage(stream_id, rng.randrange(600), 0.1, time.time(), {"image": np.zeros((4, 4, 3), np.uint8)})
    return json.loads(bytes(real.encode()[0]))


INVALID = {  # per header field, values that field may never hold (a real peer never sends them)
    "v": [2, None, "1"], "kind": ["boom", None, 1], "stream_id": ["../../etc", "/tmp/x", "", 5, None, ".."],
    "frame_index": [-1, True, "x", 2 ** 70, 1.5, None], "source_ts": ["x", None, [], True],
    "capture_wall": ["x", None, {}], "buffers": [5, "x", {}, [5]], "detections": [[[1, 2]], "x", [[1, 2, 3, 4, "s", 0]]],
    "track_ids": [[1.5], "x", [1]], "meta": [[1], "x", 5], "trace": [[1], {"a": "b"}, "x"],
}


_RING = "lss-0-1-0123456789abcdef"  # a ring name of the right form
BAD_REFERENCES = [  # a buffer "in shared memory" that names no slot a stage may read (frame_store)
    {"ring": "../../etc/passwd", "slot": 0, "token": 1}, {"ring": _RING + "/..", "slot": 0, "token": 1},
    {"ring": "lss-0-007-0123456789abcdef", "slot": 0, "token": 1}, {"ring": 5, "slot": 0, "token": 1},
    {"ring": _RING, "slot": -1, "token": 1}, {"ring": _RING, "slot": True, "token": 1},
    {"ring": _RING, "slot": 0, "token": 0}, _RING, None, [],
]


def bad_message(rng: random.Random) -> list[bytes]:
    """One malformed (or foreign) message, of a randomly chosen kind."""
    kind = rng.randrange(9)
    header = _frame_header(rng)
    if kind == 0:  # random bytes
        return [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))]
    if kind == 1:  # a real header with one field replaced by a value it may never hold
        field = rng.choice(sorted(INVALID))
        header[field] = rng.choice(INVALID[field])
    elif kind == 2:  # a buffer that does not match its spec
        header["buffers"][0]["dtype"] = rng.choice(["object", "float64", "uint8", ["uint8"], {"a": 1}])
        return [json.dumps(header).encode(), bytes(rng.choice([1, 7, 47, 49, 96]))]  # 48 would fit
    elif kind == 3:  # a stream the run does not have (frame or end of stream)
        header["stream_id"] = rng.choice(["ghost", "cam-x", "CAM0"])
        header["kind"] = rng.choice(["frame", "eos"])
        header["buffers"] = header["buffers"] if header["kind"] == "frame" else []
    elif kind == 4:  # deep nesting
        return [b"[" * rng.randrange(10, 2000)]
    elif kind == 5:  # too many parts
        return [json.dumps(header).encode()] + [bytes(48)] * 12
    elif kind == 6:  # an image that is not one
        header["buffers"][0]["shape"] = [4, 4]
        return [json.dumps(header).encode(), bytes(16)]
    elif kind == 7:  # an image said to be in shared memory, under a reference to no valid slot
        header["buffers"][0]["shared"] = rng.choice(BAD_REFERENCES)
        return [json.dumps(header).encode()]
    elif kind == 8:  # a shape whose byte count overflows 64 bits (with a 0 in it, or not), or a buffer named twice
        huge = rng.choice([[2 ** 31 - 1] * 4, [0] + [2 ** 31 - 1] * 3])
        header["buffers"] = ([{**header["buffers"][0], "shape": huge}] if rng.random() < 0.5
                             else header["buffers"] * 2)
        return [json.dumps(header).encode()] + [bytes(48)] * len(header["buffers"])
    image = bytes(48)
    return [json.dumps(header).encode()] + ([image] if isinstance(header.get("buffers"), list) and
                                            len(header["buffers"]) == 1 else [])


def fuzz_run(run: dict, count: int, seconds: float, stages=FILTERS) -> int:
    """Send ``count`` bad messages into the frame inputs of a running pipeline (``run``: its
    run_config.yaml) within ``seconds``, a forged heartbeat with each, and one oversized part;
    returns how many the stages' sockets took."""
    ctx = zmq.Context()
    socks = [ctx.socket(zmq.PUSH) for _ in stages]
    for sock, stage in zip(socks, stages):
        sock.setsockopt(zmq.SNDHWM, 2)  # "sent" means taken by the stage's socket, not queued here
        sock.connect(run["endpoints"][f"{stage}_in"].split(":", 1)[1])
    control = ctx.socket(zmq.PUSH)
    control.connect(run["endpoints"]["control"].split(":", 1)[1])
    # every message must be taken before the stages see the end of the stream and stop reading, or it
    # would be neither processed nor counted: the clip runs well past the fuzzing
    rng, sent, turn, deadline = random.Random(0), 0, 0, time.time() + seconds
    message = bad_message(rng)
    while sent < count and time.time() < deadline:
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
    # stay connected until the stages took what is queued: ZeroMQ discards what a receiver has not yet
    # taken in when its sending peer disconnects (the reason stages wait for their downstream to exit),
    # and a stage busy with real frames on a loaded machine may take longer than any fixed wait
    _await_taken(run, stages, sent, settle_s=3.0, timeout_s=60.0)
    for sock in socks + [control, oversized]:
        sock.close(linger=20_000)
    ctx.term()
    return sent


def _await_taken(run: dict, stages, sent: int, settle_s: float, timeout_s: float) -> None:
    """Wait ``settle_s``, then until the stages' status (``<output_dir>/status.json``) counts at least
    ``sent`` malformed messages, or ``timeout_s``: what a stage had not taken in when we disconnect
    would be discarded by ZeroMQ, neither processed nor counted."""
    time.sleep(settle_s)
    status_file = Path(run["output_dir"]) / "status.json"
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            status = json.loads(status_file.read_text())
            if sum(int(status.get(stage, {}).get("malformed", 0)) for stage in stages) >= sent:
                return
        except (OSError, ValueError):
            pass  # not written yet, or caught mid-replace
        time.sleep(0.2)
