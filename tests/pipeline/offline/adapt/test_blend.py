"""``adapt``'s blend choice: forgetting first, then the user's val clips, ties to the blend that keeps
more of the start model; ``--blend`` parsing."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.offline.adapt.blend import AUTO_SHARES, Candidate, choose, parse_shares

BEFORE = {"map50_95": 0.240}


def candidate(share: float, user_ap50: float | None, base_map: float | None) -> Candidate:
    return Candidate(share, Path(f"blend-{share:g}.pt"), {"agnostic_map50": user_ap50, "map50_95": 0.3},
                     None if base_map is None else {"map50_95": base_map})


def test_the_best_blend_within_the_forgetting_limit_wins():
    scored = [candidate(1.0, 0.95, 0.220), candidate(0.75, 0.93, 0.228), candidate(0.5, 0.90, 0.235),
              candidate(0.25, 0.85, 0.239)]
    chosen, why = choose(scored, BEFORE, max_forget=1.0)
    assert chosen.share == 0.5 and "forgets at most 1 points" in why     # 0.75 and 1 forget 1.2 and 2.0


def test_level_val_scores_go_to_the_smaller_share():
    """Saturated val clips (AP50 1.0 for every blend) cannot tell blends apart: keep more of the start."""
    scored = [candidate(1.0, 1.0, 0.236), candidate(0.75, 1.0, 0.237), candidate(0.5, 0.995, 0.238),
              candidate(0.25, 0.97, 0.239)]
    assert choose(scored, BEFORE, max_forget=1.0)[0].share == 0.5


def test_when_every_blend_forgets_too_much_the_least_forgetting_one_is_chosen_and_said():
    scored = [candidate(1.0, 0.95, 0.200), candidate(0.5, 0.90, 0.215), candidate(0.25, 0.80, 0.210)]
    chosen, why = choose(scored, BEFORE, max_forget=1.0)
    assert chosen.share == 0.5 and why.startswith("every blend forgets more than 1 points")


def test_without_a_base_check_the_val_clips_alone_decide():
    scored = [candidate(1.0, 0.95, None), candidate(0.75, 0.945, None), candidate(0.5, 0.80, None)]
    chosen, why = choose(scored, None, max_forget=1.0)
    assert chosen.share == 0.75 and "no base check" in why


def test_val_clips_without_labeled_objects_do_not_crash_the_choice():
    scored = [candidate(1.0, None, 0.239), candidate(0.5, None, 0.239)]
    assert choose(scored, BEFORE, max_forget=1.0)[0].share == 0.5


@pytest.mark.parametrize("value, shares", [("auto", AUTO_SHARES), ("1", (1.0,)), ("0.5,1", (1.0, 0.5)),
                                           ("0.3, 0.3 ,0.6", (0.6, 0.3))])
def test_blend_values(value, shares):
    assert parse_shares(value) == shares


@pytest.mark.parametrize("value", ["", "0", "1.5", "half", "0.5,-1"])
def test_bad_blend_values_are_refused(value):
    with pytest.raises(ValueError, match="--blend"):
        parse_shares(value)


def test_bad_blend_options_are_one_line_errors(tmp_path):
    from pipeline.offline.adapt.settings import AdaptSettings
    from pipeline.offline.train.settings import TrainError

    with pytest.raises(TrainError, match="--blend 'x'"):
        AdaptSettings(data=tmp_path, blend="x")
    with pytest.raises(TrainError, match="--max-forget must be >= 0"):
        AdaptSettings(data=tmp_path, max_forget=-1)
