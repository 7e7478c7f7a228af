"""``adapted.md``: the model card of an adapted checkpoint (what it started from, what it saw, the
before/after table) and ``report.json`` beside it."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.offline.adapt.blend import percent
from pipeline.offline.adapt.settings import AdaptSettings


def _one_in(stride: int) -> str:
    return "every frame" if stride == 1 else f"1 frame in {stride}"


def _percent(value) -> str:
    return percent(value, missing="–")


def change_text(before, after, missing: str = "–") -> str:
    """after − before in points, signed; never "-0.0" (a change that rounds to nothing is +0.0)."""
    if before is None or after is None:
        return missing
    return f"{round(100 * (after - before), 1) + 0.0:+.1f}"


def _table(rows: list[dict]) -> list[str]:
    lines = ["| held-out data | metric (%) | before | after | change |", "|---|---|---|---|---|"]
    for row in rows:
        before, after = row["before"], row["after"]
        change = change_text(before, after)
        lines.append(f"| {row['part']} | {row['metric']} | {_percent(before)} | {_percent(after)} | {change} |")
    return lines


def _training_lines(train_log: dict) -> list[str]:
    epochs = train_log.get("epochs") or [{}]
    best = max(epochs, key=lambda epoch: epoch.get("map50_95", -1))
    config = train_log.get("config", {})
    return [f"- **Training**: {train_log.get('steps')} steps in {train_log.get('train_loop_s')} s of loop on "
            f"{train_log.get('hardware')}, batch {config.get('batch')} × {config.get('crop')} px crops, AdamW lr "
            f"{config.get('lr')}; best val mAP50:95 {_percent(best.get('map50_95'))} % at step {best.get('step')} "
            f"(the checkpoint kept; training stops after {config.get('patience')} evaluations without a gain)."]


def _blend_lines(blended: dict | None) -> list[str]:
    if blended is None:
        return ["- **Blend**: none (`--blend 1`): the fine-tuned checkpoint as it is.", ""]
    share = blended["chosen_share"]
    what = ("the fine-tune as it is (share 1)" if share == 1 else
            f"{share:g} × the fine-tune + {1 - share:g} × the start model, blended in weight space")
    lines = [f"- **Blend**: {what}. Why: {blended['why']}."]
    if not blended["within_limit"]:
        lines.append(f"  **Every blend lost more than {blended['max_forget_points']:g} point(s) of base val "
                     "mAP50:95**: this one lost least. Fewer steps (`--minutes`), a smaller `--lr` or a larger "
                     "`--base-share` forget less.")
    before = blended["before"]["base_val_map50_95"]
    lines += ["", "| share of the fine-tune | your val clips: class-agnostic AP50 | your val clips: mAP50:95 | "
              "base val mAP50:95 | change |", "|---|---|---|---|---|"]
    for row in [blended["before"], *blended["candidates"]]:
        name = ("0 (the start model)" if row is blended["before"] else
                f"**{row['share']:g} (chosen)**" if row["share"] == share else f"{row['share']:g}")
        after = row["base_val_map50_95"]
        change = "–" if row is blended["before"] else change_text(before, after)
        lines.append(f"| {name} | {_percent(row['user_val_agnostic_map50'])} | {_percent(row['user_val_map50_95'])} | "
                     f"{_percent(after)} | {change} |")
    lines.append("")
    if before is None:
        lines.append("Forgetting was not measured (no base check): the val clips alone chose.")
    else:
        lines.append("The base val split helped choose the blend, so its line below is not an independent check; "
                     "this project's test split is (`python -m pipeline eval --split test --visible-boxes tight "
                     "--weights adapted.pt`).")
    return lines + [""]


def write_card(settings: AdaptSettings, meta: dict, report: dict, adapted: Path) -> None:
    train_log = json.loads((settings.out / "train" / "log.json").read_text())
    report["training"] = {k: train_log.get(k) for k in ("steps", "train_loop_s", "best_val_map50_95", "hardware")}
    clips = report["clips"]
    # paths by name only: the card travels with the weights, not the folders of the machine that made them
    base = (f"{report['base_clips']} train clips of this project's dataset ({Path(settings.base_root()).name}), "
            f"{_one_in(settings.base_stride)} ({report['base_frames']} frames, visible boxes tightened), "
            f"{100 * settings.base_share:.0f} % of the training crops" if report["base_clips"] else "none")
    lines = [f"# Model card: `{adapted.name}`", "",
             f"- **Adapted from** `{Path(str(settings.weights)).name}` (`{meta['name']}`, input {meta['input_size'][0]}×"
             f"{meta['input_size'][1]}, classes {', '.join(meta['class_names'])}) by `python -m pipeline adapt`, "
             f"{report['finished']}, in {report['wall_s']:.0f} s wall.",
             f"- **Your data**: `{Path(settings.data).name}` (format {settings.format}"
             f"{', classes ' + settings.classes if settings.classes else ''}), {_one_in(settings.stride)} "
             f"({report['train_frames']} training frames). Split by clip: train {len(clips['train'])} "
             f"({', '.join(clips['train'])}); val, which chose the checkpoint and the blend, {len(clips['val'])} "
             f"({', '.join(clips['val'])}); test, reported below and never used to choose, {len(clips['test'])} "
             f"({', '.join(clips['test'])}"
             f"{'; from ' + Path(settings.test_data).name if settings.test_data else ''}).",
             f"- **Base data mixed in** (against forgetting): {base}.",
             *_training_lines(train_log), *_blend_lines(report.get("blend"))]
    if report["shared_holdout"]:
        lines += ["**Only two clips**: the held-out clip chose the checkpoint *and* is reported on, so its "
                  "after-score is optimistic.", ""]
    lines += ["## Before / after", "", *_table(report["table"]), "",
              f"Scored with the `{settings.backend}` backend, {_one_in(settings.stride)} of the test clips; "
              f"{'' if settings.skip_base_check else 'the base val split 1 frame in 30 against tightened visible boxes. '}"
              "Class-agnostic: any object "
              "in the sky, whatever class was guessed.", "",
              "## Use", "", "```yaml", "stages:", "  detect:",
              f"    weights: {adapted.name}  # its path, relative to the config file or absolute", "```", ""]
    adapted.with_suffix(".md").write_text("\n".join(lines))
    (settings.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
