"""The pixel budget of tiled detection (stages.detect.tiling): which tiles of a stream the detect stage
examines in each frame.

Tiling multiplies the detector's cost by the number of tiles (12 at 1080p, 35 at 4K with 640x512
tiles), which 2 CPU cores cannot pay at 25 fps. So in live mode each frame gets the whole-frame pass
plus at most ``budget`` tiles, chosen in this order:

1. tiles *due*: not examined for ``every`` frames (always taken, so every tile is examined at least
   every ``every`` frames, whatever the budget says);
2. tiles *hot*: a detection was seen in them within the last ``hold`` frames (a target being tracked
   is looked at every frame; up to ``budget`` of them are taken even when due tiles filled the budget,
   so a frame costs at most the due tiles plus the budget, and a tracked drone is never skipped for a
   round-robin turn);
3. tiles showing motion (the preprocess stage's per-tile motion score above ``motion_threshold``);
4. the rest, longest unexamined first.

Frames here are the frames the detect stage examines: in live mode it skips stale ones, so at 1080p25
on 2 cores (~9 examined per second) "every 5 frames" is about every 14 source frames
(docs/benchmarks.md, "Live 1080p25"). Replay mode examines every tile of every frame (``budget`` 0
means the same in live mode).
"""
from __future__ import annotations

import numpy as np


class TileSchedule:
    """Per stream: ages and heat of its tiles, and what was examined (for the coverage report)."""

    def __init__(self, tile_count: int, every: int, budget: int, hold: int = 10, motion_threshold: float = 8.0):
        self.tile_count, self.every, self.budget, self.hold = tile_count, every, budget, hold
        self.motion_threshold = motion_threshold
        # frames since last examined, staggered so the first frames share the tiles out instead of
        # examining all of them at once (tile i is first due in frame 1 + i % every)
        self.age = every - 1 - np.arange(tile_count, dtype=np.int64) % every
        self.hot = np.zeros(tile_count, dtype=np.int64)  # frames left during which a tile counts as hot
        self.frames = 0
        self.examined = np.zeros(tile_count, dtype=np.int64)  # per tile, frames it was examined in
        self.longest_gap = 0  # the most frames any tile went unexamined (the report's "every")

    def choose(self, motion=None) -> list[int]:
        """Tile indices to examine in the next frame (ascending)."""
        self.age += 1
        self.frames += 1
        if self.budget <= 0 or self.budget >= self.tile_count:
            chosen = np.arange(self.tile_count)
        else:
            chosen = self._within_budget(motion)
        seen_before = chosen[self.examined[chosen] > 0]
        self.longest_gap = max(self.longest_gap, int(self.age[seen_before].max(initial=0)))
        self.age[chosen] = 0
        self.examined[chosen] += 1
        self.hot = np.maximum(self.hot - 1, 0)
        return sorted(int(i) for i in chosen)

    def _within_budget(self, motion) -> np.ndarray:
        due = self.age >= self.every
        moving = np.zeros(self.tile_count, dtype=bool)
        if motion is not None and len(motion) == self.tile_count:
            moving = np.asarray(motion, dtype=np.float64) > self.motion_threshold
        # lexicographic priority: due, hot, moving, then age (older first); ties by index
        rank = np.lexsort((np.arange(self.tile_count), -self.age, ~moving, self.hot == 0, ~due))
        hot = int(((self.hot > 0) & ~due).sum())  # hot tiles not already taken as due
        take = max(self.budget, int(due.sum()) + min(hot, self.budget))
        return rank[:take]

    def saw(self, tile_indices) -> None:
        """Tiles where this frame found something: hot for the next ``hold`` frames."""
        for i in tile_indices:
            if 0 <= i < self.tile_count:
                self.hot[i] = self.hold

    def coverage(self) -> dict:
        """What share of the frame was examined how often, for the status report."""
        frames = max(self.frames, 1)
        return {"tiles": self.tile_count, "tiles_per_frame": round(float(self.examined.sum()) / frames, 2),
                "share_per_frame": round(float(self.examined.sum()) / (frames * max(self.tile_count, 1)), 3),
                "longest_gap": self.longest_gap}
