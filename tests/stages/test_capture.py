"""Capture against real sources: files, image folders, a real gst-rtsp-server (killed, restarted, frozen)."""
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from pipeline.runtime.config import config_from_dict
from stages.capture import CaptureStage, SourceError
from tests.conftest import REPO_ROOT


def capture_for(uri, tmp_path, start_frame=0, **source):
    cfg = config_from_dict({"sources": [{"id": "cam", "uri": str(uri), **source}], "output_dir": str(tmp_path),
                            "mode": "live"}, check_files=False)
    return CaptureStage(cfg, "cam", start_frame)


def take(frames_iter, n, timeout):
    """Drive the capture's frame generator until n frames arrived or the time is up."""
    got, deadline = [], time.time() + timeout
    while len(got) < n and time.time() < deadline:
        msg = next(frames_iter, "end")
        if msg == "end":
            break
        if msg is not None:
            got.append(msg)
    return got


def test_image_folder_is_a_stream(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), np.full((8, 8, 3), i * 50, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    stage = capture_for(tmp_path, tmp_path, fps=10)
    stage.cfg.mode = "replay"
    msgs = [m for m in stage.frames() if m is not None]
    assert [m.frame_index for m in msgs] == [0, 1, 2]
    assert [m.source_ts for m in msgs] == [0.0, 0.1, 0.2] and msgs[2].image[0, 0, 0] == 100


def test_corrupt_video_is_refused_with_one_line_and_exit_3(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 100)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"sources: [{{id: cam, uri: {bad}}}]\noutput_dir: {tmp_path}/out\n")
    result = subprocess.run([sys.executable, "-m", "pipeline", "stage", "capture", str(cfg), "--source", "cam"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3
    assert result.stderr.strip().splitlines()[-1] == f"error: capture: cannot open {bad}"


@pytest.mark.rtsp
def test_rtsp_frames_arrive(rtsp_server, tmp_path):
    stage = capture_for(rtsp_server.url, tmp_path)
    msgs = take(stage.frames(), 10, timeout=20)
    assert len(msgs) == 10 and msgs[0].image.shape == (256, 320, 3)
    assert stage.stream_state == "up"
    assert stage.stream_frame_count("cam") == 0  # a live stream that has not ended has no count
    stage.close()


def test_restarted_folder_capture_skips_the_frames_already_sent(tmp_path):
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), np.full((8, 8, 3), i * 50, np.uint8))
    stage = capture_for(tmp_path, tmp_path, start_frame=2, fps=10)
    stage.cfg.mode = "replay"
    msgs = [m for m in stage.frames() if m is not None]
    assert [m.frame_index for m in msgs] == [2, 3] and msgs[0].image[0, 0, 0] == 100
    assert stage.status()["next_frame"] == 4
    assert stage.stream_frame_count("cam") == 4  # what its EOS tells the recorder: frames 0-3 were sent


@pytest.mark.rtsp
def test_restarted_rtsp_capture_continues_the_numbering(rtsp_server, tmp_path):
    """A camera restarted by the supervisor must not start again at 0: track and record would take
    every new frame for an old one until the count caught up."""
    stage = capture_for(rtsp_server.url, tmp_path, start_frame=5000)
    msgs = take(stage.frames(), 3, timeout=20)
    assert [m.frame_index for m in msgs] == [5000, 5001, 5002]
    assert stage.status()["next_frame"] == 5002  # the frame in hand counts as sent once the next is asked for
    stage.close()


@pytest.mark.rtsp
def test_rtsp_server_killed_then_restarted_capture_reconnects(rtsp_server, tmp_path):
    stage = capture_for(rtsp_server.url, tmp_path, read_timeout_s=2, open_timeout_s=2, reconnect_max_s=1)
    frames = stage.frames()
    assert len(take(frames, 5, timeout=20)) == 5
    rtsp_server.kill()
    deadline = time.time() + 15
    while stage.stream_state != "down" and time.time() < deadline:
        next(frames)
    assert stage.stream_state == "down"
    rtsp_server.start()  # same port, same path
    resumed = take(frames, 5, timeout=30)
    assert len(resumed) == 5 and stage.stream_state == "up"
    assert stage.counters["reconnects"] >= 1
    assert resumed[0].frame_index > 4  # frame numbering continues across the reconnect
    stage.close()


@pytest.mark.rtsp
def test_rtsp_server_hung_is_reported_within_the_read_timeout(rtsp_server, tmp_path):
    stage = capture_for(rtsp_server.url, tmp_path, read_timeout_s=2, open_timeout_s=2)
    frames = stage.frames()
    assert len(take(frames, 5, timeout=20)) == 5
    rtsp_server.signal(signal.SIGSTOP)
    frozen_at = time.time()
    while stage.stream_state != "down" and time.time() - frozen_at < 20:
        next(frames)  # must keep returning: a hung server may not block the capture
    assert stage.stream_state == "down"
    assert time.time() - frozen_at < 2 + 6  # read timeout plus decoder slack, not FFmpeg's default 90 s
    stage.close()


@pytest.mark.rtsp
def test_a_camera_that_stops_sending_counts_against_max_reconnects(rtsp_server, tmp_path):
    """The connection opened fine, then no frame came: that is a failed attempt too (max_reconnects 0:
    give up at once instead of reconnecting forever)."""
    stage = capture_for(rtsp_server.url, tmp_path, read_timeout_s=2, open_timeout_s=2, max_reconnects=0)
    frames = stage.frames()
    assert len(take(frames, 3, timeout=20)) == 3
    rtsp_server.signal(signal.SIGSTOP)
    frozen_at = time.time()
    while next(frames, "end") != "end":  # buffered frames, then the read times out: the generator ends
        assert time.time() - frozen_at < 20, "the capture went on reconnecting"
    assert stage.stream_state == "down" and stage.counters["reconnects"] == 0
    assert time.time() - frozen_at < 2 + 6
    stage.close()


def test_a_looped_folder_keeps_its_timestamps_rising_across_passes(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), np.full((8, 8, 3), i * 50, np.uint8))
    stage = capture_for(tmp_path, tmp_path, fps=10, loop=True)  # live + loop: pass after pass
    msgs = take(stage.frames(), 7, timeout=5)
    assert [m.frame_index for m in msgs] == list(range(7))
    assert [round(m.source_ts, 3) for m in msgs] == [round(0.1 * i, 3) for i in range(7)]


def test_a_folder_without_a_readable_frame_is_a_source_error(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    stage = capture_for(tmp_path, tmp_path, fps=10, loop=True)
    with pytest.raises(SourceError, match="no readable frame"):
        take(stage.frames(), 1, timeout=5)


def test_a_capture_resuming_far_into_a_file_keeps_beating_while_it_skips(tmp_path):
    for i in range(120):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), np.full((8, 8, 3), i, np.uint8))
    stage = capture_for(tmp_path, tmp_path, start_frame=110, fps=1000)
    stage.cfg.mode = "replay"
    yielded = list(stage.frames())
    assert [m.frame_index for m in yielded if m is not None] == list(range(110, 120))
    assert yielded[:2] == [None, None]  # idle yields (heartbeats) while frames 0-109 are skipped


def test_a_camera_that_never_answers_cannot_hold_a_replay_forever(tmp_path):
    from tests.conftest import free_port

    cfg = config_from_dict({"sources": [{"id": "cam", "uri": f"rtsp://127.0.0.1:{free_port()}/none",
                                         "open_timeout_s": 0.5, "reconnect_initial_s": 0.01,
                                         "reconnect_max_s": 0.01}], "output_dir": str(tmp_path)}, check_files=False)
    stage = CaptureStage(cfg, "cam")
    with pytest.raises(SourceError, match="no frames after 6 attempts; the replay is incomplete"):
        for _ in stage.frames():
            pass


@pytest.mark.rtsp
def test_the_rehearsal_camera_loops_a_clip_without_a_break(tmp_path, synthetic_clip):
    """scripts/rtsp_server.py --video plays a 1 s clip round and round as one unbroken stream: the
    capture sees no stream down and source times keep rising across passes."""
    from tests.conftest import RtspServer, _gst_rtsp_available, free_port

    if not _gst_rtsp_available():
        pytest.skip("GStreamer RTSP server missing (.ci/run installs it)")
    server = RtspServer(free_port(), video=synthetic_clip.video).start()
    try:
        stage = capture_for(server.url, tmp_path, read_timeout_s=2)
        msgs = take(stage.frames(), 100, timeout=20)  # a 30-frame clip: more than three passes
        assert len(msgs) == 100 and stage.counters["reconnects"] == 0 and stage.stream_state == "up"
        times = [m.source_ts for m in msgs]
        assert all(b > a for a, b in zip(times[2:], times[3:])) and times[-1] > 2.5, times  # OpenCV: the first two are 0
        server.signal(signal.SIGTERM)
        assert server.proc.wait(timeout=10) == 0  # stops cleanly
    finally:
        server.kill()


def test_a_folder_with_unreadable_files_is_no_incomplete_replay(tmp_path):
    """Files skipped as unreadable (macOS ._ copies, say) are not a truncated source."""
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.zeros((8, 8, 3), np.uint8))
        (tmp_path / f"._{i}.png").write_bytes(b"AppleDouble")
    stage = capture_for(tmp_path, tmp_path)
    stage.cfg.mode = "replay"
    assert len([m for m in stage.frames() if m is not None]) == 3 and stage.stream_state == "ended"
