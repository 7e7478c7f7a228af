"""The whole pipeline as separate OS processes over real ZeroMQ sockets, on real video files."""
import json
from pathlib import Path
import signal
import subprocess
import sys
import time
import urllib.request

import av
import pytest
import yaml
import zmq

from tests.conftest import REPO_ROOT, fill_disk, free_port

pytestmark = pytest.mark.slow


def start_pipeline(tmp_path, sources, weights, **overrides):
    cfg = {"sources": sources, "output_dir": str(tmp_path / "out"),
           "stages": {"detect": {"weights": str(weights), "backend": "torch"}},
           "supervisor": {"status_interval_s": 0.5, "heartbeat_interval_s": 0.25}}
    for key, value in overrides.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(path), "--no-progress"], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=240):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def status(tmp_path) -> dict:
    path = tmp_path / "out" / "status.json"
    return json.loads(path.read_text()) if path.exists() else {}


def wait_for(predicate, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if predicate():
                return True
        except (ValueError, KeyError, FileNotFoundError):
            pass  # status.json is being rewritten
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


def decoded_frames(folder) -> int:
    total = 0
    for segment in sorted(folder.glob("segment_*.mp4")):
        with av.open(str(segment)) as container:
            total += sum(1 for _ in container.decode(video=0))
    return total


def jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_replay_two_streams_records_every_frame_and_all_stages_exit_0(tmp_path, synthetic_clip, random_weights):
    sources = [{"id": "a", "uri": str(synthetic_clip.video)}, {"id": "b", "uri": str(synthetic_clip.video)}]
    code, err = finish(start_pipeline(tmp_path, sources, random_weights))
    assert code == 0, err
    final = status(tmp_path)
    assert all(s["exit_code"] == 0 for s in final.values()), final
    for stream in ("a", "b"):
        rows = jsonl(tmp_path / "out" / stream / "tracks.jsonl")
        assert [r["frame_index"] for r in rows] == list(range(30))  # none dropped, none reordered
        assert decoded_frames(tmp_path / "out" / stream) == 30
    assert final["detect"]["processed"] == 60 and final["detect"]["dropped_stale"] == 0


def test_killed_stage_is_restarted_and_run_completes(tmp_path, synthetic_clip, random_weights):
    sources = [{"id": "a", "uri": str(synthetic_clip.video), "pace": True, "loop": False}]
    long_clip = tmp_path / "long.mp4"
    _concat(synthetic_clip.video, long_clip, times=5)  # 150 frames paced at 30 fps: ~5 s
    sources[0]["uri"] = str(long_clip)
    proc = start_pipeline(tmp_path, sources, random_weights)
    wait_for(lambda: status(tmp_path)["detect"]["processed"] > 10)
    victim = status(tmp_path)["detect"]["pid"]
    subprocess.run(["kill", "-9", str(victim)], check=True)
    code, err = finish(proc)
    assert code == 0, err
    final = status(tmp_path)
    assert final["detect"]["restarts"] == 1 and final["detect"]["pid"] != victim
    assert "restarting detect" in err
    rows = jsonl(tmp_path / "out" / "a" / "tracks.jsonl")
    assert rows[-1]["frame_index"] == 149  # the stream ran to its end after the restart
    # frames in the killed stage's queue are gone, but never silently: recorded + missing = all
    assert len(rows) + final["record"]["frames_missing"] == 150


def test_frozen_sink_is_killed_restarted_and_the_run_ends(tmp_path, random_weights):
    """record is frozen (SIGSTOP) before the frames come, killed as hung and restarted; what track
    had queued for it reaches the new process and the run ends instead of hanging."""
    from pipeline.offline.data import synthetic

    clip = synthetic.make_clip(tmp_path / "clip", seed=3, frames=3, size=(160, 128))
    proc = start_pipeline(tmp_path, [{"id": "a", "uri": str(clip.video)}], random_weights,
                          supervisor={"heartbeat_timeout_s": 8.0})
    wait_for(lambda: status(tmp_path)["record"]["pid"] > 0, timeout=60)  # record beats before sources start
    frozen = status(tmp_path)["record"]["pid"]
    subprocess.run(["kill", "-STOP", str(frozen)], check=True)
    code, err = finish(proc, timeout=120)
    assert code == 0, err
    final = status(tmp_path)
    assert final["record"]["restarts"] == 1 and final["record"]["pid"] != frozen


def test_a_restarted_stage_has_its_upstream_send_the_end_of_stream_again(tmp_path, synthetic_clip, random_weights):
    """The end-of-stream messages in a killed stage's queue die with it: once the restarted stage
    beats, its upstream is told (SIGUSR2) to send them again; an upstream already gone fails the run
    with a reason instead of leaving it to hang."""
    from pipeline.runtime.config import load_config
    from pipeline.runtime.supervisor import StageProcess, Supervisor

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"sources": [{"id": "a", "uri": str(synthetic_clip.video)}],
                                    "output_dir": str(tmp_path / "out"), "stages": {"detect": {"weights": str(random_weights)}}}))
    supervisor = Supervisor(load_config(path), progress=False)
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    detect, track = StageProcess("detect", sleeper), StageProcess("track", sleeper)
    supervisor.stages = [detect, track]
    try:
        detect.start(), track.start()
        supervisor._resend_upstream_eos(track)
        assert detect.alive()  # no heartbeat from it yet: its handler may not be installed, not signalled
        detect.last_beat = {"pid": detect.proc.pid}
        supervisor._resend_upstream_eos(track)
        assert detect.proc.wait(timeout=10) == -signal.SIGUSR2 and track.alive()  # only the upstream is told
        assert supervisor.failed is None
        detect.exit_code = 0  # finished and gone before the restart
        supervisor.cfg.mode = "live"
        supervisor._resend_upstream_eos(track)
        assert supervisor.failed is None  # live runs end by signal: a lost EOS does not matter there
        supervisor.cfg.mode = "replay"
        supervisor._resend_upstream_eos(track)
        assert "track restarted after its upstream had finished" in supervisor.failed
    finally:
        for sp in (detect, track):
            if sp.alive():
                sp.proc.kill()
        supervisor.control.close(0), supervisor.status_pub.close(0), supervisor.ctx.term()


def test_sigterm_mid_run_drains_and_the_recording_plays(tmp_path, synthetic_clip, random_weights):
    long_clip = tmp_path / "long.mp4"
    _concat(synthetic_clip.video, long_clip, times=10)
    proc = start_pipeline(tmp_path, [{"id": "a", "uri": str(long_clip), "pace": True}], random_weights)
    wait_for(lambda: status(tmp_path)["record"]["processed"] > 15)
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc, timeout=60)
    assert code == 0, err
    rows = jsonl(tmp_path / "out" / "a" / "tracks.jsonl")
    assert 15 < len(rows) < 300
    assert decoded_frames(tmp_path / "out" / "a") == len(rows)  # every recorded frame plays


def test_malformed_message_is_dropped_and_counted_and_the_stage_lives(tmp_path, synthetic_clip, random_weights):
    long_clip = tmp_path / "long.mp4"
    _concat(synthetic_clip.video, long_clip, times=3)
    port = free_port()
    proc = start_pipeline(tmp_path, [{"id": "a", "uri": str(long_clip), "pace": True}], random_weights,
                          supervisor={"prometheus_port": port})
    wait_for(lambda: status(tmp_path)["preprocess"]["processed"] > 5)
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'lss_stage_fps{stage="detect"}' in metrics and 'lss_stage_queue_depth{stage="preprocess"}' in metrics
    run_cfg = yaml.safe_load((tmp_path / "out" / "run_config.yaml").read_text())
    address = run_cfg["endpoints"]["preprocess_in"].split(":", 1)[1]
    ctx = zmq.Context()
    rogue = ctx.socket(zmq.PUSH)
    rogue.connect(address)
    rogue.send_multipart([b"not json at all", b"\x00" * 10])
    rogue.send_multipart([json.dumps({"v": 1, "kind": "frame", "buffers": []}).encode()])
    rogue.close(linger=1000)
    ctx.term()
    code, err = finish(proc)
    assert code == 0, err
    final = status(tmp_path)
    assert final["preprocess"]["malformed"] == 2 and final["preprocess"]["restarts"] == 0
    assert len(jsonl(tmp_path / "out" / "a" / "tracks.jsonl")) == 90


@pytest.mark.parametrize("shared_memory", [True, False], ids=["shared-memory", "socket-copies"])
def test_live_mode_drops_stale_frames_and_accounts_for_every_one(tmp_path, synthetic_clip, random_weights,
                                                                 shared_memory):
    long_clip = tmp_path / "long.mp4"
    _concat(synthetic_clip.video, long_clip, times=4)
    # a 640x640 input makes the detector slower than the 30 fps source on this CPU
    proc = start_pipeline(tmp_path, [{"id": "a", "uri": str(long_clip)}], random_weights, mode="live",
                          stages={"detect": {"weights": str(random_weights), "backend": "torch"},
                                  "preprocess": {"input_size": [640, 640]}},
                          transport={"shared_memory": shared_memory})
    code, err = finish(proc)
    assert code == 0, err
    final = status(tmp_path)
    assert all(final[label].get("shared_memory", False) == shared_memory for label in
               ("capture:a", "preprocess", "detect", "track", "record"))
    assert not [path for s in final.values() for path in Path("/dev/shm").glob(f"lss-{s['pid']}-*")]  # removed
    captured = final["capture:a"]["received"]
    dropped = sum(s.get("dropped_stale", 0) + s.get("dropped_full", 0) for s in final.values())
    recorded = final["record"]["frames_recorded"]
    assert captured == 120 and dropped > 0 and recorded > 0
    assert recorded + dropped == captured  # every frame is either recorded or counted as dropped


def _concat(src, dst, times):
    with av.open(str(src)) as inp:
        frames = [f.to_ndarray(format="bgr24") for f in inp.decode(video=0)]
    with av.open(str(dst), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for _ in range(times):
            for image in frames:
                out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        out.mux(stream.encode(None))


@pytest.mark.rtsp
def test_live_rtsp_camera_frozen_then_back_no_stage_blocks(tmp_path, rtsp_server, random_weights):
    proc = start_pipeline(tmp_path, [{"id": "cam", "uri": rtsp_server.url, "read_timeout_s": 2,
                                      "open_timeout_s": 2, "reconnect_max_s": 1}],
                          random_weights, mode="live", supervisor={"heartbeat_timeout_s": 10})
    wait_for(lambda: status(tmp_path)["record"]["processed"] > 10, timeout=120)
    rtsp_server.signal(signal.SIGSTOP)
    wait_for(lambda: status(tmp_path)["capture:cam"]["stream"] == "down", timeout=20)
    time.sleep(11)  # longer than the heartbeat timeout: a blocked stage would be killed now
    assert all(s["restarts"] == 0 and s["alive"] for s in status(tmp_path).values())
    rtsp_server.signal(signal.SIGCONT)
    rtsp_server.kill()
    rtsp_server.start()
    recorded = status(tmp_path)["record"]["processed"]
    wait_for(lambda: status(tmp_path)["capture:cam"]["stream"] == "up"
             and status(tmp_path)["record"]["processed"] > recorded + 5, timeout=90)
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc, timeout=60)
    assert code == 0, err
    events = jsonl(tmp_path / "out" / "events.jsonl")
    assert [e["type"] for e in events if e["type"].startswith("stream_")] == ["stream_down", "stream_up"]
    rows = jsonl(tmp_path / "out" / "cam" / "tracks.jsonl")
    assert decoded_frames(tmp_path / "out" / "cam") == len(rows) > 20


@pytest.mark.parametrize("mode", ["replay", "live"])
def test_stages_stop_when_the_supervisor_is_killed(tmp_path, synthetic_clip, random_weights, mode):
    """... and, live, remove the shared-memory rings nobody else is left to remove."""
    long_clip = tmp_path / "long.mp4"
    _concat(synthetic_clip.video, long_clip, times=10)
    proc = start_pipeline(tmp_path, [{"id": "a", "uri": str(long_clip), "pace": True}], random_weights, mode=mode)
    wait_for(lambda: status(tmp_path)["record"]["processed"] > 5)
    pids = {label: s["pid"] for label, s in status(tmp_path).items()}
    proc.kill()  # SIGKILL: no drain, no cleanup by the supervisor
    proc.wait()

    def alive():
        return [label for label, pid in pids.items() if _alive(pid)]

    try:
        wait_for(lambda: not alive(), timeout=30)
    except AssertionError:
        raise AssertionError(f"still running 30 s after the supervisor died: {alive()}") from None
    finally:
        for pid in pids.values():  # never leave stages behind, even when the assertion fails
            subprocess.run(["kill", "-9", str(pid)], capture_output=True)
        proc.communicate(timeout=30)
    rows = jsonl(tmp_path / "out" / "a" / "tracks.jsonl")
    assert decoded_frames(tmp_path / "out" / "a") >= len(rows) - 2  # what was recorded still plays
    assert not [path for pid in pids.values() for path in Path("/dev/shm").glob(f"lss-{pid}-*")]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_truncated_weights_stop_the_run_before_any_stage_starts(tmp_path, synthetic_clip, random_weights):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(random_weights.read_bytes()[:4096])
    proc = start_pipeline(tmp_path, [{"id": "cam0", "uri": str(synthetic_clip.video)}], truncated)
    code, err = finish(proc, timeout=120)
    assert code == 2 and err.strip().splitlines() == [
        f"error: config key 'stages.detect.weights': {truncated}: truncated or corrupt checkpoint (BadZipFile)"]


def test_stage_given_truncated_weights_exits_2_with_one_line(tmp_path, synthetic_clip, random_weights):
    """Exit 2 tells the supervisor not to restart it (a stage started by hand, or on another host)."""
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(random_weights.read_bytes()[:4096])
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"sources": [{"id": "cam0", "uri": str(synthetic_clip.video)}],
                                    "output_dir": str(tmp_path / "out"), "stages": {"detect": {"weights": str(truncated)}}}))
    result = subprocess.run([sys.executable, "-m", "pipeline", "stage", "detect", str(path)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: detect: config key 'stages.detect.weights': {truncated}")


def test_replay_onto_a_full_disk_stops_with_one_line_not_a_hang(tmp_path, small_disk, synthetic_clip, random_weights):
    """A replay's recording must be complete: a full disk ends the run (exit != 0) with one line."""
    fill_disk(small_disk, 20_000)  # room for run_config.yaml and status.json (~2 kB each), not for the video
    proc = start_pipeline(tmp_path, [{"id": "a", "uri": str(synthetic_clip.video)}], random_weights,
                          output_dir=str(small_disk / "out"))
    code, err = finish(proc, timeout=120)
    assert code != 0
    assert "error: record: disk full under" in err and "replay's recording would be incomplete" in err, err
    assert "Traceback" not in err, err


def test_a_frame_over_the_message_limit_stops_the_run_with_one_line(tmp_path, synthetic_clip, random_weights):
    """The receiving stage's ZeroMQ cuts a link that carries a part over transport.max_message_mb, which
    would lose frames with no reason given: the sender refuses it first, naming the setting."""
    proc = start_pipeline(tmp_path, [{"id": "a", "uri": str(synthetic_clip.video)}], random_weights,
                          transport={"max_message_mb": 0.01})
    code, err = finish(proc, timeout=120)
    assert code == 3, err[-2000:]
    assert "MB message part is over transport.max_message_mb (0.01), which the next stage refuses: raise " \
           "transport.max_message_mb" in err
    assert "Traceback" not in err


def test_a_stage_sending_to_another_host_that_is_killed_in_a_drain_fails_the_run(tmp_path, synthetic_clip):
    """At the end of a drain the supervisor kills what is left. A stage whose downstream runs on another
    host may still be waiting for that host's confirmations: its kill fails the run (exit 3), never a
    quiet exit 0; a stage of this host killed the same way does not."""
    from pipeline.runtime.config import load_config
    from pipeline.runtime.supervisor import StageProcess, Supervisor

    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump({
        "sources": [{"id": "a", "uri": str(synthetic_clip.video)}], "output_dir": str(tmp_path / "out"),
        "run_stages": ["capture", "preprocess"],
        "endpoints": {"detect_in": f"pull+connect:tcp://127.0.0.1:{free_port()}"}}))
    supervisor = Supervisor(load_config(path), progress=False)
    stubborn = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                      "time.sleep(60)"]
    capture, preprocess = StageProcess("capture:a", stubborn), StageProcess("preprocess", stubborn)
    supervisor.stages = [capture, preprocess]
    try:
        capture.start(), preprocess.start()
        time.sleep(0.5)  # the handlers are installed
        supervisor.stopping = True
        supervisor._terminate_rest()  # SIGTERM is ignored: both are killed after 5 s
        supervisor._record_last_exits()
        assert capture.exit_code == preprocess.exit_code == -signal.SIGKILL
        assert supervisor.failed == ("preprocess ended (exit code -9) before detect on the other host confirmed its "
                                     "ends of stream: the output there may be incomplete")
        assert supervisor.failed_code == 3
    finally:
        for sp in (capture, preprocess):
            if sp.alive():
                sp.proc.kill()
        supervisor.control.close(0), supervisor.status_pub.close(0), supervisor.ctx.term()
