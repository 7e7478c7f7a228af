"""pipeline.offline.data.holdout: a folder of clips without a split manifest, held out by clip."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.offline.data.dataset import Clip, DatasetError
from pipeline.offline.data.holdout import hold_out


def clips(count: int) -> list[Clip]:
    return [Clip(f"cam_{i:02d}", "V", "drone", Path(f"/x/{i}"), Path(f"/x/{i}.txt")) for i in range(count)]


@pytest.mark.parametrize("count", [3, 4, 7, 10, 25])
def test_every_clip_lands_in_exactly_one_part_and_each_part_has_one(count):
    parts = hold_out(clips(count), test_share=0.3)
    names = parts.names()
    together = names["train"] + names["val"] + names["test"]
    assert sorted(together) == [c.name for c in clips(count)]
    assert all(names[part] for part in ("train", "val", "test"))
    assert not parts.shared_holdout
    assert len(names["test"]) == min(count - 2, max(1, round(count * 0.3)))


def test_the_split_is_reproducible_and_the_seed_changes_it():
    first, again = hold_out(clips(10), seed=0).names(), hold_out(list(reversed(clips(10))), seed=0).names()
    assert first == again          # the input order does not matter, the seed does
    assert hold_out(clips(10), seed=1).names() != first


def test_two_clips_share_the_held_out_one_and_say_so():
    parts = hold_out(clips(2))
    assert parts.shared_holdout and parts.val == parts.test and len(parts.train) == 1


def test_given_test_clips_hold_out_only_val():
    parts = hold_out(clips(10), test_given=True)
    assert parts.test == [] and len(parts.val) == 2 and len(parts.train) == 8


@pytest.mark.parametrize("bad, message", [(clips(1), "at least 2"), (clips(2) + clips(1), "share a name")])
def test_unusable_folders_are_one_line(bad, message):
    with pytest.raises(DatasetError, match=message):
        hold_out(bad)
