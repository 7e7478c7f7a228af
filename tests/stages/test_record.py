"""Record stage (stages/record.py): real PyAV/libx264 encoding, real FFmpeg decoding, a real SIGKILL of a
process writing segments, and the MOT output scored by the metrics library against ground truth."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import av
import numpy as np
import pytest

from pipeline.runtime.config import REPO_ROOT, config_from_dict
from pipeline.runtime.messages import FrameMessage
from pipeline.runtime.stage import StageFatalError
from pipeline.offline.eval.track_metrics import evaluate_mot, read_mot
from pipeline.runtime.records import locate, read_frame_records, read_segment_index
from stages.record import RecordStage, Retention
from stages.track import TrackStage
from tests.conftest import fill_disk

SIZE = (160, 128)  # w, h: small frames keep the encoder cheap on a shared 2-core machine


def make_cfg(tmp_path, **record):
    return config_from_dict({"sources": [{"id": "cam0", "uri": "unused.mp4"}], "output_dir": str(tmp_path / "out"),
                             "transport": {"ipc_dir": str(tmp_path / "ipc")}, "stages": {"record": record}},
                            check_files=False)


def gray_frame(index: int, alert: bool = False, track: bool = True) -> FrameMessage:
    """Frame i is uniformly grey at level 2*i (a decoded frame tells which source frame it was)."""
    image = np.full((SIZE[1], SIZE[0], 3), (2 * index) % 256, np.uint8)
    dets = np.array([[10 + index, 20, 18 + index, 28, 0.9, 0]], np.float32)
    return FrameMessage("cam0", index, index / 30, time.time(), {"image": image, "annotated": 255 - image}, dets,
                        np.array([1 if track else -1]), meta={"alert_track_ids": [1] if alert else []})


def decode_levels(path) -> list[int]:
    with av.open(str(path)) as container:
        return [int(round(f.to_ndarray(format="gray").mean())) for f in container.decode(video=0)]


def run_stage(cfg, messages) -> RecordStage:
    stage = RecordStage(cfg)
    for msg in messages:
        stage.process(msg)
    stage.end_stream("cam0")
    return stage


@pytest.mark.parametrize("container", ["mp4", "mkv", "ts"])
def test_segments_count_lengths_and_every_frame_plays(tmp_path, container):
    cfg = make_cfg(tmp_path, segment_seconds=1.0, container=container, also_raw=True)
    stage = run_stage(cfg, [gray_frame(i) for i in range(75)])
    folder = tmp_path / "out" / "cam0"
    for prefix, level_of in (("segment", lambda i: 255 - 2 * i), ("raw_segment", lambda i: 2 * i)):
        segments = sorted(folder.glob(f"{prefix}_*.{container}"))
        assert [len(decode_levels(p)) for p in segments] == [30, 30, 15]
        levels = [lv for p in segments for lv in decode_levels(p)]
        assert all(abs(lv - level_of(i)) <= 3 for i, lv in enumerate(levels))  # in order, none lost
        with av.open(str(segments[0])) as c:
            assert c.streams.video[0].codec_context.name == "h264"
    assert stage.counters["frames_recorded"] == 75


def test_the_segment_index_finds_every_moment_in_the_segment_that_holds_it(tmp_path):
    run_stage(make_cfg(tmp_path, segment_seconds=1.0, also_raw=True), [gray_frame(i) for i in range(75)])
    folder = tmp_path / "out" / "cam0"
    entries = read_segment_index(folder / "segments.jsonl")
    assert [name for name, _ in entries if name.startswith("segment_")] == [
        "segment_00000.mp4", "segment_00001.mp4", "segment_00002.mp4"]
    for index in (0, 29, 30, 74):  # frame i is grey 255 - 2i in the annotated video, at source time i / 30
        name, offset = locate(entries, index / 30)
        levels = decode_levels(folder / name)
        assert abs(levels[round(offset * 30)] - (255 - 2 * index)) <= 3, (index, name, offset)
    assert locate(entries, 40 / 30, prefix="raw_segment")[0] == "raw_segment_00001.mp4"
    assert locate(entries, -1.0) is None


def test_a_damaged_segment_index_is_read_for_what_is_whole(tmp_path):
    index = tmp_path / "segments.jsonl"
    index.write_text('{"segment": "segment_00000.mp4", "source_ts": 0.0}\nnot json\n[1]\n'
                     '{"segment": "../../etc/passwd", "source_ts": 1}\n{"segment": "segment_00001.mp4", "source_ts": true}\n'
                     '{"segment": "segment_00002.mp4", "source_ts": 1e400}\n{"segment": "segment_00003.mp4", "source_ts": 9.5}\n'
                     '{"segment": "segment_00004.mp4", "sou')
    assert read_segment_index(index) == [("segment_00000.mp4", 0.0), ("segment_00003.mp4", 9.5)]
    assert read_segment_index(tmp_path / "absent.jsonl") == []


def test_a_restarted_recorder_continues_the_numbering_and_keeps_earlier_segments(tmp_path):
    cfg = make_cfg(tmp_path, segment_seconds=1.0)
    run_stage(cfg, [gray_frame(i) for i in range(45)])          # segments 0 and 1
    restarted = run_stage(cfg, [gray_frame(i) for i in range(45, 60)])  # the restarted process: segment 2
    assert restarted.counters["frames_missing"] == 0  # frames 0-44 were recorded before, not lost
    segments = sorted((tmp_path / "out" / "cam0").glob("segment_*.mp4"))
    assert [p.name for p in segments] == ["segment_00000.mp4", "segment_00001.mp4", "segment_00002.mp4"]
    assert [len(decode_levels(p)) for p in segments] == [30, 15, 15]


def test_replay_gaps_are_counted_as_missing_frames(tmp_path):
    stage = run_stage(make_cfg(tmp_path), [gray_frame(i) for i in (0, 1, 5, 6, 9)])
    assert stage.counters["frames_missing"] == 5 and stage.counters["frames_recorded"] == 5


def test_frames_lost_after_the_last_arrival_are_counted_from_the_eos(tmp_path):
    """The EOS carries the source's frame count: frames 7-11 never came (a killed stage's queue)."""
    stage = RecordStage(make_cfg(tmp_path))
    for i in range(7):
        stage.process(gray_frame(i))
    stage.end_stream("cam0", frame_count=12)
    assert stage.counters["frames_missing"] == 5 and stage.counters["frames_recorded"] == 7


def test_sigkill_mid_segment_leaves_a_segment_that_plays_up_to_the_kill(tmp_path):
    folder = tmp_path / "rec"
    writer_code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        import numpy as np
        from stages.record import RecordConfig
        from stages.record import SegmentWriter, video_frame
        writer = SegmentWriter(Path({str(folder)!r}), RecordConfig(segment_seconds=1.0))
        Path({str(folder)!r}).mkdir(parents=True, exist_ok=True)
        for i in range(45):
            writer.write(video_frame(np.full((128, 160, 3), 2 * i, np.uint8)), i / 30)
            print(i, flush=True)
        time.sleep(60)  # killed here, mid second segment, nothing closed
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer_code], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.strip() == "44":
                break
        time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    first, second = sorted(folder.glob("segment_*.mp4"))
    assert len(decode_levels(first)) == 30  # closed when the second began
    levels = decode_levels(second)
    assert 14 <= len(levels) <= 15  # frames 30..44: at most the very last one is lost
    assert all(abs(lv - 2 * (30 + i)) <= 3 for i, lv in enumerate(levels))


def test_event_mode_pre_and_post_roll_are_exact(tmp_path):
    cfg = make_cfg(tmp_path, mode="event", pre_roll_s=0.5, post_roll_s=0.3, segment_seconds=60.0)
    alert = lambda i: 40 <= i < 50 or 100 <= i < 103  # noqa: E731  two alerts -> two clips
    run_stage(cfg, [gray_frame(i, alert=alert(i)) for i in range(130)])
    folder = tmp_path / "out" / "cam0"
    clips = sorted(folder.glob("segment_*.mp4"))
    assert len(clips) == 2
    # 0.5 s pre-roll = 15 frames before the first alert frame, 0.3 s post-roll = 9 after the last
    expected = [list(range(25, 59)), list(range(85, 112))]
    for clip, frames in zip(clips, expected):
        levels = decode_levels(clip)
        assert len(levels) == len(frames)
        assert all(abs(lv - (255 - 2 * i)) <= 3 for i, lv in zip(frames, levels))  # and they are these frames
    assert len((folder / "tracks.jsonl").read_text().splitlines()) == 130  # structured outputs: every frame


def test_retention_deletes_by_age_and_total_size_but_never_an_open_segment(tmp_path):
    folder = tmp_path / "cam0"
    folder.mkdir()
    now = time.time()
    paths = []
    for i in range(5):  # 1 MB each, one hour apart, the oldest first
        path = folder / f"segment_{i:05d}.mp4"
        path.write_bytes(b"\0" * 1_000_000)
        os.utime(path, (now - 3600 * (5 - i), now - 3600 * (5 - i)))
        paths.append(path)
    assert Retention(tmp_path, max_age_s=3.5 * 3600, max_total_mb=None).enforce(set(), now) == paths[:2]
    removed = Retention(tmp_path, max_age_s=None, max_total_mb=2.5).enforce({paths[2]}, now)
    assert removed == [paths[3]]  # 3 MB -> 2 MB; paths[2], the oldest, is kept: it is still being written
    assert sorted(folder.iterdir()) == [paths[2], paths[4]]


def test_tracks_jsonl_and_mot_txt_score_perfectly_against_their_ground_truth(tmp_path, synthetic_clip):
    """Ground-truth boxes as detections -> real track stage -> real record stage -> tracks_mot.txt,
    scored by the metrics library against the clip's MOTChallenge gt: identity = perfect score."""
    from pipeline.offline.data.synthetic import render_clip

    cfg = config_from_dict({"sources": [{"id": "cam0", "uri": "unused.mp4"}], "output_dir": str(tmp_path / "out"),
                            "transport": {"ipc_dir": str(tmp_path / "ipc")},
                            "stages": {"track": {"minimum_consecutive_frames": 1},
                                       "record": {"video": False}}}, check_files=False)
    track, record = TrackStage(cfg), RecordStage(cfg)
    try:
        for i, (image, boxes) in enumerate(render_clip(seed=7, frames=30, size=(320, 256))):
            dets = np.array([[b.x, b.y, b.x + b.w, b.y + b.h, 0.9, b.class_id] for b in boxes], np.float32)
            for msg in track.process(FrameMessage("cam0", i, i / 30, time.time(), {"image": image},
                                                  dets.reshape(-1, 6))):
                record.process(msg)
        record.end_stream("cam0")
    finally:
        track.close()
    folder = tmp_path / "out" / "cam0"
    assert not list(folder.glob("segment_*"))  # video: false
    # trackers' ByteTrack gives a new track its id on its second frame: frame 1 (1-based) has no ids
    gt = [row for row in read_mot(synthetic_clip.mot_gt) if row[0] >= 2]
    metrics = evaluate_mot(gt, folder / "tracks_mot.txt")
    assert metrics["MOTA"] == 1.0 and metrics["IDF1"] == 1.0 and metrics["HOTA"] == pytest.approx(1.0, abs=1e-6)
    records = [json.loads(line) for line in (folder / "tracks.jsonl").read_text().splitlines()]
    assert len(records) == 30 and all(len(r["track_ids"]) == len(r["detections"]) for r in records)


# ---------------------------------------------------------------- a full disk
def noise_frame(index: int, rng: np.random.Generator) -> FrameMessage:
    """Incompressible frames: a few of them fill the small disk."""
    msg = gray_frame(index)
    msg.buffers["annotated"] = rng.integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
    return msg


def decodable_frames(path) -> int:
    """Frames FFmpeg decodes from a segment, stopping at the first damaged packet."""
    count = 0
    try:
        with av.open(str(path)) as container:
            for _ in container.decode(video=0):
                count += 1
    except av.FFmpegError:
        pass
    return count


def test_live_recorder_survives_a_full_disk_and_resumes_when_space_returns(small_disk):
    cfg = config_from_dict({"sources": [{"id": "cam0", "uri": "unused.mp4"}], "output_dir": str(small_disk / "out"),
                            "mode": "live", "transport": {"ipc_dir": str(small_disk / "ipc")},
                            "stages": {"record": {"segment_seconds": 1.0}}}, check_files=False)
    stage, rng = RecordStage(cfg), np.random.default_rng(0)
    filler = fill_disk(small_disk, 400_000)
    index = 0
    while stage.counters["frames_unrecorded"] == 0:  # ~40 kB per noise frame: the disk fills within ~10
        stage.process(noise_frame(index, rng))
        index += 1
        assert index < 200, "the disk never filled"
    for _ in range(5):                      # paused: frames are counted, nothing is attempted
        stage.process(noise_frame(index, rng))
        index += 1
    assert stage.disk_full_since is not None and stage.counters["frames_unrecorded"] == 6
    folder = small_disk / "out" / "cam0"
    assert len(list(read_frame_records(folder / "tracks.jsonl"))) >= 1  # readable to its end while paused
    filler.unlink()                         # space is back
    stage.next_disk_try = 0.0               # (instead of waiting DISK_RETRY_S)
    for _ in range(10):
        stage.process(noise_frame(index, rng))
        index += 1
    stage.end_stream("cam0")
    assert stage.disk_full_since is None
    assert stage.counters["frames_recorded"] + stage.counters["frames_unrecorded"] == index
    segments = sorted(folder.glob("segment_*.mp4"))
    assert len(segments) >= 2 and decodable_frames(segments[-1]) == 10  # a new segment after the pause
    assert sum(decodable_frames(p) for p in segments) >= stage.counters["frames_recorded"] - 2
    records = [r for _, r in read_frame_records(folder / "tracks.jsonl")]  # every line whole
    assert len(records) >= stage.counters["frames_recorded"]


def test_replay_recorder_stops_the_run_on_a_full_disk(small_disk):
    stage, rng = RecordStage(make_cfg(small_disk)), np.random.default_rng(1)
    fill_disk(small_disk, 200_000)
    with pytest.raises(StageFatalError, match="disk full"):
        for index in range(200):
            stage.process(noise_frame(index, rng))
    stage.close()



def test_a_restarted_source_clock_starts_a_new_segment_and_never_stalls_the_pre_roll(tmp_path):
    """A new capture process starts its clock near 0 again while frame numbers go on: the recorder cuts
    a segment there (no frames squeezed into 1 ms steps), and event mode's ring and clip start afresh."""
    def restarted(i):  # frames 0-59 at t = i/30, then the clock restarts: frame 60 is at t = 0 again
        msg = gray_frame(i, alert=50 <= i < 65)
        msg.source_ts = (i if i < 60 else i - 60) / 30
        return msg

    run_stage(make_cfg(tmp_path, segment_seconds=60.0), [restarted(i) for i in range(90)])
    segments = sorted((tmp_path / "out" / "cam0").glob("segment_*.mp4"))
    assert [len(decode_levels(p)) for p in segments] == [60, 30]
    with av.open(str(segments[1])) as container:
        assert abs(float(container.streams.video[0].duration * container.streams.video[0].time_base) - 1.0) < 0.1

    stage = RecordStage(make_cfg(tmp_path / "event", mode="event", pre_roll_s=0.5, post_roll_s=0.3))
    for i in range(200):
        stage.process(restarted(i) if i < 90 else gray_frame(i - 60))  # then time runs on from 1.0 s
    gate = stage.recorders["cam0"].gate
    assert len(gate.ring) <= 16  # 0.5 s of frames at 30 fps: trimmed again after the restart
    stage.end_stream("cam0")
    clips = sorted((tmp_path / "event" / "out" / "cam0").glob("segment_*.mp4"))
    assert len(clips) == 2  # the clip open at the restart was cut there; the alert after it is its own clip


def test_a_restarted_recorder_resumes_from_upstreams_drops_not_its_own(tmp_path):
    """Upstream dropped 50 frames and the recorder itself 3 (stamped on arrival, dropped_here): a
    restarted recorder counts its own from 0, so the next frame carries 50. Frames 10-13 died in the
    killed recorder's queue: 4 lost, not 4 booked as drops against a count that seemed to go down."""
    from pipeline.runtime.books import DROPPED, OWN_DROPPED

    cfg = make_cfg(tmp_path, video=False)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "run_config.yaml").write_text("{}")
    first = RecordStage(cfg)
    for i in range(10):
        msg = gray_frame(i)
        msg.meta.update({DROPPED: 53, OWN_DROPPED: 3})
        first.process(msg)
    first.close()
    again = RecordStage(cfg)
    again.restarts = 1
    msg = gray_frame(14)
    msg.meta.update({DROPPED: 50, OWN_DROPPED: 0})
    again.process(msg)
    assert again.counters["frames_missing"] == 4 and again.counters["frames_dropped_upstream"] == 0
    again.close()


def test_a_restarted_recorder_counts_what_died_in_its_predecessors_queue(tmp_path):
    """The predecessor recorded frames 0-9 and was killed with 10 and 11 in its queue: the restarted
    recorder starts after frame 9 (from tracks.jsonl), so 10 and 11 are lost, a resent 9 a duplicate."""
    cfg = make_cfg(tmp_path, video=False)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "run_config.yaml").write_text("{}")  # the supervisor's, written as the run starts
    first = RecordStage(cfg)
    for i in range(10):
        first.process(gray_frame(i))
    first.close()
    again = RecordStage(cfg)
    again.restarts = 1
    for i in (9, 12, 13):
        again.process(gray_frame(i))
    assert again.counters["duplicates"] == 1 and again.counters["frames_missing"] == 2
    again.close()
    time.sleep(0.05)
    (tmp_path / "out" / "run_config.yaml").write_text("{}")  # a new run into the same folder
    third = RecordStage(cfg)
    third.restarts = 1  # restarted before this run recorded anything: the earlier run's frames are not its own
    third.process(gray_frame(0))
    assert third.counters["duplicates"] == 0 and third.counters["frames_recorded"] == 1
    third.close()


def test_a_new_run_here_goes_on_with_the_books_of_a_source_that_kept_running_elsewhere(tmp_path):
    """The GPU host went down and came back while the edge's capture went on (same session): frames
    that died in the killed host's queues are lost, the edge's live drops stay drops (this host's
    own drop counts start at 0 in its new run); frames of another capture session start new books."""
    cfg = make_cfg(tmp_path, video=False)
    cfg.mode = "live"

    def frame(i: int, session: str, edge_drops: int = 0, gpu_drops: int = 0):
        msg = gray_frame(i)
        msg.meta.update(session=session, dropped_upstream=edge_drops + gpu_drops, dropped_remote=edge_drops)
        return msg

    first = RecordStage(cfg)
    for i in range(10):
        first.process(frame(i, "edge-a", edge_drops=5, gpu_drops=3))
    first.close()
    (tmp_path / "out" / "run_config.yaml").write_text("{}")  # the GPU host's new run
    second = RecordStage(cfg)
    second.process(frame(16, "edge-a", edge_drops=7))  # 10-15 missing: 2 dropped at the edge, 4 lost here
    assert second.counters["frames_missing"] == 4 and second.counters["frames_dropped_upstream"] == 2
    second.process(frame(0, "edge-b"))  # the edge restarted too: its frame 0 is a new frame
    assert second.counters["frames_recorded"] == 2 and second.counters["duplicates"] == 0
    second.close()
    third = RecordStage(cfg)
    third.process(frame(1, "edge-b"))  # resumes after edge-b's frame 0, not after edge-a's 16
    assert third.counters["frames_recorded"] == 1 and third.counters["frames_missing"] == 0
    third.close()


def test_live_drops_upstream_are_not_losses(tmp_path):
    cfg = make_cfg(tmp_path, video=False)
    cfg.mode = "live"
    stage = RecordStage(cfg)
    for index, dropped_upstream in ((0, 0), (3, 2), (7, 3)):  # 1, 2 and one of 4-6 dropped on purpose
        msg = gray_frame(index)
        msg.meta["dropped_upstream"] = dropped_upstream
        stage.process(msg)
    assert stage.counters["frames_dropped_upstream"] == 3 and stage.counters["frames_missing"] == 2
    stage.close()


def test_a_stalled_source_clock_cannot_grow_the_pre_roll_without_bound():
    from stages.record import MAX_SOURCE_FPS, RollGate

    gate = RollGate(pre_roll_s=1.0, post_roll_s=1.0)
    for i in range(5000):
        gate.push(10.0, i, triggered=False)  # the same source time over and over
    assert len(gate.ring) <= MAX_SOURCE_FPS + 2 and gate.ring[-1][1] == 4999


@pytest.mark.parametrize("bad_index", [True, -3, 2 ** 70, "9"])
def test_a_forged_last_record_does_not_steer_the_books(tmp_path, bad_index):
    """tracks.jsonl is read back on resume: an index out of range is ignored, not trusted (a huge one
    would make every later frame a duplicate)."""
    cfg = make_cfg(tmp_path, video=False)
    folder = tmp_path / "out" / "cam0"
    folder.mkdir(parents=True)
    (folder / "tracks.jsonl").write_text(json.dumps({"frame_index": bad_index, "session": "s"}) + "\n")
    stage = RecordStage(cfg)
    msg = gray_frame(0)
    msg.meta["session"] = "s"
    stage.process(msg)
    assert stage.counters["frames_recorded"] == 1 and stage.counters["duplicates"] == 0
    stage.close()
