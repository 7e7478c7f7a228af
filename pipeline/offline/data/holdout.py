"""Held-out parts of a folder of labeled clips that has no split manifest (a user's own camera).

    parts = hold_out(clips, test_share=0.3, seed=0)    # {"train": [...], "val": [...], "test": [...]}

Always by clip, never by frame: consecutive frames are nearly identical, so frames of one clip on both
sides would score memory, not detection. ``val`` chooses (early stop, best checkpoint) and ``test``
reports; they are different clips whenever there are three or more. With two clips there is no third
to report on: the held-out clip does both, and ``shared_holdout`` says so (the report must say it too).
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from pipeline.offline.data.dataset import DatasetError

VAL_SHARE = 0.15    # of the clips, held out to choose the checkpoint (at least one)


@dataclass
class HeldOut:
    train: list = field(default_factory=list)
    val: list = field(default_factory=list)
    test: list = field(default_factory=list)
    shared_holdout: bool = False       # val and test are the same clip(s): the test score is optimistic

    def names(self) -> dict[str, list[str]]:
        return {part: [clip.name for clip in getattr(self, part)] for part in ("train", "val", "test")}


def hold_out(clips: list, test_share: float = 0.3, seed: int = 0, test_given: bool = False) -> HeldOut:
    """Split ``clips`` by clip into train / val / test (shuffled with ``seed``, reproducible).
    ``test_given``: the test clips come from elsewhere (``--test-data``), so only val is held out here."""
    if not 0 < test_share < 1:
        raise DatasetError(f"the held-out share must be between 0 and 1, got {test_share}")
    shared = [name for name, count in Counter(clip.name for clip in clips).items() if count > 1]
    if shared:
        raise DatasetError(f"two clips share a name ({shared[0]}): clips must be told apart")
    order = sorted(clips, key=lambda clip: clip.name)
    random.Random(seed).shuffle(order)
    if len(order) < 2:
        raise DatasetError(f"{len(order)} labeled clip(s): at least 2 are needed, one to learn from and one held "
                           "out to judge it (split a long recording into clips, e.g. a folder per minute)")
    tests = 0 if test_given else min(len(order) - 2, max(1, round(len(order) * test_share)))
    if not test_given and len(order) == 2:
        return HeldOut(train=order[1:], val=order[:1], test=order[:1], shared_holdout=True)
    vals = min(len(order) - tests - 1, max(1, round(len(order) * VAL_SHARE)))
    return HeldOut(train=order[tests + vals:], val=order[tests:tests + vals], test=order[:tests])

