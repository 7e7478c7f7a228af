"""Tiled detection in the detect stage: its config section (``stages.detect.tiling``) and the planner
that says, per frame, which tiles of a stream to examine.

The tiles are cut from the frame the detect stage already holds (every frame travels whole down the
frame path for the annotation and the recorder): at the model's own scale a tile is a slice, so no
resampling is paid for it, and only model-sized inputs reach the network. The preprocess stage does
the costly parts: the downscaled whole-frame pass (its usual letterbox) and, in live mode, a motion
score per tile (``meta["tile_motion"]``) for the schedule (stages.tile_schedule). The geometry and the
merge rule are models.tiling's, shared with the offline eval and scripts/bench_tiling.py.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

import cv2
import numpy as np

from models.tiling import (DEFAULT_AUTO_FACTOR, DEFAULT_MERGE_IOS, DEFAULT_MIN_SCALE, DEFAULT_MODE, DEFAULT_OVERLAP,
                           MAX_TILES_PER_FRAME, TILING_MODES, frame_tiles, held_by, tile_count, tile_ratio,
                           tile_size_for, wants_tiles)
from pipeline.runtime.config import ConfigError
from pipeline.runtime.messages import FrameMessage
from pipeline.runtime.schema import setting
from pipeline.runtime.zones import Zones
from stages.tile_schedule import TileSchedule

MOTION_SCALE = 4  # motion is measured on the frame shrunk this many times (cheap, and noise averages out)
MOTION_LAG = 5  # ... against the frame this many frames back (slow targets, frames dropped before detect)
MIN_TILE_SIDE = 32  # px: smaller tiles would make thousands of model calls per frame
GRIDS_PER_STREAM = 4  # frame sizes whose grid and schedule a stream keeps
MIN_INTERVAL_S, MAX_INTERVAL_S = 0.001, 1.0  # frame intervals FramePace believes (1000 fps .. 1 fps)
LATE_SHARE = 0.5  # a frame this share of an interval later than the fastest recent one waited behind another
PACE_WINDOW = 500  # frames over which FramePace finds the shortest capture-to-detect delay (20 s at 25 fps)


@dataclass
class TilingConfig:
    # off | on | auto: tile a source larger than the model input by more than auto_factor along a side
    mode: str = setting(DEFAULT_MODE, choices=TILING_MODES)
    auto_factor: float = setting(DEFAULT_AUTO_FACTOR, gt=0)
    tile_size: list[int] | None = None  # [h, w] in source pixels; default the model input (scale 1)
    # without tile_size: tiles may be shrunk down to this scale where that covers a frame in fewer of them
    # (1080p: 6 tiles at 0.895 instead of 12 at 1; models.tiling.fitted_tile_size); 1: never shrunk
    min_scale: float = setting(DEFAULT_MIN_SCALE, gt=0, le=1)
    overlap: int = setting(DEFAULT_OVERLAP, ge=0)  # pixels shared by neighbours: an object this large is whole in one
    # also one downscaled pass over the whole frame, for objects larger than a tile (in live mode
    # scheduled like a tile: stages.tile_schedule)
    whole_frame: bool = True
    merge_ios: float = setting(DEFAULT_MERGE_IOS, gt=0, le=1)  # models.tiling.merge: overlap that makes two boxes one
    # live mode: regions (tiles and the whole-frame pass) per frame and stream (0: all) while the stage
    # keeps up; fewer, down to the due ones alone, while it falls behind (stages.tile_schedule)
    budget: int = setting(3, ge=0)
    every: int = setting(5, ge=1)  # live mode: each region is examined at least every this many source frames
    hold_frames: int = setting(10, ge=0)  # a tile with a detection counts as hot for this many source frames
    motion_threshold: float = setting(8.0, ge=0)  # grey-level change (frame shrunk 4x) that marks a tile moving

    def validate(self, where: str) -> None:
        if self.tile_size is not None:
            if len(self.tile_size) != 2 or min(self.tile_size) < MIN_TILE_SIDE:
                raise ConfigError(f"config key '{where}.tile_size' must be [height, width], each >= {MIN_TILE_SIDE}, "
                                  f"got {self.tile_size}")
            if self.overlap > min(self.tile_size) // 2:
                raise ConfigError(f"config key '{where}.overlap' must be at most half the tile's shorter side "
                                  f"{self.tile_size}, got {self.overlap}")


def planner_for(cfg, input_hw) -> TilePlanner:
    """The run's planner: its tiling settings, its mode, and its sources' zones (a tile an ignore zone
    covers entirely is never examined; a detection there does not make its tile hot)."""
    detect = cfg.stages.get("detect")  # absent where the frame path has no detect stage: nothing is tiled
    zones = {src.id: Zones(src.zones) for src in cfg.sources if src.zones}
    return TilePlanner(detect.tiling if detect is not None else TilingConfig(mode="off"), input_hw, cfg.live, zones)


@dataclass
class StreamGrid:
    regions: list  # the tiles examined at all: the frame's tiles less those an ignore zone covers
    schedule: TileSchedule
    scale: float  # the tiles' letterbox ratio (1: the source's own scale)


class TilePlanner:
    """Per stream: its tile grid and schedule per frame size (a few sizes kept, so a stream whose size
    flips keeps its schedule's state); which tiles each frame examines."""

    def __init__(self, settings: TilingConfig, input_hw, live: bool, zones: dict | None = None):
        self.settings, self.input_hw, self.live = settings, tuple(input_hw), live
        self.zones = zones or {}  # stream id -> pipeline.runtime.zones.Zones
        self.grids: dict[str, OrderedDict] = {}  # stream id -> frame (h, w) -> StreamGrid, last used last
        self.current: dict[str, tuple] = {}  # stream id -> the frame size it had last
        self.last_index: dict[str, int] = {}  # stream id -> the source frame index planned last
        self.motion_mismatched = 0  # tile_motion lists whose length did not match the grid (ignored)

    def tiled(self, image_hw) -> bool:
        """Whether a frame of this size is examined in tiles: as the mode says, unless it would need
        more than MAX_TILES_PER_FRAME (then the whole-frame pass alone, as models.tiling does)."""
        return (wants_tiles(self.settings.mode, image_hw, self.input_hw, self.settings.auto_factor)
                and tile_count(image_hw, self.tile_size(image_hw), self.settings.overlap) <= MAX_TILES_PER_FRAME)

    def tile_size(self, image_hw) -> tuple[int, int]:
        """The tiles a frame of this size is cut in, source pixels (models.tiling.tile_size_for)."""
        s = self.settings
        return tile_size_for(image_hw, self.input_hw, s.tile_size, s.overlap, s.min_scale)

    def grid(self, stream_id: str, image_hw) -> StreamGrid:
        sizes = self.grids.setdefault(stream_id, OrderedDict())
        size = self.current[stream_id] = tuple(int(v) for v in image_hw[:2])
        if size not in sizes:
            zones, s, tile_hw = self.zones.get(stream_id), self.settings, self.tile_size(size)
            regions = [r for r in frame_tiles(size, tile_hw, s.overlap) if zones is None or not zones.covers(r)]
            budget = s.budget if self.live else 0  # replay examines every tile of every frame
            schedule = TileSchedule(len(regions), s.every, budget, s.hold_frames, s.motion_threshold, s.whole_frame)
            sizes[size] = StreamGrid(regions, schedule, tile_ratio(tile_hw, self.input_hw))
            while len(sizes) > GRIDS_PER_STREAM:
                sizes.popitem(last=False)
        sizes.move_to_end(size)
        return sizes[size]

    def plan(self, stream_id: str, image_hw, motion=None, frame_index: int | None = None,
             late: bool = False) -> list[tuple[int, tuple]]:
        """(tile index, region) of the tiles to examine in source frame ``frame_index``; [] for a
        frame not tiled. ``late``: it waited behind other frames (FramePace). Whether the whole-frame
        pass runs too: ``grid_of(...).schedule.whole_now`` (a frame not tiled, with no grid, always)."""
        if not self.tiled(image_hw):
            return []
        grid = self.grid(stream_id, image_hw)
        if motion is not None and len(motion) != len(grid.regions):
            self.motion_mismatched += 1  # preprocess tiled with other settings, or a forged list
            motion = None
        return [(i, grid.regions[i]) for i in grid.schedule.choose(motion, frame_index, late,
                                                                   self._skipped(stream_id, frame_index))]

    def _skipped(self, stream_id: str, frame_index: int | None) -> bool | None:
        """Whether the stream (not one size's schedule) skipped frames before this one; None unknown."""
        last = self.last_index.get(stream_id)
        if frame_index is None:
            self.last_index.pop(stream_id, None)
            return None
        self.last_index[stream_id] = int(frame_index)
        return None if last is None else int(frame_index) - last > 1

    def current_grid(self, stream_id: str) -> StreamGrid | None:
        """The grid of the stream's last planned frame size."""
        size = self.current.get(stream_id)
        return self.grids[stream_id].get(size) if size is not None else None

    def grid_of(self, stream_id: str, image_hw) -> StreamGrid | None:
        """The grid a frame of this size was planned with (None where it was not tiled)."""
        return self.grids.get(stream_id, {}).get(tuple(int(v) for v in image_hw[:2]))

    def saw(self, stream_id: str, grid: StreamGrid, dets: np.ndarray) -> None:
        """A frame's merged detections (frame pixels): the tiles of the grid it was planned with that
        hold the centre of one the stream's ignore zones keep turn hot (a steady false box in an
        ignored corner heats nothing)."""
        if not len(dets):
            return
        if stream_id in self.zones:
            dets = dets[self.zones[stream_id].keep_mask(dets)]
        cx, cy = (dets[:, 0] + dets[:, 2]) / 2, (dets[:, 1] + dets[:, 3]) / 2
        grid.schedule.saw([i for i, (x0, y0, x1, y1) in enumerate(grid.regions)
                           if np.any((cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1))],
                          whole=not held_by(dets, grid.regions).all())  # an object no tile holds whole

    def coverage(self) -> list[list]:
        """[stream, tiles, tiles examined per frame, share of tile area per frame, longest gap in source
        frames, whole-frame passes per frame, share of frames that came behind] of each stream's current grid."""
        rows = []
        for stream_id in sorted(self.current):
            grid = self.current_grid(stream_id)
            if grid is not None:
                c = grid.schedule.coverage()
                rows.append([stream_id, c["tiles"], c["tiles_per_frame"], c["share_per_frame"], c["longest_gap"],
                             c["whole_per_frame"], c["behind_share"]])
        return rows


class FramePace:
    """Detect side, per stream: the source's frame interval (from its timestamps), and whether a frame
    reached the stage late, i.e. waited behind another: the load signal of the tile budget
    (stages.tile_schedule). Late means more than LATE_SHARE of an interval beyond the shortest delay
    from capture to detect seen over the last PACE_WINDOW frames: that floor is the cost of decoding,
    preprocessing and moving a frame, which a stage cannot shed, and a constant offset between the
    capture host's clock and this one's cancels out of it."""

    SMOOTHING = 0.1  # weight of a new interval in the running estimate (jitter of a camera's clock)

    def __init__(self):
        self.last: dict[str, tuple[int, float]] = {}  # stream id -> (frame_index, source_ts) seen last
        self.interval: dict[str, float] = {}  # stream id -> seconds between its frames
        self.delays: dict[str, deque] = {}  # stream id -> its last PACE_WINDOW capture-to-detect delays

    def late(self, msg: FrameMessage, now: float) -> bool:
        sid = msg.stream_id
        previous, self.last[sid] = self.last.get(sid), (msg.frame_index, msg.source_ts)
        if previous is not None and msg.frame_index > previous[0] and msg.source_ts > previous[1]:
            seen = min(max((msg.source_ts - previous[1]) / (msg.frame_index - previous[0]), MIN_INTERVAL_S),
                       MAX_INTERVAL_S)
            old = self.interval.get(sid, seen)
            self.interval[sid] = old + self.SMOOTHING * (seen - old)
        delays = self.delays.setdefault(sid, deque(maxlen=PACE_WINDOW))
        delays.append(now - msg.capture_wall)
        interval = self.interval.get(sid)
        return interval is not None and delays[-1] - min(delays) > LATE_SHARE * interval


class MotionMeter:
    """Preprocess side, live mode: per tile, the strongest grey-level change (frame shrunk
    MOTION_SCALE times) against the stream's frame MOTION_LAG frames back: a slow drone moves a pixel
    or less per frame, and the detect stage drops stale frames, so the frame just before would miss
    both; a frame size change starts over."""

    def __init__(self):
        self.history: dict[str, deque] = {}  # stream id -> its last MOTION_LAG small grey frames

    def scores(self, stream_id: str, image: np.ndarray, regions) -> list[float]:
        small = cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY),
                           (max(1, image.shape[1] // MOTION_SCALE), max(1, image.shape[0] // MOTION_SCALE)),
                           interpolation=cv2.INTER_AREA)
        history = self.history.setdefault(stream_id, deque(maxlen=MOTION_LAG))
        if history and history[0].shape != small.shape:
            history.clear()
        reference = history[0] if history else None
        history.append(small)
        if reference is None:
            return [0.0] * len(regions)
        change = cv2.absdiff(small, reference)
        k = MOTION_SCALE
        # the strongest local change in a tile, not its mean: a 10-px drone is a speck in a 640x512 tile
        return [float(change[y0 // k:max(y1 // k, y0 // k + 1), x0 // k:max(x1 // k, x0 // k + 1)].max())
                for x0, y0, x1, y1 in regions]
