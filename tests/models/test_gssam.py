"""models/gssam.py: sampled_contrast (exact vs the paper's broadcast form) and the GSSAM module."""
from __future__ import annotations

import math

import numpy as np

import pytest
import torch

from models import gssam
from models.gssam import (
    Gssam,
    GssamConfigError,
    sampled_contrast,
    sampled_contrast_broadcast,
    sampled_contrast_exact,
    sampled_contrast_interpolated,
)

# (batch, height, width, pool): N = 1 (pool >= map, and a 1x1 map), non-divisible H and W,
# pool 1 (every position is a point), rectangular maps.
SHAPES = [
    (1, 1, 1, 1),
    (2, 7, 5, 8),
    (2, 13, 17, 4),
    (1, 20, 20, 1),
    (3, 9, 31, 3),
    (2, 33, 45, 7),
]


def _value_and_grad(function, c: torch.Tensor, pool: int, weights: torch.Tensor):
    leaf = c.detach().clone().requires_grad_(True)
    value = function(leaf, pool)
    (grad,) = torch.autograd.grad((value * weights).sum(), leaf)
    return value.detach(), grad


def _assert_same_as_broadcast(c: torch.Tensor, pool: int, function=sampled_contrast_exact):
    weights = torch.randn_like(c)
    expected_value, expected_grad = _value_and_grad(sampled_contrast_broadcast, c, pool, weights)
    value, grad = _value_and_grad(function, c, pool, weights)
    torch.testing.assert_close(value, expected_value, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("batch,height,width,pool", SHAPES)
def test_exact_equals_broadcast_values_and_gradients(batch, height, width, pool):
    torch.manual_seed(height * 31 + width + pool)
    c = torch.randn(batch, 1, height, width, dtype=torch.float64)
    _assert_same_as_broadcast(c, pool)


@pytest.mark.parametrize("batch,height,width,pool", SHAPES)
def test_exact_equals_broadcast_with_ties(batch, height, width, pool):
    """Few distinct values: many c(x) equal to points, and points equal to each other."""
    torch.manual_seed(pool)
    c = torch.randint(0, 3, (batch, 1, height, width)).double()
    _assert_same_as_broadcast(c, pool)


def test_float32_matches_within_float_tolerance():
    torch.manual_seed(0)
    c = torch.randn(2, 1, 40, 52)
    weights = torch.randn_like(c)
    expected_value, expected_grad = _value_and_grad(sampled_contrast_broadcast, c, 5, weights)
    value, grad = _value_and_grad(sampled_contrast_exact, c, 5, weights)
    torch.testing.assert_close(value, expected_value, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-4)


def test_dispatcher_is_exact_on_both_sides_of_the_crossover(monkeypatch):
    torch.manual_seed(1)
    c = torch.randn(2, 1, 24, 24, dtype=torch.float64)
    for threshold in (0, 10**9):  # force the exact form, then the broadcast form
        monkeypatch.setattr(gssam, "BROADCAST_MAX_ELEMENTS", threshold)
        _assert_same_as_broadcast(c, 3, function=sampled_contrast)


def test_no_grad_path_equals_grad_path():
    torch.manual_seed(2)
    c = torch.randint(0, 4, (2, 1, 19, 23)).double()
    with torch.no_grad():
        fast = sampled_contrast_exact(c, 4)
    torch.testing.assert_close(fast, sampled_contrast_broadcast(c, 4), rtol=1e-12, atol=1e-12)


def test_counts_match_two_binary_searches():
    torch.manual_seed(9)
    points = torch.sort(torch.randint(0, 6, (3, 40)).float(), dim=1).values
    values = torch.randint(-1, 8, (3, 300)).float()
    k_lt, k_le = gssam._counts_below(points, values)
    assert torch.equal(k_lt, torch.searchsorted(points, values, right=False))
    assert torch.equal(k_le, torch.searchsorted(points, values, right=True))


@pytest.mark.parametrize("num_points", [1, 2, 3, 30, 31, 32, 33])
def test_unrolled_search_counts_equal_searchsorted(num_points):
    """The ONNX-export count (unrolled binary search) is #(q <= c), ties and out-of-range values included."""
    torch.manual_seed(num_points)
    points = torch.sort(torch.randint(0, 5, (2, num_points)).float(), dim=1).values
    values = torch.randint(-1, 7, (2, 200)).float()
    k, _ = gssam._counts_by_unrolled_search(points, values)
    assert torch.equal(k, torch.searchsorted(points, values, right=True))


@pytest.mark.parametrize("batch, height, width, pool", SHAPES)
@pytest.mark.parametrize("knots", [4, 256])
def test_interpolated_contrast_is_within_its_bound(batch, height, width, pool, knots):
    """|D_table - D| / N <= h / 2 with h = (max point - min point) / K, per image."""
    torch.manual_seed(height * knots)
    c = torch.randn(batch, 1, height, width, dtype=torch.float64) * 3
    exact, table = sampled_contrast_exact(c, pool), sampled_contrast_interpolated(c, pool, knots)
    points = gssam.sample_points(c, pool)
    bound = (points.amax(1) - points.amin(1)) / knots / 2 + 1e-9
    error = ((table - exact).abs().flatten(1) / points.shape[1]).amax(1)
    assert torch.all(error <= bound)


@pytest.mark.parametrize("knots", [4, 256])
def test_interpolated_contrast_is_the_chord_of_the_exact_one_between_its_knots(knots):
    """Inside [lo, hi] the table gives linear interpolation of the exact D between K + 1 even knots."""
    torch.manual_seed(knots)
    c = torch.randn(2, 1, 24, 30, dtype=torch.float64) * 2
    table = sampled_contrast_interpolated(c, 4, knots)
    for image in range(2):
        points = gssam.sample_points(c[image:image + 1], 4)[0]
        grid = points.min() + (points.max() - points.min()) / knots * torch.arange(knots + 1, dtype=torch.float64)
        at_knots = (grid[:, None] - points[None]).abs().sum(1)
        values = c[image].flatten()
        inside = (values >= points.min()) & (values <= points.max())
        chord = np.interp(values[inside].numpy(), grid.numpy(), at_knots.numpy())
        np.testing.assert_allclose(table[image].flatten()[inside].numpy(), chord, rtol=1e-9, atol=1e-9)


def test_interpolated_contrast_carries_nan_like_the_exact_one():
    c = torch.randn(1, 1, 16, 16)
    c[0, 0, 3, 3] = float("nan")
    table, exact = sampled_contrast_interpolated(c, 4, 8), sampled_contrast_exact(c, 4)
    assert torch.equal(torch.isnan(table), torch.isnan(exact))


def test_interpolated_contrast_is_exact_outside_the_points_and_when_all_points_tie():
    c = torch.linspace(-4, 4, 9 * 9, dtype=torch.float64).view(1, 1, 9, 9)
    c[0, 0, 0, 0] = -50.0  # far below every point (the block's max is higher)
    c[0, 0, 8, 8] = 60.0   # a point, and the highest value
    exact = sampled_contrast_exact(c, 3)
    table = sampled_contrast_interpolated(c, 3, 8)
    points = gssam.sample_points(c, 3)
    outside = (c.flatten(1) <= points.amin()) | (c.flatten(1) >= points.amax())
    assert outside.sum() > 1
    torch.testing.assert_close(table.flatten(1)[outside], exact.flatten(1)[outside])
    flat = torch.full((1, 1, 8, 8), 2.0)
    flat[0, 0, 3, 3] = -1.0  # below every point (each 8x8 block's max is 2)
    torch.testing.assert_close(sampled_contrast_interpolated(flat, 4, 16), sampled_contrast_exact(flat, 4))


def test_point_count_includes_partial_blocks():
    c = torch.zeros(1, 1, 10, 7)
    assert gssam.sample_points(c, 4).shape == (1, math.ceil(10 / 4) * math.ceil(7 / 4))
    assert gssam.num_points(10, 7, 4) == 6


def test_partial_last_block_is_sampled():
    """A maximum hidden in the partial last block must be a point (contributes to D)."""
    c = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    c[0, 0, 4, 4] = 10.0
    contrast = sampled_contrast_exact(c, 4)
    assert contrast[0, 0, 0, 0] == pytest.approx(10.0)  # |0 - 10| from the corner block's point


def test_fp16_input_returns_fp16_computed_in_float32():
    torch.manual_seed(4)
    c = torch.randn(1, 1, 16, 16)
    exact = sampled_contrast_exact(c.half(), 2)
    assert exact.dtype == torch.float16
    torch.testing.assert_close(exact.float(), sampled_contrast_broadcast(c.half().float(), 2), rtol=2e-3, atol=0.1)


@pytest.mark.parametrize("bad", [torch.zeros(1, 2, 4, 4), torch.zeros(4, 4)])
def test_sampled_contrast_rejects_non_single_channel_maps(bad):
    with pytest.raises(ValueError, match="B x 1 x H x W"):
        sampled_contrast(bad, 2)


def test_gssam_refuses_receptive_field_below_pool():
    with pytest.raises(GssamConfigError, match=r"2n\+1=5 < pool r=8") as info:
        Gssam(8, num_convs=2, pool=8)
    assert "\n" not in str(info.value)


def test_gssam_refuses_unknown_variant():
    with pytest.raises(GssamConfigError, match="valid: std, sig, sigres, conv, convres"):
        Gssam(8, num_convs=1, pool=2, variant="softmax")


@pytest.mark.parametrize("variant", gssam.VARIANTS)
def test_variants_forward_backward(variant):
    torch.manual_seed(5)
    module = Gssam(6, num_convs=2, pool=4, variant=variant)
    features = torch.randn(2, 6, 15, 18, requires_grad=True)
    output = module(features)
    output.sum().backward()
    assert output.shape == features.shape
    assert features.grad is not None and torch.isfinite(features.grad).all()
    assert all(p.grad is not None for p in module.parameters())


def test_variant_formulas():
    torch.manual_seed(6)
    features = torch.randn(2, 4, 12, 10)
    modules = {v: Gssam(4, 2, 4, v).eval() for v in gssam.VARIANTS}
    for variant in ("sig", "sigres"):
        modules[variant].load_state_dict(modules["std"].state_dict())
    with torch.no_grad():
        c = modules["std"].context(features)
        contrast = sampled_contrast_broadcast(c, 4)
        sig = torch.sigmoid(contrast / gssam.num_points(12, 10, 4))
        low, high = contrast.amin((2, 3), keepdim=True), contrast.amax((2, 3), keepdim=True)
        torch.testing.assert_close(modules["std"](features), features * (contrast - low) / (high - low))
        torch.testing.assert_close(modules["sig"](features), features * sig)
        torch.testing.assert_close(modules["sigres"](features), features + features * sig)
        conv_c = modules["convres"].context(features)
        torch.testing.assert_close(modules["convres"](features), features + features * torch.sigmoid(conv_c))


def test_mean_contrast_off_is_the_papers_literal_sigmoid():
    torch.manual_seed(7)
    module = Gssam(3, 1, 2, "sig", mean_contrast=False).eval()
    features = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        expected = features * torch.sigmoid(sampled_contrast_broadcast(module.context(features), 2))
        torch.testing.assert_close(module(features), expected)


def test_fuse_keeps_outputs():
    torch.manual_seed(8)
    module = Gssam(5, num_convs=3, pool=6, variant="sigres")
    module.train()
    module(torch.randn(4, 5, 20, 20))  # move BN running stats off their defaults
    module.eval()
    features = torch.randn(2, 5, 20, 20)
    with torch.no_grad():
        before = module(features)
        module.fuse()
        after = module(features)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules())
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_single_channel_conv_fast_path_equals_conv2d():
    torch.manual_seed(10)
    conv = gssam.SingleChannelConv3x3()
    x = torch.randn(3, 1, 11, 17)
    expected = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(conv(x), expected)  # grad mode: the plain conv


def test_channel_reduction_fast_path_equals_conv2d():
    torch.manual_seed(11)
    conv = gssam.ChannelReduction(7)
    x = torch.randn(2, 7, 9, 13)
    expected = torch.nn.functional.conv2d(x, conv.weight, conv.bias)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv(x), expected)


@pytest.mark.parametrize("variant", gssam.IDENTITY_START)
def test_identity_start_variants_return_their_input_exactly(variant):
    torch.manual_seed(11)
    module = Gssam(6, num_convs=2, pool=4, variant=variant)
    features = torch.randn(2, 6, 15, 18) * 50
    assert torch.equal(module(features), features)  # train mode
    with torch.no_grad():
        assert torch.equal(module.eval()(features), features)


def test_identity_start_learns_its_gate_first_then_the_context():
    torch.manual_seed(12)
    module = Gssam(4, num_convs=2, pool=4, variant="sigresid")
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2)
    features = torch.randn(2, 4, 12, 12)
    module(features).pow(2).sum().backward()
    assert module.gate.grad.abs().item() > 0
    assert module.context[0].weight.grad.abs().sum().item() == 0  # g = 0 hides the attention's inputs
    optimizer.step()
    optimizer.zero_grad()
    module(features).pow(2).sum().backward()
    assert module.context[0].weight.grad.abs().sum().item() > 0
    assert module.contrast_scale.grad.abs().item() > 0 and module.contrast_shift.grad.abs().item() > 0


def test_identity_start_formula_and_attention_below_one_half():
    torch.manual_seed(13)
    module = Gssam(4, 2, 4, "sigresid").eval()
    with torch.no_grad():
        module.gate.fill_(-0.7)
        module.contrast_scale.fill_(2.0)
        module.contrast_shift.fill_(-3.0)
        features = torch.randn(2, 4, 12, 10)
        contrast = sampled_contrast_broadcast(module.context(features), 4) / gssam.num_points(12, 10, 4)
        attention = torch.sigmoid(2.0 * contrast - 3.0)
        torch.testing.assert_close(module(features), features * (1 - 0.7 * attention))
        assert module.attention(features).min().item() < 0.5  # the paper's sigmoid(D/N) never goes below


def test_identity_start_fuses_and_the_literal_variants_are_unchanged():
    torch.manual_seed(14)
    module = Gssam(5, num_convs=3, pool=6, variant="sigresid")
    module.train()
    module(torch.randn(4, 5, 20, 20))
    with torch.no_grad():
        module.gate.fill_(0.5)
    module.eval()
    features = torch.randn(2, 5, 20, 20)
    with torch.no_grad():
        before = module(features)
        after = module.fuse()(features)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert not hasattr(Gssam(5, 3, 6, "sigres"), "gate")
