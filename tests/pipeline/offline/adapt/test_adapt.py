"""``python -m pipeline adapt``: a camera the shipped model has not seen (synthetic clips shown through
a colour palette, written as a YOLO folder), adapted for half a minute from the shipped weights, finds
more of its drones than before; the weights, card and report are written; bad input is one line."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from models import DEFAULT_WEIGHTS
from pipeline.offline.data import synthetic
from pipeline.offline.eval.recall import recall_by_size
from tests.conftest import REPO_ROOT

SIZE = (320, 256)


def palette_clip(root: Path, name: str, seed: int, frames: int = 24) -> None:
    """A synthetic thermal clip as a JET-palette camera shows it, in YOLO layout under ``root``."""
    (root / "images" / name).mkdir(parents=True)
    (root / "labels" / name).mkdir(parents=True)
    for index, (image, boxes) in enumerate(synthetic.render_clip(seed, frames, SIZE, "IR")):
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
        cv2.imwrite(str(root / "images" / name / f"{index:04d}.png"), cv2.applyColorMap(grey, cv2.COLORMAP_JET))
        (root / "labels" / name / f"{index:04d}.txt").write_text("".join(
            f"{b.class_id} {(b.x + b.w / 2) / SIZE[0]:.6f} {(b.y + b.h / 2) / SIZE[1]:.6f} {b.w / SIZE[0]:.6f} "
            f"{b.h / SIZE[1]:.6f}\n" for b in boxes))


@pytest.fixture(scope="module")
def palette_camera(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("palette_camera")
    (root / "data.yaml").write_text("names: [uav, gull]\n")
    for number, seed in enumerate((21, 22, 23)):
        palette_clip(root, f"cam{number}", seed)
    return root


def adapt(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", "adapt", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)


def drone_recall(weights: Path, folder: Path) -> float:
    """Share of the clip's drones that a box scored >= 0.25 overlaps at IoU 0.5."""
    from models import Detector

    detector = Detector(weights, backend="torch", conf_threshold=0.25)
    truth, found = [], []
    for image_path in sorted((folder.parent.parent / "images" / folder.name).glob("*.png")):
        image = cv2.imread(str(image_path))
        rows = [list(map(float, line.split())) for line in (folder / f"{image_path.stem}.txt").read_text().splitlines()]
        truth.append(np.array([[(cx - w / 2) * SIZE[0], (cy - h / 2) * SIZE[1], (cx + w / 2) * SIZE[0],
                                (cy + h / 2) * SIZE[1]] for c, cx, cy, w, h in rows if c == 0]).reshape(-1, 4))
        found.append(detector([image])[0])
    return recall_by_size(truth, found, ious=(0.5,))["recall"]["0.5"]


@pytest.mark.slow
def test_adapting_to_an_unseen_camera_raises_recall_and_writes_weights_card_report(palette_camera, tmp_path):
    out = tmp_path / "adapt"
    result = adapt("--data", str(palette_camera), "--classes", "uav=drone,gull=bird", "--minutes", "0.6",
                   "--base", "none", "--stride", "1", "--batch", "8", "--crop", "128", "--evals", "3",
                   "--backend", "torch", "--out", str(out), "--no-progress", "--threads", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    train_clip = report["clips"]["train"][0]
    assert len(report["clips"]["test"]) == 1 and not set(report["clips"]["test"]) & set(report["clips"]["train"])
    before = drone_recall(DEFAULT_WEIGHTS, palette_camera / "labels" / train_clip)
    after = drone_recall(out / "adapted.pt", palette_camera / "labels" / train_clip)
    assert after >= before + 0.2, (before, after)
    card = (out / "adapted.md").read_text()
    assert "## Before / after" in card and "your test clips" in card and "weights: adapted.pt" in card
    assert str(tmp_path) not in card  # the card travels with the weights: no paths of this machine
    assert {row["metric"] for row in report["table"]} >= {"mAP50:95", "class-agnostic AP50"}
    blended = report["blend"]    # no base data: the blend is chosen on the val clip alone
    assert [row["share"] for row in blended["candidates"]] == [1.0, 0.75, 0.5, 0.25]
    assert "forgetting not measured" in blended["why"] and "Forgetting was not measured" in card
    chosen = out / "train" / "best.pt" if blended["chosen_share"] == 1 else out / f"blend-{blended['chosen_share']:g}.pt"
    assert (out / "adapted.pt").read_bytes() == chosen.read_bytes()
    assert "weights: " + str((out / "adapted.pt").resolve()) in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--minutes", "0"], "--minutes must be positive"),
    (["--holdout", "1.5"], "--holdout must be between 0 and 1"),
    (["--weights", "/nonexistent.pt"], "--weights: no such file"),
    (["--classes", "uav=tank"], "'tank' is not a model class"),
    (["--camera-effects", "2"], "--camera-effects must be in 0..1"),
    (["--blend", "2"], "every share must be in (0, 1]"),
])
def test_bad_options_are_one_line(palette_camera, tmp_path, args, message):
    result = adapt("--data", str(palette_camera), "--out", str(tmp_path / "o"), *args, timeout=60)
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_one_clip_is_not_enough(palette_camera, tmp_path):
    folder = tmp_path / "one"
    (folder / "data.yaml").parent.mkdir()
    (folder / "data.yaml").write_text((palette_camera / "data.yaml").read_text())
    for kind in ("images", "labels"):
        shutil.copytree(palette_camera / kind / "cam0", folder / kind / "cam0")
    result = adapt("--data", str(folder), "--classes", "uav=drone,gull=bird", "--out", str(tmp_path / "o"), timeout=60)
    assert result.returncode == 2 and "at least 2 are needed" in result.stderr
    assert "Traceback" not in result.stderr


def test_test_clips_that_it_trains_on_are_refused_before_any_training(palette_camera, tmp_path):
    result = adapt("--data", str(palette_camera), "--test-data", str(palette_camera), "--classes",
                   "uav=drone,gull=bird", "--base", "none", "--out", str(tmp_path / "o"), timeout=60)
    assert result.returncode == 2 and "--test-data holds clips adapt trains on" in result.stderr
    assert not (tmp_path / "o" / "train").exists()


def test_resume_with_other_crop_options_is_refused(tmp_path):
    """adapt feeds the training run its data: a --resume that changed what is mixed in would go on
    silently with other crops, so the options that decide them are kept beside the run and compared."""
    from pipeline.offline.adapt.run import _pin_crop_options
    from pipeline.offline.adapt.settings import AdaptSettings
    from pipeline.offline.train.settings import TrainError

    first = AdaptSettings(data=tmp_path / "clips", out=tmp_path / "run", base_share=0.3)
    _pin_crop_options(first)
    assert json.loads((tmp_path / "run" / "adapt-options.json").read_text())["base_share"] == 0.3
    _pin_crop_options(AdaptSettings(data=tmp_path / "clips", out=tmp_path / "run", base_share=0.3, resume=True,
                                    minutes=30, lr=1e-4))                     # budget and lr may change
    with pytest.raises(TrainError, match="--base-share, --base-stride differ"):
        _pin_crop_options(AdaptSettings(data=tmp_path / "clips", out=tmp_path / "run", base_share=0.5,
                                        base_stride=10, resume=True))


def test_resume_with_an_unreadable_options_file_is_one_line(tmp_path):
    from pipeline.offline.adapt.run import _pin_crop_options
    from pipeline.offline.adapt.settings import AdaptSettings
    from pipeline.offline.train.settings import TrainError

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "adapt-options.json").write_text("{not json")
    with pytest.raises(TrainError, match="cannot read .*adapt-options.json"):
        _pin_crop_options(AdaptSettings(data=tmp_path / "clips", out=tmp_path / "run", resume=True))


def test_camera_effects_and_a_shipped_name_reach_the_training_run(tmp_path):
    """--camera-effects goes to the training run (its recipe binds a --resume); --weights takes a
    shipped name as the pipeline's config does."""
    import models
    from pipeline.offline.adapt.cli import build_parser
    from pipeline.offline.adapt.run import _train_settings
    from pipeline.offline.adapt.settings import AdaptSettings

    options = vars(build_parser().parse_args(["--data", str(tmp_path), "--weights", "demo", "--camera-effects", "0.5"]))
    settings = AdaptSettings(**options)
    assert settings.weights == models.WEIGHTS_DIR / "demo.pt"
    train = _train_settings(settings, models.checkpoint_meta(settings.weights))
    assert train.camera_effects == 0.5 and train.init == str(settings.weights)


def test_ctrl_c_outside_the_training_loop_is_one_line(tmp_path, monkeypatch, capsys):
    """Ctrl-C while decoding or scoring: one line saying what is kept and how to go on, exit 130."""
    from pipeline.offline.adapt import cli, run

    def interrupted(settings):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "adapt", interrupted)
    assert cli.main(["--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 130
    assert capsys.readouterr().err.strip() == "adapt: interrupted; nothing was trained yet"
    (tmp_path / "o" / "train").mkdir(parents=True)
    (tmp_path / "o" / "train" / "last.pt").write_bytes(b"")
    assert cli.main(["--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 130
    assert "with --resume finishes it" in capsys.readouterr().err
