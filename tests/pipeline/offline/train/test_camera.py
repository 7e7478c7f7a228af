"""pipeline.offline.train.camera: each effect does what its name says (the sampler's use of them is in
test_train.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.offline.train import camera

NONE = {"palette": -1, "invert": False, "tint": None, "noise": 0.0, "stripes": 0.0, "vignette": 0.0, "blur": 0,
        "gamma": 1.0, "jpeg": 0, "seed": 0}


def _ramp() -> torch.Tensor:
    """A 3 x 64 x 64 grey ramp (0..252 left to right) with a bright 6x6 object."""
    image = torch.arange(64, dtype=torch.float32).mul(4).expand(3, 64, 64).clone()
    image[:, 30:36, 30:36] = 255
    return image


def test_no_effect_is_the_identity():
    image = _ramp()
    torch.testing.assert_close(camera.apply_effects(image, NONE, camera.palette_tables()), image)


def test_visible_style_maps_brightness_between_ground_and_sky_colours():
    ground, sky = [40.0, 60.0, 50.0], [230.0, 200.0, 180.0]
    out = camera.apply_effects(_ramp(), {**NONE, "tint": [ground, sky]}, camera.palette_tables())
    torch.testing.assert_close(out[:, 0, 0], torch.tensor(ground))             # black -> ground colour
    torch.testing.assert_close(out[:, 32, 32], torch.tensor(sky))              # white -> sky colour
    assert (out[0, 5, 1:] - out[0, 5, :-1] >= 0).all()                          # order of brightness kept


def test_visible_style_is_drawn_for_thermal_crops_only_and_both_polarities():
    rng = np.random.default_rng(0)
    thermal = [camera.draw_effects(rng, 10, thermal=True) for _ in range(400)]
    visible = [camera.draw_effects(rng, 10, thermal=False) for _ in range(400)]
    tints = [e["tint"] for e in thermal if e["tint"]]
    assert 60 < len(tints) < 140 and not any(e["tint"] for e in visible)
    assert {sum(t[0]) < sum(t[1]) for t in tints} == {True, False}   # dark sky (white-hot source) too
    assert all(e["palette"] < 0 and not e["invert"] for e in thermal if e["tint"])   # one recolouring at a time


def test_gamma_bends_the_tones_and_keeps_black_and_white():
    out = camera.apply_effects(_ramp(), {**NONE, "gamma": 1.5}, camera.palette_tables())
    assert out[0, 0, 0] == 0 and out[0, 32, 32] == pytest.approx(255)
    assert out[0, 0, 32] == pytest.approx(255 * (128 / 255) ** 1.5, abs=0.01)


def test_jpeg_compresses_like_an_encoder_the_lower_the_quality_the_larger_the_error():
    rng = np.random.default_rng(1)
    image = torch.from_numpy(rng.uniform(60, 200, (3, 64, 64)).astype(np.float32))
    tables = camera.palette_tables()
    errors = [float((camera.apply_effects(image, {**NONE, "jpeg": q}, tables) - image).abs().mean())
              for q in (70, 15)]
    assert 0 < errors[0] < errors[1]
    out = camera.apply_effects(image, {**NONE, "jpeg": 30}, tables)
    assert out.shape == image.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, camera.apply_effects(image, {**NONE, "jpeg": 30}, tables))   # repeatable


def test_draws_are_repeatable_and_cover_every_effect():
    first = [camera.draw_effects(np.random.default_rng(7), 10, thermal=True) for _ in range(2)]
    assert first[0] == first[1]
    many = [camera.draw_effects(np.random.default_rng(s), 10, thermal=True) for s in range(300)]
    for key in ("palette", "invert", "tint", "noise", "stripes", "vignette", "blur", "jpeg"):
        assert any(e[key] not in (-1, 0, 0.0, False, None) for e in many), key
    assert any(e["gamma"] != 1.0 for e in many)
    assert all(15 <= e["jpeg"] <= 70 for e in many if e["jpeg"])


def test_a_run_with_older_effects_cannot_resume_with_the_new_draws():
    """Version 1 effects drew fewer numbers per crop: resuming such a run now would cut other crops."""
    from pipeline.offline.train.trainer import started_recipe

    now = {"l1_loss": False, "small_object_power": 0.0, "visible_boxes": "tight", "camera_effects": 0.5,
           "effects_version": camera.EFFECTS_VERSION, "copy_paste": 0.0, "gssam_lr_scale": 1.0,
           "modality": None, "freeze_bn": False}     # as Trainer.recipe() has them now
    old = {"recipe": {"l1_loss": False, "small_object_power": 0.0, "visible_boxes": "tight", "camera_effects": 0.5}}
    assert started_recipe(old, now) != now
    plain_old = {"recipe": {**old["recipe"], "camera_effects": 0.0}}
    assert started_recipe(plain_old, {**now, "camera_effects": 0.0, "effects_version": 0}) == \
        {**now, "camera_effects": 0.0, "effects_version": 0}        # no effects: still resumes
    assert started_recipe({"recipe": now}, now) == now


def test_letterbox_padding_keeps_its_grey_under_camera_effects():
    """Crops cut at a frame's edge hold letterbox padding; inference pads with 114 whatever the camera,
    so the effects colour the frame's pixels only."""
    from pipeline.offline import train
    from models.letterbox import PAD_VALUE

    frame = np.full((1, 256, 320, 3), 60, np.uint8)
    clip = train.ClipFrames("edge", "V", frame, [0], [np.zeros((0, 5), np.float32)])
    augment = train.Augment(crop=96, positive_fraction=0.0, camera_effects=1.0)
    sampler = train.CropSampler([clip], (512, 640), augment, torch.device("cpu"), on_device=False)
    plans = sampler.draw(64, np.random.default_rng(0))
    images = sampler.render(plans)
    padded = 0
    for image, plan in zip(images, plans):
        x1, y1, x2, y2 = (int(round(v)) for v in sampler._frame_area(plan))
        outside = torch.ones(96, 96, dtype=torch.bool)
        outside[y1:y2, x1:x2] = False
        padded += int(outside.any())
        assert (image[:, outside] == PAD_VALUE).all()
    assert padded > 10
