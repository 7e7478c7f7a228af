"""The adaptation: the user's clips held out by clip, the base data mixed in, a short fine-tune from
the shipped weights (``pipeline.offline.train``), then the same scores before and after.

Files in ``settings.out``: ``train/`` (the training run: last.pt to resume, best.pt, log.json,
curve.png), ``adapted.pt`` + ``adapted.md`` (the weights and their card), ``report.json`` (the plan and the
before/after table), ``blend-<share>.pt`` (the blends of the start and the fine-tune that were scored,
``blend.py``), ``eval/<part>-<weights>/`` (each scoring's own files).
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
import time
from pathlib import Path

from models import checkpoint_meta
from pipeline.offline.adapt import blend
from pipeline.offline.adapt.card import change_text, write_card
from pipeline.offline.adapt.settings import AdaptSettings
from pipeline.offline.data import dataset, formats
from pipeline.offline.data.holdout import HeldOut, hold_out
from pipeline.offline.train.settings import TrainError, TrainSettings
from pipeline.offline.train.sources import ClipFrames, decode_clips, tighten_visible_boxes

log = logging.getLogger("pipeline.offline.adapt")

EXIT_INTERRUPTED = 143
BASE_CHECK_STRIDE = 30      # base val split scored every 30th frame: ~600 images, a minute on 2 cores


# the options that decide which crops training cuts: a --resume that changed one would go on silently
# with other data (the training run itself checks its own recipe, not what adapt feeds it)
CROP_OPTIONS = ("data", "format", "classes", "test_data", "weights", "base", "base_share", "base_stride",
                "base_clips", "stride", "max_frames", "holdout", "batch", "crop", "seed", "camera_effects")


def adapt(settings: AdaptSettings) -> int:
    started = time.monotonic()
    meta = _start_meta(settings)
    parts = _held_out_parts(settings)
    _check_apart(parts, settings)
    _pin_crop_options(settings)
    workers = settings.workers or os.cpu_count() or 1
    train = decode_clips(parts.train, settings.stride, workers, settings.max_frames)
    val = decode_clips(parts.val, settings.stride, workers, settings.max_frames)
    base = _base_clips(settings, workers)
    _weigh(train, base, settings.base_share)
    from pipeline.offline.train.loop import run

    code = run(_train_settings(settings, meta), data=(train + base, val, list(meta["class_names"])))
    if code != 0:
        log.warning("adapt: training was interrupted; continue with the same command and --resume")
        return EXIT_INTERRUPTED
    adapted = settings.out / "adapted.pt"
    chosen, blended, base_scores = _blend(settings, parts)
    shutil.copyfile(chosen, adapted)
    table = _before_after(settings, parts, adapted, base_scores)
    report = {"settings": settings.as_config(), "clips": parts.names(), "shared_holdout": parts.shared_holdout,
              "base_clips": len(base), "train_frames": sum(len(c.frames) for c in train),
              "base_frames": sum(len(c.frames) for c in base), "blend": blended, "table": table,
              "wall_s": round(time.monotonic() - started, 1),
              "finished": datetime.datetime.now().isoformat(timespec="seconds")}
    write_card(settings, meta, report, adapted)
    print(_table_text(table))
    print(f"adapted weights: {adapted} (card {adapted.with_suffix('.md')}); use them with\n"
          f"  stages:\n    detect:\n      weights: {adapted.resolve()}")
    return 0


def _start_meta(settings: AdaptSettings) -> dict:
    """The starting checkpoint's meta; its classes must be the ones the formats map labels onto."""
    from models import CheckpointError

    try:
        meta = checkpoint_meta(settings.weights)
    except CheckpointError as error:
        raise TrainError(f"--weights: {error}") from None
    if list(meta["class_names"]) != list(dataset.CLASSES):
        raise TrainError(f"--weights: its classes {meta['class_names']} are not {list(dataset.CLASSES)}, the classes "
                         "labels are mapped onto")
    settings.out.mkdir(parents=True, exist_ok=True)
    return meta


def _held_out_parts(settings: AdaptSettings) -> HeldOut:
    class_map = formats.parse_class_map(settings.classes)
    user = formats.load_clips("all", settings.data, fmt=settings.format, class_map=class_map)
    parts = hold_out(user, settings.holdout, settings.seed, test_given=settings.test_data is not None)
    if settings.test_data is not None:
        parts.test = formats.load_clips("all", settings.test_data, fmt=settings.format, class_map=class_map)
    for part, names in parts.names().items():
        log.info("adapt: %s clips (%d): %s", part, len(names), ", ".join(names))
    if parts.shared_holdout:
        log.warning("adapt: only 2 clips: the held-out clip both chooses the checkpoint and is reported on, "
                    "so its after-score is optimistic; label a third clip (or give --test-data) for an honest one")
    return parts


def _check_apart(parts: HeldOut, settings: AdaptSettings) -> None:
    """Refuse a run whose report would score clips it trained on: test clips that are also train or val
    clips (``--test-data`` naming the same clips as ``--data``), or clips of the base data mixed in; and
    a test part that cannot be scored, before the training budget is spent on it."""
    from pipeline.offline.eval.report import usable_clips

    learned = {clip.name for clip in parts.train + parts.val}
    twice = sorted(learned & {clip.name for clip in parts.test})
    if twice and not parts.shared_holdout:
        raise TrainError(f"--test-data holds clips adapt trains on ({', '.join(twice[:3])}): report on clips "
                         "it never sees")
    root = settings.base_root()
    if root is not None and settings.base_share > 0:
        leaked = sorted({c.name for c in dataset.load_split("train", root)} & {c.name for c in parts.test})
        if leaked:
            raise TrainError(f"test clips of yours are this dataset's train clips ({', '.join(leaked[:3])}), which "
                             "are mixed into training: report on other clips, or --base none")
        seen = sorted({c.name for c in dataset.load_split("val", root)} & learned)
        if seen and not settings.skip_base_check:
            log.warning("adapt: %d of your training clips are this dataset's val clips (%s): the base val scores "
                        "are optimistic, in the table and in choosing the blend (they favour keeping more of the "
                        "fine-tune)", len(seen), ", ".join(seen[:3]))
    skipped: list[dict] = []
    usable_clips(parts.test, skipped)     # EvalError when none of them can be scored


def _base_clips(settings: AdaptSettings, workers: int) -> list[ClipFrames]:
    """A few frames of every base train clip, visible boxes tightened (the shipped model's convention)."""
    root = settings.base_root()
    if root is None or settings.base_share == 0:
        log.info("adapt: no base data mixed in (%s)", "--base none" if settings.base == "none" or
                 settings.base_share == 0 else f"no dataset at {dataset.DEFAULT_ROOT}")
        return []
    clips = dataset.load_split("train", root)
    if settings.base_clips is not None:
        clips = clips[::max(1, len(clips) // settings.base_clips)][:settings.base_clips]
    started = time.monotonic()
    base = decode_clips(clips, settings.base_stride, workers)
    tighten_visible_boxes(base, "base train")
    log.info("adapt: base data: %d train clips of %s, %d frames, decoded in %.0f s", len(base), root,
             sum(len(c.frames) for c in base), time.monotonic() - started)
    return base


def _weigh(user: list[ClipFrames], base: list[ClipFrames], base_share: float) -> None:
    """Clip weights so that ``base_share`` of the crops come from the base data, the rest from the user's."""
    if not base:
        return
    user_frames, base_frames = sum(len(c.frames) for c in user), sum(len(c.frames) for c in base)
    for clip in user:
        clip.weight = (1 - base_share) / user_frames
    for clip in base:
        clip.weight = base_share / base_frames


def _pin_crop_options(settings: AdaptSettings) -> None:
    """Keep the crop-deciding options beside the run (``adapt-options.json``); --resume must repeat them."""
    path = settings.out / "adapt-options.json"
    config = settings.as_config()
    wanted = {name: config[name] for name in CROP_OPTIONS}
    if settings.resume and path.is_file():
        try:
            started = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise TrainError(f"--resume: cannot read {path}: {error}") from None
        changed = sorted(name for name in CROP_OPTIONS if started.get(name) != wanted[name])
        if changed:
            flags = ", ".join("--" + name.replace("_", "-") for name in changed)
            raise TrainError(f"--resume: {flags} differ from the interrupted run's ({path}); "
                             "resume with the same options")
        return
    settings.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(wanted, indent=1) + "\n")


def _train_settings(settings: AdaptSettings, meta: dict) -> TrainSettings:
    return TrainSettings(model=meta["name"], init=str(settings.weights), minutes=settings.minutes,
                         out=str(settings.out / "train"), resume=settings.resume, lr=settings.lr,
                         batch=settings.batch, crop=settings.crop, input_size=tuple(meta["input_size"]),
                         evals=settings.evals, patience=settings.patience, warmup_steps=30,
                         camera_effects=settings.camera_effects, freeze_bn=settings.freeze_bn,
                         val_per_clip=settings.val_per_clip, seed=settings.seed, threads=settings.threads,
                         workers=settings.workers, no_progress=settings.no_progress)


# ------------------------------------------------------------------------------ blend
def _blend(settings: AdaptSettings, parts: HeldOut) -> tuple[Path, dict | None, tuple[dict, dict] | None]:
    """(the weights to ship, the blend report or None, the base val scores (before, after) or None).
    ``--blend 1``: the fine-tune as it is, unscored here. Otherwise each share's blend is scored on the
    user's val clips, and on the base val slice when there is a base check, and one is chosen
    (``blend.choose``); the start model is scored on the val clips too, for the card."""
    tuned = settings.out / "train" / "best.pt"
    if settings.blend_shares == (1.0,):
        return tuned, None, None
    base_val = _base_val_clips(settings)

    def score_user(weights: Path) -> dict:
        return _score(parts.val, weights, settings, _eval_folder(settings, "user-val", weights), settings.stride, False)

    def score_base(weights: Path) -> dict:
        return _score(base_val, weights, settings, _eval_folder(settings, "base-val", weights), BASE_CHECK_STRIDE, True)

    before_user = score_user(settings.weights)
    before_base = score_base(settings.weights) if base_val else None
    scored = blend.candidates(settings.blend_shares, settings.weights, tuned, settings.out, score_user,
                              score_base if base_val else None)
    choice = blend.choose(scored, before_base, settings.max_forget)
    (log.info if choice.within_limit else log.warning)("adapt: blend share %g chosen: %s", choice.candidate.share,
                                                       choice.why)
    report = {"chosen_share": choice.candidate.share, "why": choice.why, "within_limit": choice.within_limit,
              "max_forget_points": settings.max_forget if base_val else None,
              "before": blend.Candidate(0.0, settings.weights, before_user, before_base).row(),
              "candidates": [candidate.row() for candidate in scored]}
    return choice.candidate.weights, report, (before_base, choice.candidate.base_val) if before_base else None


def _base_val_clips(settings: AdaptSettings) -> list:
    root = settings.base_root()
    return [] if root is None or settings.skip_base_check else dataset.load_split("val", root)


def _eval_folder(settings: AdaptSettings, part: str, weights: Path) -> Path:
    name = "before" if Path(weights) == settings.weights else Path(weights).stem
    return settings.out / "eval" / f"{part}-{name}"


# ------------------------------------------------------------------------------ before / after
METRICS = (("map50_95", "mAP50:95"), ("map50", "mAP50"), ("agnostic_map50_95", "class-agnostic mAP50:95"),
           ("agnostic_map50", "class-agnostic AP50"), ("ap_tiny", "AP tiny (< 16 px)"))


def _before_after(settings: AdaptSettings, parts: HeldOut, adapted: Path,
                  base_scores: tuple[dict, dict] | None) -> list[dict]:
    """Rows {part, metric, before, after}: the user's held-out test clips, and the base val split
    (its scores from choosing the blend when there were some)."""
    def score(folder: str, clips: list, stride: int, tight: bool) -> tuple[dict, dict]:
        return tuple(_score(clips, weights, settings, settings.out / "eval" / f"{folder}-{when}", stride, tight)
                     for weights, when in ((settings.weights, "before"), (adapted, "after")))

    scored = [("your test clips", score("user-test", parts.test, settings.stride, False))]
    base_val = _base_val_clips(settings)
    if base_val:
        scored.append(("base val split", base_scores or score("base-val", base_val, BASE_CHECK_STRIDE, True)))
    return [{"part": label, "metric": title, "before": before[key], "after": after[key]}
            for label, (before, after) in scored for key, title in METRICS]


def _score(clips: list, weights: Path, settings: AdaptSettings, out: Path, stride: int, tight: bool) -> dict:
    from pipeline.offline.eval.report import evaluate_clips
    from pipeline.offline.eval.settings import EvalSettings

    eval_settings = EvalSettings(data=settings.data, weights=weights, backend=settings.backend, stride=stride,
                                 out=out, visible_boxes="tight" if tight else "dataset")
    report = evaluate_clips(clips, eval_settings)
    agnostic = report["class_agnostic"]
    return {"map50_95": report["map50_95"], "map50": report["map50"], "ap_tiny": report["ap_tiny"],
            "agnostic_map50_95": agnostic["map50_95"], "agnostic_map50": agnostic["map50"]}


def _table_text(rows: list[dict]) -> str:
    lines = [f"{'part':<16} {'metric':<24} {'before':>7} {'after':>7} {'change':>7}"]
    for row in rows:
        lines.append(f"{row['part']:<16} {row['metric']:<24} {blend.percent(row['before']):>7} {blend.percent(row['after']):>7} "
                     f"{change_text(row['before'], row['after'], missing='n/a'):>7}")
    return "\n".join(lines)
