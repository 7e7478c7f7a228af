"""models/yolox_gssam.py: build by name, every variant x position, GSSAM placement, n/r rule."""
from __future__ import annotations

import pytest
import torch

from models import build_model
from models.gssam import VARIANTS, Gssam
from models.yolox_gssam import (
    SIZES,
    STAGES,
    baseline_name,
    StridedFocus,
    count_parameters,
    focus_as_strided_conv,
    fuse_for_inference,
    gssam_modules,
    model_names,
    parse_model_name,
    stage_plan,
    twin_state_dict,
)

NUM_CLASSES = 3
LOSS_KEYS = {"total_loss", "iou_loss", "l1_loss", "conf_loss", "cls_loss", "num_fg"}


def _images_and_targets(batch=2, height=64, width=96):
    torch.manual_seed(0)
    images = torch.rand(batch, 3, height, width) * 255
    targets = torch.zeros(batch, 4, 5)
    targets[0, 0] = torch.tensor([1.0, 30.0, 20.0, 12.0, 10.0])  # [class, cx, cy, w, h] in pixels
    targets[1, :2] = torch.tensor([[0.0, 60.0, 40.0, 8.0, 8.0], [2.0, 20.0, 50.0, 16.0, 9.0]])
    return images, targets


def _anchors(height, width):
    return sum((height // s) * (width // s) for s in (8, 16, 32))


NANO_NAMES = [n for n in model_names() if n.startswith("yolox-nano")]


@pytest.mark.parametrize("name", NANO_NAMES)
def test_every_variant_and_position_trains_and_infers(name):
    model = build_model(name, num_classes=NUM_CLASSES)
    images, targets = _images_and_targets()
    losses = model(images, targets)
    assert set(losses) == LOSS_KEYS
    losses["total_loss"].backward()
    assert torch.isfinite(losses["total_loss"])
    gssam_grads = [p.grad for _, g in gssam_modules(model) for p in g.parameters()]
    assert all(g is not None for g in gssam_grads)
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    assert outputs.shape == (2, _anchors(64, 96), 5 + NUM_CLASSES)


@pytest.mark.slow
@pytest.mark.parametrize("size", [s for s in SIZES if s != "nano"])
def test_every_size_builds_and_infers(size):
    for name in (f"yolox-{size}", f"yolox-{size}-gssam-sigres-p1"):
        model = build_model(name, num_classes=NUM_CLASSES).eval()
        with torch.no_grad():
            outputs = model(torch.rand(1, 3, 64, 64) * 255)
        assert outputs.shape == (1, _anchors(64, 64), 5 + NUM_CLASSES)


def test_sizes_follow_yolox_widths_and_depthwise_nano():
    nano, small = build_model("yolox-nano", 1), build_model("yolox-s", 1)
    assert nano.backbone.backbone.stem.conv.conv.out_channels == 16  # 64 * 0.25
    assert small.backbone.backbone.stem.conv.conv.out_channels == 32  # 64 * 0.5
    assert any(type(m).__name__ == "DWConv" for m in nano.modules())
    assert not any(type(m).__name__ == "DWConv" for m in small.modules())


@pytest.mark.parametrize("bad", ["yolox", "yolox-nano-gssam", "yolox-q", "yolox-s-gssam-sig-p3",
                                 "yolox-s-gssam-soft-p1", "YOLOX-S", None])
def test_unknown_names_give_one_line_listing_valid_names(bad):
    with pytest.raises(ValueError) as info:
        build_model(bad, num_classes=2)
    message = str(info.value)
    assert "\n" not in message and "nano" in message and "sigres" in message


def test_bad_num_classes():
    with pytest.raises(ValueError, match="num_classes"):
        build_model("yolox-nano", num_classes=0)


def test_names_round_trip():
    assert len(model_names()) == len(SIZES) * (1 + len(VARIANTS) * 2)
    for name in model_names():
        assert parse_model_name(name).name == name


def test_stage_rule_respects_receptive_field():
    plans = [stage_plan(i) for i in range(len(STAGES))]
    assert plans == [(8, 16), (4, 8), (2, 4), (1, 2), (1, 2)]
    assert all(2 * n + 1 >= r for n, r in plans)


def _capture_position(name):
    """Run eval forward; return (raw stage outputs, backbone outputs handed to the FPN, stage inputs)."""
    model = build_model(name, num_classes=NUM_CLASSES).eval()
    darknet = model.backbone.backbone
    raw, stage_inputs = {}, {}
    for stage in STAGES:
        wrapper = getattr(darknet, stage)
        block = wrapper.block if hasattr(wrapper, "block") else wrapper
        block.register_forward_hook(lambda m, i, o, s=stage: raw.__setitem__(s, o))
        block.register_forward_pre_hook(lambda m, i, s=stage: stage_inputs.__setitem__(s, i[0]))
    handed = {}
    darknet.out_features = tuple(STAGES)  # hand every stage out, as the FPN sees dark3..5
    darknet.register_forward_hook(lambda m, i, o: handed.update(o))
    with torch.no_grad():
        darknet(torch.rand(1, 3, 64, 64) * 255)
    return model, raw, handed, stage_inputs


def test_position1_attends_before_the_fpn_takes_the_features():
    model, raw, handed, stage_inputs = _capture_position("yolox-nano-gssam-sigres-p1")
    assert len(gssam_modules(model)) == 5
    for index, stage in enumerate(STAGES):
        assert not torch.equal(handed[stage], raw[stage]), stage  # the FPN sees attended features
        if index + 1 < len(STAGES):
            assert torch.equal(stage_inputs[STAGES[index + 1]], handed[stage])


def test_position2_fpn_receives_unattended_features():
    model, raw, handed, stage_inputs = _capture_position("yolox-nano-gssam-sigres-p2")
    assert len(gssam_modules(model)) == 4  # GSSAM5 after dark5 would feed nothing
    darknet = model.backbone.backbone
    for index, stage in enumerate(STAGES):
        assert torch.equal(handed[stage], raw[stage]), stage  # the FPN sees the raw output
        if index + 1 < len(STAGES):
            following = STAGES[index + 1]
            gssam = getattr(darknet, following).attend_input
            assert isinstance(gssam, Gssam)
            with torch.no_grad():
                assert torch.equal(stage_inputs[following], gssam(raw[stage]))  # next stage: attended
            assert not torch.equal(stage_inputs[following], raw[stage])


def test_gssam_adds_few_parameters():
    baseline = count_parameters(build_model("yolox-s", 1))
    added = count_parameters(build_model("yolox-s-gssam-sigres-p1", 1)) - baseline
    assert 0 < added < 0.001 * baseline


def test_fuse_for_inference_keeps_outputs():
    model = build_model("yolox-nano-gssam-sigres-p1", num_classes=NUM_CLASSES)
    images, targets = _images_and_targets()
    model(images, targets)  # one train step's BN statistics update
    model.eval()
    with torch.no_grad():
        before = model(images)
        after = fuse_for_inference(model)(images)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name", ["yolox-nano", "yolox-s-gssam-sigres-p1"])
def test_focus_as_one_strided_conv_computes_what_focus_computes(name):
    model = build_model(name, num_classes=NUM_CLASSES)
    images, targets = _images_and_targets()
    model(images, targets)
    model.eval()
    for parameter in model.backbone.backbone.stem.parameters():  # no zero or symmetric taps to hide a wrong map
        parameter.data.normal_()
    with torch.no_grad():  # the stem's own output: an untrained head's barely depends on the input
        stem_before, before = model.backbone.backbone.stem(images), model(images)
        rewritten = focus_as_strided_conv(model)
        stem_after, after = rewritten.backbone.backbone.stem(images), rewritten(images)
    assert sum(isinstance(m, StridedFocus) for m in rewritten.modules()) == 1
    assert stem_before.abs().mean() > 0.1
    torch.testing.assert_close(stem_after, stem_before, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-3)


def test_strided_focus_refuses_a_focus_it_does_not_equal():
    from yolox.models.network_blocks import Focus

    with pytest.raises(ValueError, match="unfused Focus with a 3x3 stride-1 conv"):
        StridedFocus(Focus(3, 8, ksize=1))
    fused = Focus(3, 8, ksize=3)
    del fused.conv.bn  # as yolox's fuse_model leaves it
    with pytest.raises(ValueError, match="unfused Focus"):
        StridedFocus(fused)


@pytest.mark.parametrize("name", ["yolox-nano-gssam-sigresid-p1", "yolox-nano-gssam-sigresid-p2",
                                  "yolox-nano-gssam-convresid-p1"])
def test_identity_start_twin_of_a_trained_baseline_computes_what_it_computes(name):
    torch.manual_seed(15)
    baseline = build_model("yolox-nano", NUM_CLASSES)
    baseline.train()
    images, targets = _images_and_targets()
    baseline(images, targets)  # BN running stats away from their defaults, like a trained model
    twin = build_model(name, NUM_CLASSES)
    twin.load_state_dict(twin_state_dict(baseline.state_dict(), twin))
    baseline.eval(), twin.eval()
    with torch.no_grad():
        assert torch.equal(twin(images), baseline(images))
    assert baseline_name(name) == "yolox-nano"


def test_twin_state_dict_moves_wrapped_stages_under_block_only():
    twin = build_model("yolox-nano-gssam-sigres-p2", NUM_CLASSES)
    state = twin_state_dict(build_model("yolox-nano", NUM_CLASSES).state_dict(), twin)
    assert set(state) == set(twin.state_dict())
    assert any(k.startswith("backbone.backbone.stem.") and ".block." not in k for k in state)  # p2: stem unwrapped
    assert any(k.startswith("backbone.backbone.dark2.block.") for k in state)
