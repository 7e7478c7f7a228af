"""The pixel budget of tiled detection (stages.detect.tiling): which regions of a stream's frame the
detect stage examines, its tiles and the downscaled whole-frame pass alike.

Tiling multiplies the detector's cost by the number of tiles (12 at 1080p, 35 at 4K with 640x512
tiles), which 2 CPU cores cannot pay at 25 fps. So in live mode each frame gets at most ``budget``
regions, chosen in this order:

1. regions *due*: not examined for ``every`` source frames (always taken, so every tile and the
   whole frame are examined at least every ``every`` frames, whatever the budget says);
2. regions *hot*: a detection was seen in them within the last ``hold`` frames (a tile holding a
   tracked target; the whole frame while it shows an object that no tile holds whole). Up to ``budget`` of them are taken even when due regions filled the
   budget (the ``allowance`` below, while the stage keeps up), so a frame costs at most the due
   regions plus the budget, and while the stage keeps up a tracked drone is never skipped for a
   round-robin turn;
3. tiles showing motion (the preprocess stage's per-tile motion score above ``motion_threshold``);
4. the rest, longest unexamined first.

The whole-frame pass is scheduled like a tile because it is one more model input: measured at 1080p25
on 2 cores (docs/benchmarks.md), taking it every frame on top of the due tiles doubled the live p99
latency, while objects are also seen in the tiles (those larger than a tile cut by its borders, and
merged).

Frames here are the source's frames (``frame_index``), not the frames the detect stage examines: in
live mode it skips stale ones, and a tile due every 5 frames must not become a tile due every 14 when
the stage falls behind. So a frame examined after skipped ones finds its regions that much older.

The budget follows the load: it is a ceiling (``allowance``, from 0 to ``budget``) that rises by one
after ``every`` frames in a row examined in time, and halves after one that was not: frames were
skipped before it (the stage, or one upstream of it, fell behind), or it waited in a queue (it
reached the stage half a frame interval later than the fastest recent frame: stages.tiling.FramePace).
With no allowance a frame may get no region at all (none due). So on a machine
that keeps up, hot and moving tiles are examined every frame; on one that does not, only the due
regions are, and the live latency stays bounded instead of growing with each tile a drone makes hot.
Replay mode examines every region of every frame (``budget`` 0 means the same in live mode). A stream
whose frame size alternates has one schedule per size, each seeing every other frame: whether the
stream skipped frames is the planner's to say (``choose(skipped=...)``), so that is not taken for
falling behind.
"""
from __future__ import annotations

import numpy as np

MAX_STEP = 1_000_000  # source frames one step may age the tiles by (11 hours at 25 fps)


class TileSchedule:
    """Per stream: ages and heat of its regions (its tiles, then the whole-frame pass where there is
    one: index ``tile_count``), and what was examined (for the coverage report)."""

    def __init__(self, tile_count: int, every: int, budget: int, hold: int = 10, motion_threshold: float = 8.0,
                 whole: bool = False):
        self.tile_count, self.every, self.budget, self.hold = tile_count, every, budget, hold
        self.motion_threshold = motion_threshold
        self.slots = tile_count + int(whole)  # the regions scheduled: the tiles, then the whole frame
        # source frames since last examined, staggered so the first frames share the regions out
        # instead of examining all of them at once (region i is first due in frame 1 + i % every)
        self.age = every - 1 - np.arange(self.slots, dtype=np.int64) % every
        self.hot = np.zeros(self.slots, dtype=np.int64)  # source frames left during which a region counts as hot
        self.frames = 0
        self.examined = np.zeros(self.slots, dtype=np.int64)  # per region, frames it was examined in
        self.longest_gap = 0  # the most source frames any region went unexamined (the report's "every")
        self.last_index: int | None = None  # the source frame_index examined last
        self.allowance = budget  # the budget while the stage keeps up (see the module docstring)
        self.kept_up = 0  # frames examined in a row, each in time
        self.behind = 0  # frames that came late or after skipped ones
        self.whole_now = whole  # whether the frame chosen last gets the whole-frame pass

    def choose(self, motion=None, frame_index: int | None = None, late: bool = False,
               skipped: bool | None = None) -> list[int]:
        """Tile indices to examine in source frame ``frame_index`` (ascending; ``whole_now`` says
        whether the whole-frame pass runs too); without an index, the frame right after the last.
        ``late``: the frame waited behind others before the stage took it. ``skipped``: whether the
        stream skipped frames before this one, where the caller knows better than this schedule's
        own indices (a stream whose frames alternate between sizes feeds each size's schedule every
        other frame, which is no skip)."""
        step = self._advance(frame_index)
        self.age += step
        self.hot = np.maximum(self.hot - step, 0)  # (before ranking: heat older than `hold` frames is gone)
        self.frames += 1
        if self.budget <= 0 or self.budget >= self.slots:
            chosen = np.arange(self.slots)
        else:
            self._follow_load(late or (step > 1 if skipped is None else skipped))
            chosen = self._within_budget(motion)
        seen_before = chosen[self.examined[chosen] > 0]
        self.longest_gap = max(self.longest_gap, int(self.age[seen_before].max(initial=0)))
        self.age[chosen] = 0
        self.examined[chosen] += 1
        self.whole_now = bool(self.slots > self.tile_count and (chosen == self.tile_count).any())
        return sorted(int(i) for i in chosen if i < self.tile_count)

    def _within_budget(self, motion) -> np.ndarray:
        due = self.age >= self.every
        moving = np.zeros(self.slots, dtype=bool)
        if motion is not None and len(motion) == self.tile_count:
            moving[:self.tile_count] = np.asarray(motion, dtype=np.float64) > self.motion_threshold
        # lexicographic priority: due, hot, moving, then age (older first); ties by index
        rank = np.lexsort((np.arange(self.slots), -self.age, ~moving, self.hot == 0, ~due))
        hot = int(((self.hot > 0) & ~due).sum())  # hot regions not already taken as due
        take = max(self.allowance, int(due.sum()) + min(hot, self.allowance))
        return rank[:take]

    def _follow_load(self, behind: bool) -> None:
        """Additive increase, multiplicative decrease (as TCP finds its rate): one more region after
        ``every`` frames in a row examined in time, half as many after one that was not."""
        if behind:
            self.behind += 1
            self.allowance, self.kept_up = self.allowance // 2, 0
            return
        self.kept_up += 1
        if self.kept_up >= self.every:
            self.allowance, self.kept_up = min(self.budget, self.allowance + 1), 0

    def _advance(self, frame_index: int | None) -> int:
        """Source frames since the last examined one: 1 without an index, and where the index went back
        (a restarted source); at most MAX_STEP (a forged index must not overflow the ages)."""
        if frame_index is None or self.last_index is None:
            step = 1
        else:
            step = min(max(int(frame_index) - self.last_index, 1), MAX_STEP)
        self.last_index = None if frame_index is None else int(frame_index)
        return step

    def saw(self, tile_indices, whole: bool = False) -> None:
        """Tiles where this frame found something, and whether the whole-frame pass is the one to see
        it (an object no tile holds whole): hot for the next ``hold`` source frames."""
        heat = self.hold + 1  # counted down as the next frame is chosen: hot in the next `hold` frames
        for i in tile_indices:
            if 0 <= i < self.tile_count:
                self.hot[i] = heat
        if whole and self.slots > self.tile_count:
            self.hot[self.tile_count] = heat

    def coverage(self) -> dict:
        """What share of the frame was examined how often, for the status report."""
        frames, tiles = max(self.frames, 1), self.examined[:self.tile_count]
        return {"tiles": self.tile_count, "tiles_per_frame": round(float(tiles.sum()) / frames, 2),
                "share_per_frame": round(float(tiles.sum()) / (frames * max(self.tile_count, 1)), 3),
                "longest_gap": self.longest_gap,
                "whole_per_frame": round(float(self.examined[self.tile_count:].sum()) / frames, 2),
                "behind_share": round(self.behind / frames, 3)}
