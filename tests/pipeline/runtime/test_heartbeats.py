"""pipeline/runtime/heartbeats.py and the supervisor's control socket: it takes only heartbeats (a forged or
broken one is dropped and counted, never a crash of the supervisor, which would stop every stage), and a
restart takes only what it can trust from the last beat."""
import json
import sys

import pytest
import yaml
import zmq

from pipeline.runtime.config import connect_side, load_config
from pipeline.runtime.heartbeats import ended_streams, parse_beat, resume_frame
from pipeline.runtime.supervisor import StageProcess, Supervisor


@pytest.mark.parametrize("raw, problem", [
    (b"[" * 60_000, "not JSON"),
    (b'{"stage": "detect", "pid": 1, "fps": NaN}', "not JSON"),
    (b'{"stage": "detect", "pid": 1, "fps": "x"}', "'fps' is not a finite number"),
    (b'{"stage": "detect", "pid": 1, "sent": true}', "'sent' is not a finite number"),
    (b'{"stage": 5, "pid": 1}', "not an object with a stage name"),
    (b'{"stage": "detect", "pid": 1, "extra": {"a": 1}}', "nested object"),
    (b'{"stage": "detect"}', "no pid"),
    (b"x" * 70_000, "over"),
    (b'{"stage": "x", "pid": 1, "t": 1' + b"0" * 400 + b"}", "'t' is not a finite number"),
    (b'{"stage": "x", "pid": 1, "fps": 1e400}', "'fps' is not a finite number"),
])
def test_a_beat_that_is_not_one_says_why(raw, problem):
    assert problem in parse_beat(raw)[1]


def test_a_real_beat_parses():
    beat, problem = parse_beat(json.dumps({"stage": "detect", "pid": 7, "fps": 3.5, "ended": ["a"]}).encode())
    assert problem is None and beat["fps"] == 3.5


def test_forged_beats_are_counted_and_the_supervisor_goes_on(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"sources": [{"id": "a", "uri": "a.mp4"}], "output_dir": str(tmp_path / "out"),
                                    "stages": {"detect": {"weights": "default"}}}))
    supervisor = Supervisor(load_config(path, check_files=False), progress=False)
    sleeper = StageProcess("detect", [sys.executable, "-c", "import time; time.sleep(30)"])
    supervisor.stages = [sleeper]
    forger = supervisor.ctx.socket(zmq.PUSH)
    try:
        sleeper.start()
        forger.connect(connect_side(supervisor.cfg.endpoint("control")).split(":", 1)[1])
        for forged in ({"stage": "detect", "pid": sleeper.proc.pid, "fps": "x"},  # would break the status line
                       {"stage": "detect", "pid": 1, "fps": 1.0},  # someone else's pid: keeps no hung stage alive
                       {"stage": "nobody", "pid": 1}):
            forger.send(json.dumps(forged).encode())
        forger.send(json.dumps({"stage": "detect", "pid": sleeper.proc.pid, "fps": 2.0}).encode())
        for _ in range(20):
            supervisor._read_heartbeats(timeout_ms=100)
        supervisor._report()  # the status line and status.json from what was kept
        assert supervisor.bad_beats == 3 and sleeper.last_beat["fps"] == 2.0
    finally:
        forger.close(0)
        sleeper.proc.kill()
        supervisor.control.close(0), supervisor.status_pub.close(0), supervisor.ctx.term()


@pytest.mark.parametrize("live, beat, now, expected", [
    (False, {"next_frame": 120, "sent": 118, "fps": 30.0, "t": 100.0}, 101.0, 120),  # replay: resend, lose nothing
    (True, {"next_frame": 120, "sent": 118, "fps": 30.0, "t": 100.0}, 101.0, 151),   # live: past all sent since
    (True, {"sent": 7, "t": 100.0}, 100.0, 8),                                        # a beat from before next_frame
])
def test_restarted_capture_resumes_its_numbering(live, beat, now, expected):
    assert resume_frame(beat, live, now) == expected


def test_a_restart_names_the_streams_its_predecessors_ended_and_ignores_forged_ones():
    """A stage fed from another host is restarted with the streams its earlier processes finished
    (their sender may have gone): from the last beat (untrusted: only known streams with whole
    counts) and from what its last process was itself told."""
    beat = {"ended_at": [["cam0", 30], ["cam9", 4], ["cam1", -1], ["cam1", True], "x", ["cam1"], ["cam1", 2.5]]}
    assert ended_streams(["--restarts=1", "--ended=cam1=5"], beat, ["cam0", "cam1"]) == {"cam0": 30, "cam1": 5}
    assert ended_streams(["--ended=garbage", "--ended=cam7=3"], {"ended_at": "x"}, ["cam0"]) == {}
    assert ended_streams([], {}, ["cam0"]) == {}
