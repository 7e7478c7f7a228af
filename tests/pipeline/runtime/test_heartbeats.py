"""The supervisor's control socket takes only heartbeats: a forged or broken one is dropped and counted,
never a crash of the supervisor (which would stop every stage)."""
import json
import sys

import pytest
import yaml
import zmq

from pipeline.runtime.config import connect_side, load_config
from pipeline.runtime.supervisor import StageProcess, Supervisor, parse_beat


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
