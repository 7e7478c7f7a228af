"""pipeline.offline.train: crop geometry, schedule, argument errors, bundle round trip, exact resume after SIGTERM.

Data comes from pipeline.offline.data.synthetic written in the real dataset's layout (no ../shared data needed);
every training run here is a handful of steps on 64-px crops.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import supervision as sv
import torch

from pipeline.offline import train
from pipeline.offline.data import dataset, synthetic

REPO = Path(__file__).resolve().parents[4]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> tuple[Path, Path]:
    """Three 12-frame synthetic clips (V drone, V bird, IR drone) + a split manifest naming them."""
    root = tmp_path_factory.mktemp("data")
    names = synthetic.make_dataset(root, frames=12)
    manifest = root / "splits.json"
    manifest.write_text(json.dumps({"splits": {"train": [names[0], names[2]], "val": [names[0], names[2]],
                                               "test": [names[1]]}}))
    return root, manifest


def _clip_with_box(box, shape=(256, 320, 1)) -> train.ClipFrames:
    frame = np.full(shape, 40, np.uint8)
    x1, y1, x2, y2 = box
    frame[y1:y2, x1:x2] = 250
    return train.ClipFrames("c", "IR", frame[None], [0], [np.array([[0, x1, y1, x2, y2]], np.float32)])


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_crop_targets_land_on_the_object(flip):
    """The crop's target box must cover the bright object's pixels after scale, shift and flip."""
    augment = train.Augment(crop=96, positive_fraction=1.0, flip=flip, contrast=(1, 1), brightness=0, gray=0)
    sampler = train.CropSampler([_clip_with_box((150, 100, 162, 110))], (512, 640), augment,
                                torch.device("cpu"), on_device=False)
    assert sampler.groups[0].base_scale == 2.0          # IR 320x256 is letterboxed x2 into 512x640
    images, targets = sampler.batch(8, np.random.default_rng(0))
    assert images.shape == (8, 3, 96, 96) and targets.shape[2] == 5
    for image, (cls, cx, cy, w, h) in zip(images, targets[:, 0].numpy()):
        assert 12 * 2 * 0.75 - 1 <= w <= 12 * 2 * 1.5 + 1      # a 12-px object stays >= 17 px
        inner = image[0, int(cy - h / 2) + 2:int(cy + h / 2) - 2, int(cx - w / 2) + 2:int(cx + w / 2) - 2]
        assert inner.numel() and inner.min() > 200            # the box sits on the object
        assert (image[0] > 200).sum() <= w * h * 1.2          # ... and the object lies in the box


def test_background_crops_without_objects_have_no_targets():
    augment = train.Augment(crop=64, positive_fraction=0.0)
    clip = _clip_with_box((0, 0, 4, 4))
    clip.boxes = [np.zeros((0, 5), np.float32)]
    sampler = train.CropSampler([clip], (512, 640), augment, torch.device("cpu"), on_device=False)
    _, targets = sampler.batch(4, np.random.default_rng(1))
    assert targets.abs().sum() == 0


@pytest.mark.parametrize("power, small_share", [(0.0, 0.5), (1.0, 0.8), (2.0, 16 / 17)])
def test_small_object_power_favours_small_objects_in_positive_crops(power, small_share):
    """One 6-px and one 64-px object (visible frames, scale 1): pick weights 1 and (16/64)**power."""
    clips = [_clip_with_box((100, 100, 106, 106), (512, 640, 3)), _clip_with_box((300, 200, 364, 264), (512, 640, 3))]
    augment = train.Augment(crop=64, small_object_power=power)
    sampler = train.CropSampler(clips, (512, 640), augment, torch.device("cpu"), on_device=False)
    rng = np.random.default_rng(0)
    picks = np.array([sampler._pick_object(rng)[0] for _ in range(4000)])
    assert (picks == 0).mean() == pytest.approx(small_share, abs=0.025)


@pytest.mark.parametrize("argv, message", [
    (["--out", "x"], "give a budget"),
    (["--out", "x", "--epochs", "1", "--input-size", "500x640"], "--input-size"),
    (["--out", "x", "--epochs", "1", "--crop", "100"], "--crop"),
    (["--out", "x", "--epochs", "1", "--small-object-power", "-1"], "--small-object-power"),
])
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_unknown_model_and_missing_resume_are_one_line_errors(tiny_data, tmp_path, capsys):
    root, manifest = tiny_data
    base = ["--data", str(root), "--splits", str(manifest), "--epochs", "1", "--no-progress", "--workers", "1"]
    assert train.main(base + ["--model", "yolox-huge", "--out", str(tmp_path / "a")]) == 2
    assert "yolox-huge" in capsys.readouterr().err
    assert train.main(base + ["--resume", "--out", str(tmp_path / "b")]) == 2
    assert "no " in capsys.readouterr().err


def _argv(root: Path, manifest: Path, out: Path) -> list[str]:
    return ["--model", "yolox-nano-gssam-sigres-p1", "--data", str(root), "--splits", str(manifest),
            "--stride", "2", "--epochs", "2", "--epoch-steps", "2", "--batch", "2", "--crop", "64",
            "--input-size", "128x160", "--val-per-clip", "2", "--warmup-steps", "2", "--workers", "1",
            "--threads", "1", "--no-progress", "--l1-loss", "--small-object-power", "1", "--out", str(out)]


@pytest.mark.slow
def test_batched_and_yolox_assignment_train_the_same_steps(tiny_data, tmp_path):
    root, manifest = tiny_data
    torch.set_num_threads(1)
    histories = []
    for assignment in ("batched", "yolox"):
        out = tmp_path / assignment
        assert train.main(_argv(root, manifest, out) + ["--assignment", assignment]) == 0
        histories.append(torch.load(out / "last.pt", weights_only=False)["history"]["loss"])
    assert len(histories[0]) == 4
    assert histories[0] == pytest.approx(histories[1], rel=1e-5)


def test_replan_fits_the_remaining_steps_and_evaluations_into_the_time_left():
    trainer = SimpleNamespace(step=100, steps_per_epoch=50, total_steps=1000)
    train.Trainer.replan_minutes(trainer, rate=2.0, budget_left=100.0, eval_seconds=5.0)
    # 200 steps would need 4 evaluations (20 s): 80 s of steps at 2/s, 3 % margin
    assert trainer.total_steps == 100 + int(2.0 * 80 * 0.97)
    train.Trainer.replan_minutes(trainer, rate=2.0, budget_left=1.0, eval_seconds=5.0)
    assert trainer.total_steps == 101          # out of time: one more step, then the last evaluation


@pytest.mark.slow
def test_sigterm_then_resume_equals_an_uninterrupted_run(tiny_data, tmp_path):
    root, manifest = tiny_data
    torch.set_num_threads(1)
    assert train.main(_argv(root, manifest, tmp_path / "straight")) == 0

    def terminate_at_step_3(trainer):
        assert trainer.model.head.use_l1  # --l1-loss reached yolox's head
        if trainer.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    interrupted = train.parse_args(_argv(root, manifest, tmp_path / "resumed"))
    assert train.run(interrupted, step_callback=terminate_at_step_3) == 143
    assert torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)["step"] == 3
    without_l1 = [a for a in _argv(root, manifest, tmp_path / "resumed") if a != "--l1-loss"]
    assert train.main(without_l1 + ["--resume"]) == 2  # a resumed run must compute the same steps
    assert train.main(_argv(root, manifest, tmp_path / "resumed") + ["--resume"]) == 0

    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=False)
    resumed = torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)
    assert straight["step"] == resumed["step"] == 4
    for key in ("model", "ema"):
        for name, value in straight[key].items():
            assert torch.equal(value, resumed[key][name]), f"{key}.{name} differs after resume"
    assert straight["history"]["loss"] == resumed["history"]["loss"]
    assert straight["history"]["epochs"][-1]["map50_95"] == resumed["history"]["epochs"][-1]["map50_95"]

    import models
    model, meta = models.load_checkpoint(tmp_path / "resumed" / "best.pt")
    assert meta["name"] == "yolox-nano-gssam-sigres-p1" and meta["input_size"] == (128, 160)
    assert (tmp_path / "resumed" / "curve.png").stat().st_size > 0
    record = json.loads((tmp_path / "resumed" / "log.json").read_text())
    assert record["status"] == "done" and record["images_seen"] == 8
    assert record["config"]["l1_loss"] and record["config"]["small_object_power"] == 1


@pytest.mark.slow
def test_bundle_keeps_original_frame_indices_and_labels(tiny_data, tmp_path):
    root, manifest = tiny_data
    bundle = tmp_path / "bundle"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "make_train_bundle.py"), "--data", str(root),
                           "--splits-manifest", str(manifest), "--out", str(bundle), "--stride", "3",
                           "--workers", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    clips, classes = train.load_bundle(bundle, "train", None, workers=1)
    assert classes == list(dataset.CLASSES)
    direct, _ = train.load_dataset(root, "train", 3, 1, manifest=manifest)
    for from_bundle, original in zip(clips, direct):
        assert from_bundle.frame_ids == original.frame_ids == list(range(0, 12, 3))
        for a, b in zip(from_bundle.boxes, original.boxes):
            np.testing.assert_allclose(a, b)
        difference = np.abs(from_bundle.frames.astype(int) - original.frames.astype(int)).mean()
        assert from_bundle.frames.shape == original.frames.shape and difference < 6   # lossy, but the same frames


@pytest.mark.parametrize("shape", [(256, 320, 3), (512, 640, 3), (240, 300, 3)])
def test_eval_letterbox_matches_the_detector_preprocessing(shape):
    """Validation must see frames exactly as models.Detector does (yolox preproc: resize, pad 114 top-left)."""
    from yolox.data.data_augment import preproc

    frame = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    expected, expected_ratio = preproc(frame, (512, 640))
    ours, ratio = train.letterbox_batch(torch.from_numpy(frame)[None], (512, 640))
    assert ratio == pytest.approx(expected_ratio)
    assert np.abs(ours[0].numpy() - expected).mean() < 1.0    # OpenCV vs torch bilinear rounding only


def test_validation_metric_scores_perfect_detections_as_one():
    images = [{"id": i, "width": 640, "height": 512, "file_name": f"c/{i:06d}", "modality": m}
              for i, m in ((1, "V"), (2, "IR"))]
    boxes = [(1, [100.0, 50.0, 12.0, 9.0]), (2, [10.0, 20.0, 30.0, 15.0])]
    annotations = [{"id": k, "image_id": i, "category_id": 1, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
                   for k, (i, b) in enumerate(boxes, 1)]
    gt = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "drone"}]}
    perfect = [{"image_id": i, "category_id": 1, "bbox": b, "score": 0.9} for i, b in boxes]
    metrics = train.coco_map(gt, perfect)
    assert metrics["map50_95"] == pytest.approx(1.0) and metrics["per_modality"] == {"IR": 1.0, "V": 1.0}
    shifted = [{**d, "bbox": [d["bbox"][0] + 6, *d["bbox"][1:]]} for d in perfect]
    assert train.coco_map(gt, shifted)["map50_95"] < 0.5


def test_training_states_load_with_weights_only_old_numpy_form_included(tmp_path):
    """Resume reads last.pt with weights_only=True; states written before the RNG state became plain
    lists (numpy's legacy state as an ndarray) still load, and nothing else beyond plain values does."""
    import pickle

    import numpy as np
    import pytest
    import torch

    from pipeline.offline.train.state import load_training_state

    old = tmp_path / "old.pt"
    torch.save({"rng": {"numpy": np.random.get_state()}, "step": 3}, old)
    state = load_training_state(old, torch.device("cpu"))
    assert state["step"] == 3 and np.array_equal(state["rng"]["numpy"][1], np.random.get_state()[1])
    hostile = tmp_path / "hostile.pt"
    torch.save({"step": 3, "payload": pickle.PickleError}, hostile)  # an arbitrary class: refused
    with pytest.raises(pickle.UnpicklingError):
        load_training_state(hostile, torch.device("cpu"))


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of N x 4 xyxy arrays."""
    return sv.box_iou_batch(a.astype(float), b.astype(float)).diagonal()


def test_visible_boxes_tight_recovers_the_objects_behind_loose_visible_labels(
        synthetic_dataset_root, loose_visible_dataset_root, tmp_path):
    manifest = tmp_path / "splits.json"
    names = sorted(clip.name for clip in dataset.find_clips(synthetic_dataset_root))
    manifest.write_text(json.dumps({"splits": {"train": names, "val": names, "test": names}}))

    def load(root, boxes):
        args = train.parse_args(["--data", str(root), "--splits", str(manifest), "--stride", "5", "--epochs", "1",
                                 "--visible-boxes", boxes, "--out", str(tmp_path / "unused")])
        return {clip.name: clip for clip in train.load_clips(args, "train", workers=1)[0]}

    truth, loose, tight = (load(synthetic_dataset_root, "dataset"), load(loose_visible_dataset_root, "dataset"),
                           load(loose_visible_dataset_root, "tight"))
    for name, clip in truth.items():
        true_boxes, loose_boxes, tight_boxes = (np.concatenate(c[name].boxes) for c in (truth, loose, tight))
        if clip.modality == "IR":                    # thermal labels are tight already: never touched
            np.testing.assert_array_equal(tight_boxes, loose_boxes)
            continue
        np.testing.assert_array_equal(tight_boxes[:, 0], true_boxes[:, 0])
        assert _box_iou(loose_boxes[:, 1:], true_boxes[:, 1:]).mean() < 0.35
        assert _box_iou(tight_boxes[:, 1:], true_boxes[:, 1:]).mean() > 0.6, name


@pytest.mark.slow
def test_gssam_twin_continues_a_baseline_from_where_it_is(tiny_data, tmp_path):
    """--init with the plain YOLOX's checkpoint: the identity-start twin's first step sees the same
    crops and computes the same loss as the baseline continuing from that checkpoint."""
    root, manifest = tiny_data
    torch.set_num_threads(1)

    def argv(model: str, out: Path) -> list[str]:
        args = _argv(root, manifest, out)
        args[args.index("--model") + 1] = model
        return args

    assert train.main(argv("yolox-nano", tmp_path / "start")) == 0
    init = ["--init", str(tmp_path / "start" / "best.pt")]
    assert train.main(argv("yolox-nano", tmp_path / "base") + init) == 0
    assert train.main(argv("yolox-nano-gssam-sigresid-p1", tmp_path / "twin") + init) == 0
    base, twin = (torch.load(tmp_path / run / "last.pt", weights_only=False) for run in ("base", "twin"))
    assert twin["history"]["loss"][0] == pytest.approx(base["history"]["loss"][0], rel=1e-5)
    assert twin["history"]["loss"][1:] != base["history"]["loss"][1:]  # the gate has moved since
    assert train.main(argv("yolox-tiny-gssam-sigresid-p1", tmp_path / "other") + init) == 2


def test_clip_weights_set_the_share_of_crops_and_equal_weights_keep_the_original_draws():
    """A user's clip (2 frames, one box) weighted to 70 % against nine base frames of two boxes each gets
    70 % of the positive crops and 70 % of the background crops, however many objects each side's frames
    hold; equal weights leave the uniform draws (the exact-resume contract) alone."""
    one = _clip_with_box((150, 100, 162, 110))
    user = train.ClipFrames("user", "IR", np.repeat(one.frames, 2, axis=0), [0, 1],
                            [one.boxes[0], np.zeros((0, 5), np.float32)])
    two = np.array([[0, 150, 100, 162, 110], [0, 50, 50, 60, 60]], np.float32)
    base = train.ClipFrames("base", "IR", np.repeat(one.frames, 9, axis=0), list(range(9)), [two] * 9)
    augment = train.Augment(crop=64)
    equal = train.CropSampler([user, base], (512, 640), augment, torch.device("cpu"), on_device=False)
    assert equal.frame_cdf is None and equal.object_cdf is None
    user.weight, base.weight = 0.7 / 2, 0.3 / 9
    for positive in (1.0, 0.0):
        sampler = train.CropSampler([user, base], (512, 640), train.Augment(crop=64, positive_fraction=positive),
                                    torch.device("cpu"), on_device=False)
        plans = sampler.draw(4000, np.random.default_rng(0))
        user_share = np.mean([plan["row"] < 2 for plan in plans])   # the user's frames are rows 0-1 of the group
        assert abs(user_share - 0.7) < 0.03, (positive, user_share)


def test_patience_stops_when_the_last_evaluations_do_not_beat_the_best_before_them():
    from pipeline.offline.train.loop import _stalled

    def stalled(scores, patience):
        trainer = SimpleNamespace(history={"epochs": [{"map50_95": s} for s in scores]})
        return _stalled(trainer, SimpleNamespace(patience=patience))

    assert not stalled([0.1, 0.2, 0.3], 2)
    assert stalled([0.1, 0.3, 0.2, 0.25], 2)
    assert not stalled([0.1, 0.3, 0.2, 0.31], 2)
    assert not stalled([0.3, 0.2], 2)          # not enough evaluations yet
    assert not stalled([0.3, 0.2, 0.1], None)  # no patience: never


def test_trains_on_a_yolo_folder_split_by_clip(tmp_path):
    """`train --data` on another label format: its clips held out by clip (val never shares a clip with
    train), classes mapped, a run of a few steps that validates on the held-out clip."""
    from pipeline.offline.train.sources import load_clips

    import cv2

    folder = tmp_path / "yolo"
    (folder / "data.yaml").parent.mkdir()
    (folder / "data.yaml").write_text("names: [uav, gull]\n")
    for clip, seed in (("north", 31), ("south", 32), ("east", 33)):
        (folder / "images" / clip).mkdir(parents=True)
        (folder / "labels" / clip).mkdir(parents=True)
        for index, (image, boxes) in enumerate(synthetic.render_clip(seed, 6, (160, 128), "V")):
            cv2.imwrite(str(folder / "images" / clip / f"{index:03d}.png"), image)
            (folder / "labels" / clip / f"{index:03d}.txt").write_text("".join(
                f"{b.class_id} {(b.x + b.w / 2) / 160} {(b.y + b.h / 2) / 128} {b.w / 160} {b.h / 128}\n" for b in boxes))
    argv = ["--data", str(folder), "--classes", "uav=drone,gull=bird", "--stride", "1", "--epochs", "1",
            "--epoch-steps", "2", "--batch", "2", "--crop", "64", "--input-size", "128x160", "--val-per-clip", "2",
            "--warmup-steps", "1", "--workers", "1", "--threads", "1", "--no-progress", "--out", str(tmp_path / "run")]
    settings = train.parse_args(argv)
    parts = {split: {c.name for c in load_clips(settings, split, 1)[0]} for split in ("train", "val")}
    assert len(parts["val"]) == 1 and len(parts["train"]) == 2 and not parts["val"] & parts["train"]
    assert train.main(argv) == 0
    log = json.loads((tmp_path / "run" / "log.json").read_text())
    assert log["steps"] == 2 and log["epochs"][0]["map50_95"] >= 0
    bad = train.main(argv[:2] + ["--classes", "uav=drone", "--epochs", "1", "--out", str(tmp_path / "bad")])
    assert bad == 2    # 'gull' is neither mapped nor a model class: one line, no traceback


def test_camera_effects_change_the_pixels_not_the_boxes_and_repeat_exactly():
    """--camera-effects: crops look like another camera's (palettes, noise, stripes, vignetting, blur),
    their targets are the same boxes, the same generator state cuts the same crops, and the proxy
    camera's palettes are never drawn."""
    from pipeline.offline.train import camera

    clip = _clip_with_box((150, 100, 162, 110), shape=(256, 320, 3))
    clip.frames[0, ..., 1] = 90   # a visible (colour) frame
    plain = train.CropSampler([clip], (512, 640), train.Augment(crop=96, contrast=(1, 1), brightness=0, gray=0),
                              torch.device("cpu"), on_device=False)
    effects = train.Augment(crop=96, contrast=(1, 1), brightness=0, gray=0, camera_effects=1.0)
    sampler = train.CropSampler([clip], (512, 640), effects, torch.device("cpu"), on_device=False)
    plans = sampler.draw(64, np.random.default_rng(3))
    assert all(plan["camera"] for plan in plans)
    assert {"palette", "invert", "noise", "stripes", "vignette", "blur"} <= set(plans[0]["camera"])
    assert any(p["camera"]["palette"] >= 0 for p in plans) and any(p["camera"]["noise"] for p in plans)
    plain_plans = [{k: v for k, v in plan.items() if k != "camera"} for plan in plans]
    for with_effects, without in zip(plans, plain_plans):
        np.testing.assert_array_equal(sampler._targets(with_effects), plain._targets(without))
    images, again = sampler.render(plans), sampler.render(plans)
    torch.testing.assert_close(images, again)
    assert images.min() >= 0 and images.max() <= 255
    changed = (images - plain.render(plain_plans)).abs().mean(dim=(1, 2, 3))
    assert (changed > 1).float().mean() > 0.5
    assert not set(camera.HELD_OUT_PALETTES) & set(camera.TRAIN_PALETTES)
    assert "camera" not in plain.draw(1, np.random.default_rng(0))[0]   # off: not one extra draw


def test_a_run_ended_by_patience_is_not_trained_on_by_resume(tiny_data, tmp_path, monkeypatch):
    """--resume of a run --patience stopped: no step more, best.pt untouched, the log says why."""
    from pipeline.offline.train import loop

    scores = iter([0.5, 0.4, 0.3, 0.9, 0.9, 0.9])   # falls after the first evaluation; would rise later
    monkeypatch.setattr(loop, "evaluate_model",
                        lambda *a, **k: {"map50_95": next(scores), "map50": 0.5, "per_modality": {}})
    root, manifest = tiny_data
    torch.set_num_threads(1)
    argv = _argv(root, manifest, tmp_path / "run")
    argv[argv.index("--epochs") + 1] = "6"
    argv[argv.index("--epoch-steps") + 1] = "1"
    assert train.main(argv + ["--patience", "2"]) == 0
    best = (tmp_path / "run" / "best.pt").read_bytes()
    log = json.loads((tmp_path / "run" / "log.json").read_text())
    assert log["steps"] == 3 and log["stopped_early_by_patience"]
    assert train.main(argv + ["--patience", "2", "--resume"]) == 0
    log = json.loads((tmp_path / "run" / "log.json").read_text())
    assert log["steps"] == 3 and log["stopped_early_by_patience"] and log["status"] == "done"
    assert (tmp_path / "run" / "best.pt").read_bytes() == best


@pytest.mark.slow
def test_a_gssam_lr_scale_on_a_model_without_gssam_does_not_bind_its_resume(tiny_data, tmp_path):
    """The scale acts on GSSAM modules only: a plain YOLOX run records 1, so resuming it without the
    option (nothing would differ) is not refused; a GSSAM run records the scale it trained with."""
    root, manifest = tiny_data
    plain = [a if a != "yolox-nano-gssam-sigres-p1" else "yolox-nano" for a in _argv(root, manifest, tmp_path / "a")]
    plain[plain.index("--epochs") + 1] = "1"
    assert train.main(plain + ["--gssam-lr-scale", "20"]) == 0
    assert torch.load(tmp_path / "a" / "last.pt", weights_only=False)["recipe"]["gssam_lr_scale"] == 1.0
    gssam = _argv(root, manifest, tmp_path / "b")
    gssam[gssam.index("--epochs") + 1] = "1"
    assert train.main(gssam + ["--gssam-lr-scale", "20"]) == 0
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=False)["recipe"]["gssam_lr_scale"] == 20.0


def test_modality_trains_on_one_camera_only(synthetic_dataset_root, tmp_path):
    """--modality V / IR (cross-camera numbers): only that camera's clips are loaded; a camera the
    split lacks is one line, not an empty run."""
    manifest = tmp_path / "splits.json"
    names = sorted(clip.name for clip in dataset.find_clips(synthetic_dataset_root))
    manifest.write_text(json.dumps({"splits": {"train": names, "val": names, "test": names}}))

    def modalities(*extra):
        args = train.parse_args(["--data", str(synthetic_dataset_root), "--splits", str(manifest), "--stride", "10",
                                 "--epochs", "1", "--out", str(tmp_path / "unused"), *extra])
        return sorted(clip.modality for clip in train.load_clips(args, "train", workers=1)[0])

    assert modalities() == ["IR", "V", "V"]
    assert modalities("--modality", "V") == ["V", "V"]
    assert modalities("--modality", "IR") == ["IR"]
    with pytest.raises(train.TrainError, match="no synthetic clip of that camera"):
        train.only_modality([_clip_with_box((10, 10, 20, 20))], "V", "synthetic")  # an IR clip


def test_modality_decodes_only_that_cameras_clips_and_binds_a_resume(synthetic_dataset_root, tmp_path, monkeypatch):
    from pipeline.offline.train import sources
    from pipeline.offline.train.trainer import started_recipe

    manifest = tmp_path / "splits.json"
    names = sorted(clip.name for clip in dataset.find_clips(synthetic_dataset_root))
    manifest.write_text(json.dumps({"splits": {"train": names, "val": names, "test": names}}))
    decoded = []
    monkeypatch.setattr(sources, "_pool_map", lambda function, tasks, workers: decoded.extend(t[0].name for t in tasks) or [])
    args = train.parse_args(["--data", str(synthetic_dataset_root), "--splits", str(manifest), "--epochs", "1",
                             "--modality", "IR", "--out", str(tmp_path / "unused")])
    with pytest.raises(train.TrainError):                   # nothing decoded (stubbed): no clip of that camera
        train.load_clips(args, "train", workers=1)
    assert decoded == ["IR_DRONE_902"]                      # the visible clips were never decoded
    current = {"modality": "IR"}
    assert started_recipe({"recipe": {"camera_effects": 0.0}}, current)["modality"] is None   # states of before
    assert started_recipe({"recipe": {"modality": "V"}}, current)["modality"] == "V"

@pytest.mark.slow
def test_freeze_bn_keeps_the_start_models_batchnorm_statistics(tiny_data, tmp_path):
    """--freeze-bn (adapt's fine-tunes): the running statistics stay those of --init while the weights,
    BatchNorm scale and shift included, train; without it the statistics move."""
    root, manifest = tiny_data
    torch.set_num_threads(1)
    assert train.main(_argv(root, manifest, tmp_path / "start")) == 0
    init = ["--init", str(tmp_path / "start" / "best.pt")]

    def state(run, *extra):
        assert train.main(_argv(root, manifest, tmp_path / run) + init + list(extra)) == 0
        return torch.load(tmp_path / run / "last.pt", weights_only=False)["model"]

    import models

    start = models.load_checkpoint(tmp_path / "start" / "best.pt")[0].state_dict()
    frozen, free = state("frozen", "--freeze-bn"), state("free")
    stats = [k for k in start if k.endswith("running_mean")]
    assert stats and all(torch.allclose(frozen[k].float(), start[k].float(), atol=1e-3) for k in stats)
    assert not all(torch.allclose(free[k].float(), start[k].float(), atol=1e-3) for k in stats)
    scales = [k.replace("running_mean", "weight") for k in stats]
    assert not all(torch.equal(frozen[k].float(), start[k].float()) for k in scales)   # scale and shift train
