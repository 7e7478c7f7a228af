"""How much of the fine-tune to keep: weight-space blends of the start model and the fine-tuned one,
``(1 - share) * start + share * tuned`` (``models.blend_checkpoints``), scored on the user's val clips and
on a slice of the base val split, and one chosen by a rule that puts forgetting first.

Why: a few hundred steps on a handful of clips move the whole network; the first checkpoint already
forgets 2 points of the base data, and the user's 1-3 val clips saturate (AP50 1.0), so early stopping
cannot see it. A blend keeps most of the gain on the new camera for a fraction of the loss (Wortsman et
al. 2022, "WiSE-FT"), and costs scoring, not training.

The rule (``choose``): among the blends that lose at most ``max_forget`` points of base val mAP50:95,
the smallest share whose class-agnostic AP50 on the user's val clips is within ``TIE`` of the best of
them; if every blend forgets more, the one that forgets least (and a warning). Without a base check
forgetting is not measured, so nothing argues for keeping less of the fine-tune: the best on the
user's val clips, ties to the *larger* share.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger("pipeline.offline.adapt")

AUTO_SHARES = (1.0, 0.75, 0.5, 0.25)
TIE = 0.01      # AP50 one point apart on 1-3 val clips is noise
EPSILON = 1e-9  # a blend that loses exactly max_forget points is within it, whatever the float rounding


@dataclass
class Candidate:
    share: float
    weights: Path
    user_val: dict                  # the user's val clips: agnostic_map50, map50_95, ...
    base_val: dict | None = None    # the base val slice, or None without a base check

    def row(self) -> dict:
        return {"share": self.share, "weights": self.weights.name,
                "user_val_agnostic_map50": self.user_val["agnostic_map50"],
                "user_val_map50_95": self.user_val["map50_95"],
                "base_val_map50_95": None if self.base_val is None else self.base_val["map50_95"]}


@dataclass
class Choice:
    candidate: Candidate
    why: str
    within_limit: bool      # False: every blend forgot more than the limit (the least forgetting one was taken)


def parse_shares(value: str) -> tuple[float, ...]:
    """``--blend``: auto (AUTO_SHARES), or shares in (0, 1] with at most 2 decimals, separated by
    commas; 1 = the fine-tune as it is."""
    if value == "auto":
        return AUTO_SHARES
    try:
        given = [float(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--blend {value!r}: auto, or shares in (0, 1] separated by commas") from None
    if not given or not all(0 < share <= 1 for share in given):
        raise ValueError(f"--blend {value!r}: every share must be in (0, 1] (1 keeps the fine-tune as it is)")
    if any(not math.isclose(share, round(share, 2), abs_tol=1e-12) for share in given):
        raise ValueError(f"--blend {value!r}: shares take at most 2 decimals (0.35, not 0.351)")
    return tuple(sorted({round(share, 2) for share in given}, reverse=True))


def percent(value: float | None, missing: str = "n/a") -> str:
    """A score in 0..1 as percent with one decimal (the adapt log, card and tables all print it so)."""
    return missing if value is None else f"{100 * value:.1f}"


def _user_score(candidate: Candidate) -> float:
    value = candidate.user_val["agnostic_map50"]
    return -1.0 if value is None else value     # None: no labeled object in the val clips to score


def _forgets(candidate: Candidate, before_base: dict) -> float:
    return before_base["map50_95"] - candidate.base_val["map50_95"]


def choose(candidates: list[Candidate], before_base: dict | None, max_forget: float) -> Choice:
    """The chosen blend and one line saying why (the rule of the module's docstring)."""
    measured = before_base is not None and all(c.base_val is not None for c in candidates)
    pool = candidates
    if measured:
        pool = [c for c in candidates if _forgets(c, before_base) <= max_forget / 100 + EPSILON]
        if not pool:
            least = min(candidates, key=lambda c: _forgets(c, before_base))
            return Choice(least, f"every blend loses more than {max_forget:g} point(s) of base val mAP50:95; "
                                 f"share {least.share:g} loses least ({100 * _forgets(least, before_base):.1f})", False)
    best = max(_user_score(c) for c in pool)
    level = [c for c in pool if _user_score(c) >= best - TIE]
    # measured: the level blend that keeps most of the start; not measured: the one that keeps most of the tune
    chosen = min(level, key=lambda c: c.share) if measured else max(level, key=lambda c: c.share)
    if best < 0:
        why = "your val clips hold no labeled object to score, so they could not help choose"
    else:
        why = (f"class-agnostic AP50 on your val clips {percent(chosen.user_val['agnostic_map50'])}, within "
               f"{100 * TIE:g} point of the best")
    limit = (f"loses at most {max_forget:g} point(s) of base val mAP50:95" if measured
             else "forgetting not measured (no base check)")
    return Choice(chosen, f"{limit}; {why}", True)


def candidates(shares, start: Path, tuned: Path, folder: Path, score_user: Callable[[Path], dict],
               score_base: Callable[[Path], dict] | None) -> list[Candidate]:
    """Each share's blend written to ``folder/blend-<share>.pt`` (share 1: the fine-tune itself) and scored."""
    from models import blend_checkpoints

    for stale in folder.glob("blend-*.pt"):     # an earlier run's blends, maybe of other shares
        stale.unlink()
    scored = []
    for share in shares:
        weights = tuned if share == 1 else blend_checkpoints(start, tuned, share, folder / f"blend-{share:g}.pt")
        candidate = Candidate(share, Path(weights), score_user(weights),
                              score_base(weights) if score_base else None)
        log.info("adapt: blend share %g: your val clips class-agnostic AP50 %s%s", share,
                 percent(candidate.user_val["agnostic_map50"]),
                 "" if candidate.base_val is None else f", base val mAP50:95 {percent(candidate.base_val['map50_95'])}")
        scored.append(candidate)
    return scored
