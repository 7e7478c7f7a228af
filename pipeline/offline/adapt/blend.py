"""How much of the fine-tune to keep: weight-space blends of the start model and the fine-tuned one,
``(1 - share) * start + share * tuned`` (``models.blend_checkpoints``), scored on the user's val clips and
on a slice of the base val split, and one chosen by a rule that puts forgetting first.

Why: a few hundred steps on a handful of clips move the whole network; the first checkpoint already
forgets 2 points of the base data, and the user's 1-3 val clips saturate (AP50 1.0), so early stopping
cannot see it. A blend keeps most of the gain on the new camera for a fraction of the loss (Wortsman et
al. 2022, "WiSE-FT"), and costs scoring, not training.

The rule (``choose``): among the blends that lose at most ``max_forget`` points of base val mAP50:95,
the smallest share whose class-agnostic AP50 on the user's val clips is within ``TIE`` of the best of
them; if every blend forgets more, the one that forgets least (and a warning). Without a base check the
forgetting is unknown and only the user's val clips decide (the same tie rule).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger("pipeline.offline.adapt")

AUTO_SHARES = (1.0, 0.75, 0.5, 0.25)
TIE = 0.01      # AP50 one point apart on 1-3 val clips is noise: prefer the blend that keeps more of the start


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


def parse_shares(value: str) -> tuple[float, ...]:
    """``--blend``: auto (AUTO_SHARES), or shares in (0, 1] separated by commas; 1 = no blending."""
    if value == "auto":
        return AUTO_SHARES
    try:
        shares = tuple(sorted({float(part) for part in value.split(",") if part.strip()}, reverse=True))
    except ValueError:
        raise ValueError(f"--blend {value!r}: auto, or shares in (0, 1] separated by commas") from None
    if not shares or not all(0 < share <= 1 for share in shares):
        raise ValueError(f"--blend {value!r}: every share must be in (0, 1] (1 keeps the fine-tune as it is)")
    return shares


def _user_score(candidate: Candidate) -> float:
    value = candidate.user_val["agnostic_map50"]
    return -1.0 if value is None else value     # None: no labeled object in the val clips to score


def _forgets(candidate: Candidate, before_base: dict) -> float:
    return before_base["map50_95"] - candidate.base_val["map50_95"]


def choose(candidates: list[Candidate], before_base: dict | None, max_forget: float) -> tuple[Candidate, str]:
    """The chosen blend and one line saying why (the rule of the module's docstring)."""
    if before_base is None or any(c.base_val is None for c in candidates):
        pool, why = candidates, "no base check: chosen on your val clips alone"
    else:
        pool = [c for c in candidates if _forgets(c, before_base) <= max_forget / 100]
        why = f"forgets at most {max_forget:g} points of base val mAP50:95"
        if not pool:
            least = min(candidates, key=lambda c: _forgets(c, before_base))
            return least, (f"every blend forgets more than {max_forget:g} points of base val mAP50:95; "
                           f"share {least.share:g} forgets least ({100 * _forgets(least, before_base):.1f})")
    best = max(_user_score(c) for c in pool)
    chosen = min((c for c in pool if _user_score(c) >= best - TIE), key=lambda c: c.share)
    return chosen, (f"share {chosen.share:g}: {why}, and its class-agnostic AP50 on your val clips "
                    f"({100 * _user_score(chosen):.1f}) is within {100 * TIE:g} point of the best")


def candidates(shares, start: Path, tuned: Path, folder: Path, score_user: Callable[[Path], dict],
               score_base: Callable[[Path], dict] | None) -> list[Candidate]:
    """Each share's blend written to ``folder/blend-<share>.pt`` (share 1: the fine-tune itself) and scored."""
    from models import blend_checkpoints

    scored = []
    for share in shares:
        weights = tuned if share == 1 else blend_checkpoints(start, tuned, share, folder / f"blend-{share:g}.pt")
        candidate = Candidate(share, Path(weights), score_user(weights),
                              score_base(weights) if score_base else None)
        log.info("adapt: blend share %g: your val clips class-agnostic AP50 %.1f%s", share,
                 100 * _user_score(candidate),
                 "" if candidate.base_val is None else f", base val mAP50:95 {100 * candidate.base_val['map50_95']:.1f}")
        scored.append(candidate)
    return scored
