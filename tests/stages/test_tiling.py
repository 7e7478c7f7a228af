"""Tiled detection in the stages: the planner's grid and schedule, motion per tile, the detect stage
against models.tiling, bad input, and a replay of a 1920x1080 clip whose small drones only tiling finds."""
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from pipeline.runtime.config import ConfigError, config_from_dict
from pipeline.runtime.messages import FrameMessage
from stages.tile_schedule import TileSchedule
from stages.tiling import MotionMeter, TilingConfig, TilePlanner
from tests.conftest import REPO_ROOT


def _cfg(tmp_path, run_mode="replay", **tiling):
    return config_from_dict({"sources": [{"id": "a", "uri": "a.mp4"}], "output_dir": str(tmp_path), "mode": run_mode,
                             "stages": {"detect": {"tiling": tiling}}}, check_files=False)


# ---------------------------------------------------------------- the schedule
@pytest.mark.parametrize("tiles,every,budget", [(12, 5, 3), (35, 5, 7), (12, 3, 1), (5, 5, 1)])
def test_every_tile_is_examined_at_least_every_k_frames_even_with_hot_tiles(tiles, every, budget):
    schedule = TileSchedule(tiles, every, budget, hold=10)
    last_seen = np.full(tiles, -1)
    for frame in range(200):
        chosen = schedule.choose()
        schedule.saw([0, 1])  # two tiles with a target all the time: they are examined every frame
        # hot from frame 1 on: never skipped for a due tile (as many hot tiles as the budget allows)
        assert len({0, 1} & set(chosen)) >= min(2, budget) or frame == 0
        gaps = frame - last_seen[chosen]
        assert (gaps[last_seen[chosen] >= 0] <= every).all()
        last_seen[chosen] = frame
        assert len(chosen) <= max(budget, -(-tiles // every) + 1 + min(2, budget))
    assert (frame - last_seen < every).all()
    assert schedule.coverage()["longest_gap"] <= every


def test_hot_then_moving_tiles_come_first_within_the_budget():
    schedule = TileSchedule(12, 100, 2, hold=3)  # nothing due for a long time: priority decides
    for _ in range(100):
        schedule.choose()
    schedule.saw([7])
    motion = np.zeros(12)
    motion[4] = 50
    assert schedule.choose(motion) == [4, 7]
    for _ in range(3):
        schedule.choose()
    assert 7 not in schedule.choose(np.zeros(12))  # the heat wore off after `hold` frames


def test_budget_zero_examines_every_tile_and_reports_full_coverage():
    schedule = TileSchedule(12, 5, 0)
    assert all(schedule.choose() == list(range(12)) for _ in range(4))
    assert schedule.coverage() == {"tiles": 12, "tiles_per_frame": 12.0, "share_per_frame": 1.0, "longest_gap": 1,
                                   "whole_per_frame": 0.0, "behind_share": 0.0}
    with_whole = TileSchedule(12, 5, 0, whole=True)
    assert with_whole.choose() == list(range(12)) and with_whole.whole_now
    assert with_whole.coverage()["whole_per_frame"] == 1.0


def test_ages_count_source_frames_so_a_stage_that_skips_frames_examines_more_tiles_each_frame():
    steady, skipping = TileSchedule(12, 5, 1), TileSchedule(12, 5, 1)
    steady_tiles = [len(steady.choose(None, i)) for i in range(100)]
    skipping_tiles = [len(skipping.choose(None, 2 * i)) for i in range(100)]  # every other frame dropped before
    assert np.mean(steady_tiles[10:]) == pytest.approx(12 / 5, abs=0.1)
    # a tile is due once 5 source frames old: 6 when it comes every other frame (no more tiles per source
    # frame than a stage that keeps up examines, so falling behind never makes the stage slower still)
    assert np.mean(skipping_tiles[10:]) == pytest.approx(12 / 3, abs=0.1)
    assert steady.coverage()["longest_gap"] == 5 and skipping.coverage()["longest_gap"] == 6  # in source frames
    assert skipping.coverage()["behind_share"] > 0.9 and steady.coverage()["behind_share"] == 0.0


def test_the_budget_halves_when_frames_come_late_or_skipped_and_grows_back_one_region_at_a_time():
    schedule = TileSchedule(12, 1000, 3, hold=10_000)  # after the first 12 frames nothing is due for long
    for i in range(12):
        schedule.choose(None, i)
    schedule.saw(range(12))  # every tile hot: only the allowance limits what is taken
    assert len(schedule.choose(None, 12)) == 3  # in time: the whole budget
    assert len(schedule.choose(None, 13, late=True)) == 1  # waited in a queue: 3 // 2
    assert len(schedule.choose(None, 15)) == 0  # frames skipped before it: 1 // 2, due tiles alone (none)
    counts = [len(schedule.choose(None, i)) for i in range(16, 16 + 3000)]
    assert counts[998] == 0 and counts[999] == 1 and counts[1999] == 2 and max(counts) == 3  # +1 per `every`


def test_the_whole_frame_pass_takes_its_turn_like_a_tile_and_runs_every_frame_while_it_sees_a_large_object():
    schedule = TileSchedule(6, 5, 1, hold=3, whole=True)
    wholes = []
    for i in range(50):
        schedule.choose(None, i)
        wholes.append(schedule.whole_now)
    assert 0 < sum(wholes) < 50 and all(any(wholes[i:i + 5]) for i in range(45))  # at least every 5 frames
    quiet = TileSchedule(6, 1000, 1, hold=3, whole=True)  # nothing due after the first 7 frames
    for i in range(20):
        quiet.choose(None, i)
    quiet.saw([], whole=True)  # an airplane larger than the overlap: the pass is the one to see it whole
    assert all(quiet.choose(None, i) == [] and quiet.whole_now for i in range(20, 23))  # for `hold` frames
    assert quiet.choose(None, 23) != [] and not quiet.whole_now


def test_frame_pace_learns_the_interval_and_calls_a_frame_late_once_it_waited_half_of_one():
    from stages.tiling import FramePace

    pace, now = FramePace(), 1000.0
    def frame(index, waited, ts=None):
        return FrameMessage("a", index, index / 25 if ts is None else ts, now - waited)
    assert not pace.late(frame(0, 1.0), now)  # no interval known yet: never late
    assert not pace.late(frame(1, 0.005), now)  # 5 ms after capture at 25 fps: in time
    assert pace.late(frame(2, 0.03), now)  # 30 ms: more than half of a 40 ms interval
    assert not pace.late(frame(4, 0.015), now) and pace.interval["a"] == pytest.approx(0.04)  # per frame, not gap
    assert pace.late(frame(5, 0.03), now)
    skewed = FramePace()  # the capture host's clock 5 s behind this one's: only the change counts
    assert [skewed.late(frame(i, 5.004 + (0.03 if i == 6 else 0)), now) for i in range(8)] == [False] * 6 + [True, False]
    for forged in (frame(3, 0.0, ts=1e12), frame(5, 0.0, ts=-5.0), frame(6, 0.0, ts=1e12)):
        pace.late(forged, now)  # a source clock that jumps or goes back moves the estimate at most to 1 s
    assert 0.001 <= pace.interval["a"] <= 1.0


def test_the_stage_takes_a_frame_that_waited_in_a_queue_as_behind(tmp_path):
    from stages.detect import DetectStage

    stage = DetectStage(_cfg(tmp_path, run_mode="live", budget=2, every=5))
    image = np.zeros((1080, 1920, 3), np.uint8)
    for i, waited in enumerate([0.0, 0.0, 0.0, 0.5]):  # the last one reached detect half a second after capture
        stage.process_batch([FrameMessage("a", i, i / 25, time.time() - waited, {"image": image})])
    (_, _, _, _, _, _, behind), = stage.status()["tiling"]
    assert behind == 0.25


# ---------------------------------------------------------------- the planner and motion
def test_replay_examines_every_tile_and_live_mode_keeps_to_the_budget(tmp_path):
    replay = TilePlanner(TilingConfig(), (512, 640), live=False)
    live = TilePlanner(TilingConfig(budget=3), (512, 640), live=True)
    assert len(replay.plan("a", (1080, 1920))) == 12 and len(live.plan("a", (1080, 1920))) <= 3
    assert replay.plan("a", (512, 640)) == [] and replay.plan("a", (720, 960)) == []  # auto: not large enough
    on = TilePlanner(TilingConfig(mode="on"), (512, 640), live=False)
    assert on.plan("a", (512, 640)) == []  # its one tile would be the whole frame, which the whole pass sees
    assert len(on.plan("a", (600, 800))) == 4
    assert TilePlanner(TilingConfig(mode="off"), (512, 640), live=False).plan("a", (2160, 3840)) == []


def test_a_stream_whose_frame_size_changes_gets_a_new_grid():
    planner = TilePlanner(TilingConfig(), (512, 640), live=False)
    assert len(planner.plan("a", (1080, 1920))) == 12
    assert len(planner.plan("a", (2160, 3840))) == 35
    assert planner.coverage() == [["a", 35, 35.0, 1.0, 0, 1.0, 0.0]]


def test_a_stream_whose_size_flips_keeps_each_sizes_schedule_and_examines_every_tile():
    planner = TilePlanner(TilingConfig(budget=3, every=5), (512, 640), live=True)
    seen = {1080: set(), 1088: set()}
    for frame in range(40):
        height = 1080 if frame % 2 else 1088
        seen[height] |= {i for i, _ in planner.plan("a", (height, 1920))}
    assert seen[1080] == seen[1088] == set(range(12))


def test_a_stream_whose_size_alternates_without_skipping_frames_is_not_behind():
    """Each size's schedule sees every other source frame, which is no skip: the stream keeps its
    allowance (before, every frame counted as behind and only due tiles were examined)."""
    planner = TilePlanner(TilingConfig(budget=3, every=5), (512, 640), live=True)
    for frame in range(60):
        planner.plan("a", (1080 if frame % 2 else 1088, 1920), frame_index=frame)
    schedules = [grid.schedule for grid in planner.grids["a"].values()]
    assert [sch.behind for sch in schedules] == [0, 0] and all(sch.allowance == 3 for sch in schedules)
    planner.plan("a", (1080, 1920), frame_index=70)  # the stream itself skipped frames: that one is behind
    assert planner.grid_of("a", (1080, 1920)).schedule.behind == 1


def test_a_due_tile_that_is_also_hot_is_counted_once():
    schedule = TileSchedule(12, 5, 3)
    schedule.saw([0, 5, 10])  # the three tiles due in the first frame are hot as well
    assert schedule.choose() == [0, 5, 10]


def test_motion_marks_the_tile_where_something_moved():
    planner = TilePlanner(TilingConfig(), (512, 640), live=True)
    regions = planner.grid("a", (1080, 1920)).regions
    meter = MotionMeter()
    frame = np.full((1080, 1920, 3), 120, np.uint8)
    assert meter.scores("a", frame, regions) == [0.0] * 12  # no previous frame
    moved = frame.copy()
    moved[900:912, 1700:1712] = 30  # a 12-px dark drone appears in the bottom-right tile only
    scores = meter.scores("a", moved, regions)
    assert scores[11] > TilingConfig().motion_threshold and max(scores[:8]) == 0.0


def test_tile_settings_are_checked_at_load(tmp_path):
    with pytest.raises(ConfigError, match=r"stages\.detect\.tiling\.overlap' must be at most half"):
        _cfg(tmp_path, tile_size=[256, 256], overlap=129)
    with pytest.raises(ConfigError, match=r"stages\.detect\.tiling\.tile_size' must be \[height, width\], each >= 32"):
        _cfg(tmp_path, tile_size=[8, 8], overlap=0)
    with pytest.raises(ConfigError, match=r"stages\.detect\.tiling\.mode' must be one of"):
        _cfg(tmp_path, mode="sometimes")
    with pytest.raises(ConfigError, match=r"stages\.detect\.tiling\.every' must be >= 1"):
        _cfg(tmp_path, every=0)
    for bad in (0, -0.5, 1.5, float("nan")):
        with pytest.raises(ConfigError, match=r"stages\.detect\.tiling\.min_scale'"):
            _cfg(tmp_path, min_scale=bad)


# ---------------------------------------------------------------- the detect stage
@pytest.fixture(scope="module")
def hd_frames():
    from pipeline.offline.data.synthetic import render_clip

    return list(render_clip(2, frames=2, size=(1920, 1080), n_drones=4, n_birds=0, background="sky"))


def _through(cfg, images):
    from stages.detect import DetectStage
    from stages.preprocess import PreprocessStage

    pre, det = PreprocessStage(cfg), DetectStage(cfg)
    msgs = [pre.process(FrameMessage("a", i, i / 25, time.time(), {"image": im}))[0] for i, im in enumerate(images)]
    return det, det.process_batch(msgs)


@pytest.mark.parametrize("min_scale,tiles", [(1.0, 12), (0.85, 6)])
def test_the_stage_gives_what_models_tiling_gives_on_each_frame(tmp_path, hd_frames, min_scale, tiles):
    from models.tiling import detect_tiled

    det, out = _through(_cfg(tmp_path, min_scale=min_scale), [im for im, _ in hd_frames])
    for msg, (image, _) in zip(out, hd_frames):
        expected = detect_tiled(det.detector, image, min_scale=min_scale)
        np.testing.assert_allclose(msg.detections[np.lexsort(msg.detections.T[:2])],
                                   expected[np.lexsort(expected.T[:2])], rtol=1e-4, atol=1e-2)
        assert len(expected) >= 4 and "tile_motion" not in msg.meta
    assert det.status() == {"tiling": [["a", tiles, float(tiles), 1.0, 1, 1.0, 0.0]], "tile_motion_mismatched": 0}


def test_live_frames_carry_motion_and_the_stage_examines_the_moving_tile_first(tmp_path):
    from stages.detect import DetectStage
    from stages.preprocess import PreprocessStage

    cfg = _cfg(tmp_path, run_mode="live", budget=1, every=100)  # after the first frames nothing is due
    still = np.full((1080, 1920, 3), 128, np.uint8)  # an empty sky: nothing found, no tile hot
    moved = still.copy()
    moved[900:912, 1700:1712] = 0  # something dark appears in the bottom-right tile (index 11)
    pre, det = PreprocessStage(cfg), DetectStage(cfg)
    chosen = []
    for i, image in enumerate([still] * 13 + [moved]):  # each tile is first due in frame 1 + i: all seen by 13
        msg = pre.process(FrameMessage("a", i, i / 25, time.time(), {"image": image}))[0]
        assert len(msg.meta["tile_motion"]) == 12
        assert "input" not in msg.buffers  # few frames get the whole-frame pass: detect letterboxes those
        chosen.append(det.planner.plan("a", (1080, 1920), msg.meta.pop("tile_motion")))
    assert [i for i, _ in chosen[-1]] == [11]  # the one tile the budget allows goes where something moved
    out, = det.process_batch([pre.process(FrameMessage("a", 14, 14 / 25, time.time(), {"image": moved}))[0]])
    assert out.detections.shape[1] == 6 and "input" not in out.buffers
    (stream, tiles, per_frame, _, _, whole, _), = det.status()["tiling"]
    # one region per frame, as budgeted: a tile, or the whole-frame pass in its turn (first due in frame 13)
    assert stream == "a" and tiles == 12 and per_frame + whole == 1.0 and whole > 0


def test_a_live_tiled_frame_given_the_whole_frame_pass_is_letterboxed_by_detect_as_preprocess_would(tmp_path):
    from stages.detect import DetectStage
    from stages.preprocess import PreprocessStage

    cfg = _cfg(tmp_path, run_mode="live", budget=1, every=5)
    pre, det = PreprocessStage(cfg), DetectStage(cfg)
    image = np.random.default_rng(1).integers(0, 255, (1080, 1920, 3), dtype=np.uint8)
    wholes = 0
    for i in range(5):  # the whole-frame pass comes at least once in 5 frames
        msg = pre.process(FrameMessage("a", i, i / 25, time.time(), {"image": image}))[0]
        assert "input" not in msg.buffers and "tile_motion" in msg.meta
        out, = det.process_batch([msg])
        if det.planner.grid_of("a", (1080, 1920)).schedule.whole_now:
            wholes += 1
            assert out.meta["ratio"] == 640 / 1920  # letterboxed here, by the one rule
    assert wholes >= 1
    small = pre.process(FrameMessage("a", 9, 9 / 25, time.time(), {"image": image[:512, :640]}))[0]
    assert small.buffers["input"].shape == (512, 640, 3)  # a frame not tiled still comes letterboxed


def test_a_motion_list_that_does_not_fit_the_grid_is_ignored_and_counted():
    planner = TilePlanner(TilingConfig(budget=3), (512, 640), live=True)
    assert len(planner.plan("a", (1080, 1920), [99.0] * 5)) <= 3
    assert planner.motion_mismatched == 1


def test_a_frame_that_would_need_too_many_tiles_gets_the_whole_frame_pass_alone(tmp_path):
    planner = TilePlanner(TilingConfig(), (512, 640), live=False)
    assert planner.plan("a", (1, 2_000_000)) == []  # a forged size: 3,473 tiles would stall the detector
    assert len(planner.plan("a", (2160, 3840))) == 35 and planner.plan("a", (4320, 7680)) == []


@pytest.mark.parametrize("motion", ["x", [1, "a"], [float("nan")], [-1.0], [True], list(range(5000))])
def test_a_bad_motion_list_is_refused_as_malformed(tmp_path, motion):
    from stages.detect import DetectStage

    stage = DetectStage(_cfg(tmp_path))
    msg = FrameMessage("a", 0, 0.0, 0.0, {"image": np.zeros((1080, 1920, 3), np.uint8)}, meta={"tile_motion": motion})
    assert "tile_motion" in stage.accept(msg)


# ---------------------------------------------------------------- end to end
@pytest.mark.slow
def test_replay_of_a_1080p_clip_finds_its_small_drones_only_with_tiling(tmp_path):
    from pipeline.offline.data.synthetic import make_clip

    clip = make_clip(tmp_path / "clip", seed=2, frames=6, size=(1920, 1080), fps=25, n_drones=4, n_birds=0,
                     background="sky")
    truth = json.loads(clip.coco.read_text())
    found = {mode: _recall(_replay(tmp_path / mode, clip.video, mode), truth) for mode in ("off", "auto")}
    assert found["auto"] >= 0.9 and found["off"] <= 0.3, found


def _replay(out, video, mode):
    cfg = {"sources": [{"id": "hd", "uri": str(video)}], "output_dir": str(out / "out"),
           "stages": {"detect": {"weights": "demo", "backend": "onnx", "tiling": {"mode": mode}}}, "consumers": []}
    out.mkdir(parents=True)
    (out / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(out / "cfg.yaml"), "--no-progress"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in (out / "out" / "hd" / "tracks.jsonl").read_text().splitlines()]


def _recall(rows, truth, iou=0.3) -> float:
    from tests.models.test_tiling import _matches

    by_frame = {r["frame_index"]: np.array(r["detections"], np.float32).reshape(-1, 6) for r in rows}
    images = {im["id"]: im for im in truth["images"]}
    hits = total = 0
    for ann in truth["annotations"]:
        x, y, w, h = ann["bbox"]
        frame = images[ann["image_id"]].get("frame_index", ann["image_id"])
        hits += int(_matches(by_frame[frame], np.array([[x, y, x + w, y + h]], np.float32))[0] > 0)
        total += 1
    return hits / total


def test_tiles_inside_an_ignore_zone_are_never_examined(tmp_path):
    from stages.tiling import planner_for

    sky_only = [[0, 0], [1920, 0], [1920, 1080], [0, 1080]]
    cfg = config_from_dict({"sources": [{"id": "a", "uri": "a.mp4", "zones": [
        {"kind": "ignore", "polygon": [[0, 500], [1920, 500], [1920, 1080], [0, 1080]]}]},
        {"id": "b", "uri": "b.mp4", "zones": [{"kind": "require", "polygon": sky_only}]}],
        "output_dir": str(tmp_path)}, check_files=False)
    planner = planner_for(cfg, (512, 640))
    regions = [r for _, r in planner.plan("a", (1080, 1920))]
    assert len(regions) == 8 and all(y1 <= 796 for _, _, _, y1 in regions)  # the bottom row lies in the zone
    assert len(planner.plan("b", (1080, 1920))) == 12  # a require zone hides nothing


def test_motion_of_a_slow_target_adds_up_over_the_lag_and_a_new_size_starts_over():
    from stages.tiling import MOTION_LAG

    planner = TilePlanner(TilingConfig(), (512, 640), live=True)
    regions = planner.grid("a", (1080, 1920)).regions
    meter = MotionMeter()
    scores = []
    for step in range(MOTION_LAG + 1):  # a dark 8-px target creeping 1 px per frame
        frame = np.full((1080, 1920, 3), 120, np.uint8)
        frame[900:908, 1700 + step:1708 + step] = 40
        scores.append(meter.scores("a", frame, regions)[11])
    assert scores[1] < scores[-1]  # one frame back the change is a 1-px sliver; MOTION_LAG back, more
    assert meter.scores("a", np.full((1088, 1920, 3), 120, np.uint8), regions) == [0.0] * 12
