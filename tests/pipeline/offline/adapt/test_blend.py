"""``adapt``'s blend choice: forgetting first, then the user's val clips, ties to the blend that keeps
more of the start (to the fine-tune when forgetting is not measured); ``--blend`` parsing; the run's
blend step scores each blend once and ships the chosen one."""
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
    choice = choose(scored, BEFORE, max_forget=1.0)
    assert choice.candidate.share == 0.5 and choice.within_limit    # 0.75 and 1 lose 1.2 and 2.0 points
    assert "loses at most 1 point(s)" in choice.why and "90.0" in choice.why


def test_a_blend_losing_exactly_the_limit_is_within_it():
    scored = [candidate(1.0, 0.95, 0.2432 - 0.01), candidate(0.5, 0.80, 0.2432)]
    assert choose(scored, {"map50_95": 0.2432}, max_forget=1.0).candidate.share == 1.0


def test_level_val_scores_go_to_the_smaller_share_when_forgetting_is_measured():
    """Saturated val clips (AP50 1.0 for every blend) cannot tell blends apart: keep more of the start."""
    scored = [candidate(1.0, 1.0, 0.236), candidate(0.75, 1.0, 0.237), candidate(0.5, 0.995, 0.238),
              candidate(0.25, 0.97, 0.239)]
    assert choose(scored, BEFORE, max_forget=1.0).candidate.share == 0.5


def test_when_every_blend_forgets_too_much_the_least_forgetting_one_is_chosen_and_said():
    scored = [candidate(1.0, 0.95, 0.200), candidate(0.5, 0.90, 0.215), candidate(0.25, 0.80, 0.210)]
    choice = choose(scored, BEFORE, max_forget=1.0)
    assert choice.candidate.share == 0.5 and not choice.within_limit
    assert choice.why.startswith("every blend loses more than 1 point(s)")


def test_without_a_base_check_level_val_scores_go_to_the_larger_share():
    """Nothing measured argues for keeping less of the fine-tune."""
    scored = [candidate(1.0, 0.95, None), candidate(0.75, 0.945, None), candidate(0.5, 0.80, None)]
    choice = choose(scored, None, max_forget=1.0)
    assert choice.candidate.share == 1.0 and "forgetting not measured" in choice.why
    scored = [candidate(1.0, 0.90, None), candidate(0.75, 0.95, None), candidate(0.5, 0.945, None)]
    assert choose(scored, None, max_forget=1.0).candidate.share == 0.75


def test_val_clips_without_labeled_objects_say_so():
    scored = [candidate(1.0, None, 0.239), candidate(0.5, None, 0.239)]
    choice = choose(scored, BEFORE, max_forget=1.0)
    assert choice.candidate.share == 0.5 and "could not help choose" in choice.why and "-100" not in choice.why


@pytest.mark.parametrize("value, shares", [("auto", AUTO_SHARES), ("1", (1.0,)), ("0.5,1", (1.0, 0.5)),
                                           ("0.3, 0.3 ,0.6", (0.6, 0.3)), ("0.35", (0.35,))])
def test_blend_values(value, shares):
    assert parse_shares(value) == shares


@pytest.mark.parametrize("value", ["", "0", "1.5", "half", "0.5,-1", "0.1234561,0.1234562", "nan"])
def test_bad_blend_values_are_refused(value):
    with pytest.raises(ValueError, match="--blend"):
        parse_shares(value)


def test_bad_blend_options_are_one_line_errors(tmp_path):
    from pipeline.offline.adapt.settings import AdaptSettings
    from pipeline.offline.train.settings import TrainError

    with pytest.raises(TrainError, match="--blend 'x'"):
        AdaptSettings(data=tmp_path, blend="x")
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(TrainError, match="--max-forget must be a number >= 0"):
            AdaptSettings(data=tmp_path, max_forget=bad)


def test_start_weights_inside_the_output_folder_are_refused(tmp_path):
    """adapt writes adapted.pt and blend-*.pt into --out: a start model there would be overwritten mid-run."""
    import shutil

    from models import DEFAULT_WEIGHTS
    from pipeline.offline.adapt.settings import AdaptSettings
    from pipeline.offline.train.settings import TrainError

    (tmp_path / "run").mkdir()
    start = shutil.copyfile(DEFAULT_WEIGHTS, tmp_path / "run" / "adapted.pt")
    with pytest.raises(TrainError, match="lies inside --out"):
        AdaptSettings(data=tmp_path, weights=start, out=tmp_path / "run")


def test_the_blend_step_scores_each_blend_once_and_ships_the_chosen_one(tmp_path, monkeypatch):
    """With a base check: the start and every blend scored once on each part, in folders of their own;
    the table's base val scores are the chosen blend's; adapted.pt is that blend's file."""
    import torch

    from models import build_model, save_checkpoint
    from pipeline.offline.adapt import run
    from pipeline.offline.adapt.settings import AdaptSettings
    from pipeline.offline.data.holdout import HeldOut

    torch.manual_seed(0)
    start = save_checkpoint(tmp_path / "start.pt", build_model("yolox-nano", 4), name="yolox-nano",
                            input_size=(64, 64), class_names=["drone", "bird", "airplane", "helicopter"])
    out = tmp_path / "run"
    settings = AdaptSettings(data=tmp_path, weights=start, out=out)
    (out / "train").mkdir(parents=True)
    with torch.no_grad():
        tuned_model = build_model("yolox-nano", 4)
    save_checkpoint(out / "train" / "best.pt", tuned_model, name="yolox-nano", input_size=(64, 64),
                    class_names=["drone", "bird", "airplane", "helicopter"])
    base_by_share = {"start": 0.240, "best": 0.220, "blend-0.75": 0.232, "blend-0.5": 0.236, "blend-0.25": 0.239}
    user_by_share = {"start": 0.70, "best": 0.95, "blend-0.75": 0.94, "blend-0.5": 0.90, "blend-0.25": 0.85}
    calls = []

    def fake_score(clips, weights, _settings, folder, stride, tight):
        calls.append(folder)
        name = "start" if Path(weights) == start.resolve() else Path(weights).stem
        value = base_by_share[name] if tight else user_by_share[name]
        return {"map50_95": value, "map50": value, "ap_tiny": None, "agnostic_map50_95": value,
                "agnostic_map50": value}

    monkeypatch.setattr(run, "_score", fake_score)
    monkeypatch.setattr(run, "_base_val_clips", lambda s: ["base val clip"])
    parts = HeldOut(train=[], val=["val clip"], test=["test clip"])
    chosen, report, base_scores = run._blend(settings, parts)
    assert chosen == out / "blend-0.75.pt" and report["chosen_share"] == 0.75   # 1 loses 2 points, 0.75 0.8
    assert len(calls) == len(set(calls)) == 10                                  # start + 4 shares, 2 parts
    assert report["before"]["user_val_agnostic_map50"] == 0.70
    assert base_scores[1]["map50_95"] == 0.232 and base_scores[0]["map50_95"] == 0.240
    rows = run._before_after(settings, parts, chosen, base_scores)
    assert len(calls) == 12                                                     # only the test clips were scored
    base_rows = {row["metric"]: row for row in rows if row["part"] == "base val split"}
    assert (base_rows["mAP50:95"]["before"], base_rows["mAP50:95"]["after"]) == (0.240, 0.232)


def test_changes_are_signed_points_and_never_minus_zero():
    from pipeline.offline.adapt.card import change_text

    assert change_text(0.5650, 0.5646) == "+0.0" and change_text(0.240, 0.228) == "-1.2"
    assert change_text(0.2, 0.25) == "+5.0" and change_text(None, 0.2) == "–" and change_text(0.2, None, "n/a") == "n/a"
