"""GSSAM: the Global-Sampling Spatial-Attention Module (Lu et al., LOP231933; spec: ../shared/docs/gssam.md).

Pipeline of the module on a feature map F (B x C x H x W):

    c = conv3x3_n( ... relu(bn(conv3x3_1(relu(bn(conv1x1(F)))))) )    # 1 channel, B x 1 x H x W
    p = maxpool_{r x r, stride r, ceil_mode}(c)                           # N = ceil(H/r) * ceil(W/r) points
    D(x) = sum_j |c(x) - p_j|                                             # sampled_contrast(c, r)
    A = norm(D / N);  output = F * A   (or F + F * A for the residual variants)

(D / N rather than D: see ``Gssam``'s ``mean_contrast``; min-max "std" is unaffected.)

Variants (``VARIANTS``):
    std      A = min-max rescale of D per image into [0, 1]
    sig      A = sigmoid(D)
    sigres   output = F + F * sigmoid(D)                (the paper's best, "Sigmoid-Res")
    conv     ablation: no sampling/comparison, A = sigmoid(c)
    convres  ablation: output = F + F * sigmoid(c)
    sigresid  identity start: output = F + g * F * sigmoid(a * D/N + b), g = 0, a = 1, b = 0 at init
    convresid identity start of the ablation: output = F + g * F * sigmoid(c), g = 0 at init

The two "...id" variants are this project's departure from the paper (see ``Gssam``): at
initialisation they return F exactly, so a GSSAM twin can start from a trained plain YOLOX
(``models.yolox_gssam.twin_state_dict``, ``models.load_weights_into``) with equal outputs, and the
affine lets the attention fall below the input (sigmoid(D/N) alone lives in [0.5, 1) because D >= 0).

The paper's rule "receptive field of the conv stack >= pooling kernel" is 2n + 1 >= r;
a configuration that breaks it raises ``GssamConfigError``.

``sampled_contrast`` computes D exactly in O((HW + N) log N) time and O(HW + N) memory:
with the points sorted ascending (q_1 <= ... <= q_N), prefix sums S_k and the counts
k_lt(x) = #{q < c(x)}, k_le(x) = #{q <= c(x)},

    D(x) = c(x) * (k_lt + k_le - N) + S_N - S_{k_lt} - S_{k_le}

which equals the broadcast sum and, through autograd, gives the same gradients including ties
(a tied term |c - q| contributes 0 to both the value and the (sub)gradient, as torch's abs does).
The paper's broadcast form (an H*W*N intermediate) is kept and used where it is faster (small N).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

VARIANTS = ("std", "sig", "sigres", "conv", "convres", "sigresid", "convresid")
# variants whose output equals the input at initialisation (a learnable gate starting at 0)
IDENTITY_START = ("sigresid", "convresid")

# The broadcast form is used while its H*W*N intermediate has at most this many elements (and so
# costs at most a few MiB): scripts/model_report.py's crossover table (inference forward, 2-core CPU)
# has it faster up to N = 64 on 40x40 and 80x80 maps and up to N = 16 on 160x160 (H*W*N ~ 0.4 M);
# the exact form has a fixed overhead of tens of microseconds and grows as HW*log N.
BROADCAST_MAX_ELEMENTS = 1 << 19
# Index type of the exported search: int32 halves the memory traffic of its gather/compare/add steps
# (ONNX GatherElements takes int32 indices).
SEARCH_INDEX_DTYPE = torch.int32
# Exports compute D from a table of this many cells (sampled_contrast_interpolated) instead of the
# exact sort and search: ONNX Runtime 9.6 -> 8.5 ms a frame for the default model (2 threads, one A/B
# run; docs/benchmarks.md), outputs within 2e-6 of the exact ones; 64 cells measured as fast and 10x
# less close. 0: the exact search.
EXPORT_CONTRAST_KNOTS = 256


class GssamConfigError(ValueError):
    """A GSSAM configuration that breaks the paper's rules (one-line message)."""


def sample_points(c: torch.Tensor, pool: int) -> torch.Tensor:
    """The benchmark points: r x r, stride r max-pool covering the whole map, as B x N."""
    pooled = F.max_pool2d(c, kernel_size=pool, stride=pool, ceil_mode=True)
    return pooled.flatten(1)


def sampled_contrast_broadcast(c: torch.Tensor, pool: int) -> torch.Tensor:
    """The paper's form: |c - p| broadcast to B x HW x N, summed over the points."""
    points = sample_points(c, pool)
    values = c.flatten(1)
    contrast = (values.unsqueeze(2) - points.unsqueeze(1)).abs().sum(dim=2)
    return contrast.view_as(c)


def _counts_below(points_sorted: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(k_lt, k_le): how many sorted points are < and <= each value, with one binary search.

    k_le comes from the search; where the value equals the point just below it (a tie), k_lt is the
    first index of that run of equal points (a cummax over run starts, O(N)), else k_lt = k_le.
    """
    k_le = torch.searchsorted(points_sorted, values, right=True)
    count = points_sorted.shape[1]
    run_start = torch.ones_like(points_sorted, dtype=torch.bool)
    run_start[:, 1:] = points_sorted[:, 1:] != points_sorted[:, :-1]
    positions = torch.arange(count, device=points_sorted.device).expand_as(points_sorted)
    first_of_run = torch.cummax(torch.where(run_start, positions, 0), dim=1).values
    below = (k_le - 1).clamp_min(0)
    tied = (k_le > 0) & (torch.gather(points_sorted, 1, below) == values)
    k_lt = torch.where(tied, torch.gather(first_of_run, 1, below), k_le)
    return k_lt, k_le


def _counts_by_unrolled_search(points_sorted: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Count of points <= each value by a branchless binary search unrolled into ceil(log2(N + 1))
    gather-compare-add steps (ONNX has no searchsorted; a joint sort of H*W + N values measured
    3-4x slower in ONNX Runtime, and Where on int64 ~2x slower than the multiply-add used here).

    The points are padded with +inf to a power of two so every probe is in range. Ties count as
    "<=", which gives k_le; the value of D does not depend on that (a tied term contributes 0), so
    this serves inference export only.
    """
    count = points_sorted.shape[1]
    levels = max(1, math.ceil(math.log2(count + 1)))
    padded = F.pad(points_sorted, (0, (1 << levels) - count), value=float("inf"))
    k = torch.zeros_like(values, dtype=SEARCH_INDEX_DTYPE)
    for level in reversed(range(levels)):
        step = 1 << level
        probe = torch.gather(padded, 1, k + (step - 1))
        k = k + (probe <= values).to(SEARCH_INDEX_DTYPE) * step
    return k, k


def _tie_aware_counts(points_sorted: torch.Tensor, values: torch.Tensor,
                      needs_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(k_lt, k_le); without gradients one count serves both (ties do not change the value)."""
    if torch.onnx.is_in_onnx_export():
        return _counts_by_unrolled_search(points_sorted, values)
    if needs_grad:
        return _counts_below(points_sorted, values)
    k = torch.searchsorted(points_sorted, values, right=True)
    return k, k


def sampled_contrast_exact(c: torch.Tensor, pool: int) -> torch.Tensor:
    """D via sort + binary search + prefix sums: O((HW + N) log N) time, O(HW + N) memory."""
    dtype = c.dtype
    c32 = c.to(torch.promote_types(dtype, torch.float32))  # prefix sums of N values: no fp16 sums
    points_sorted, _ = torch.sort(sample_points(c32, pool), dim=1)
    values = c32.flatten(1).contiguous()
    count = points_sorted.shape[1]
    prefix = F.pad(torch.cumsum(points_sorted, dim=1), (1, 0))  # S_0 = 0 ... S_N
    total = prefix[:, -1:]
    k_lt, k_le = _tie_aware_counts(points_sorted, values, c.requires_grad and torch.is_grad_enabled())
    if k_lt is k_le:  # inference: two table lookups per position, D = c * (2k - N) + (S_N - 2 S_k)
        slope = (2 * torch.arange(count + 1, device=c.device, dtype=values.dtype) - count).expand_as(prefix)
        contrast = values * torch.gather(slope, 1, k_le) + torch.gather(total - 2 * prefix, 1, k_le)
    else:
        contrast = (values * (k_lt + k_le - count).to(values.dtype) + total
                    - torch.gather(prefix, 1, k_lt) - torch.gather(prefix, 1, k_le))
    return contrast.view_as(c).to(dtype)


def sampled_contrast_interpolated(c: torch.Tensor, pool: int, knots: int) -> torch.Tensor:
    """D read from a table: exact at ``knots + 1`` evenly spaced values lo = t_0 < ... < t_K = hi
    spanning the points, linear between them, and exact outside [lo, hi] (there D is the line
    S_N - N c below and N c - S_N above). No sort and no search: one affine map, a floor and two
    lookups per position, where the exact search takes ten gather-compare-add rounds.

    D is convex and piecewise linear in c (its slope rises by 2 at each point), so the chord over a
    cell of width h = (hi - lo) / K holding m points is off by at most m h / 2: at most h / 2 on D / N
    anywhere (all points in one cell), and ~(hi - lo) / (2 K^2) where they spread. That bound is in
    exact arithmetic; in float32 add rounding of the order of the exact form's own (both sum N terms).
    A NaN in c gives NaN there, as the exact form does. Inference only (the gradient of a table lookup
    is not the module's); used in ONNX exports (``EXPORT_CONTRAST_KNOTS``).
    """
    dtype = c.dtype
    c32 = c.to(torch.promote_types(dtype, torch.float32))
    points = sample_points(c32, pool)                                    # B x N
    count = points.shape[1]
    low, high = points.amin(1, keepdim=True), points.amax(1, keepdim=True)
    width = (high - low).clamp_min(1e-12) / knots                        # B x 1 (all points equal: one tiny cell)
    grid = torch.arange(knots + 1, dtype=c32.dtype, device=c.device)
    at_knots = (low + width * grid).unsqueeze(2).sub(points.unsqueeze(1)).abs().sum(2)  # B x (K+1), exact
    # D = P[cell] + Q[cell] * u in the grid's units u = (c - lo) / h + 1, cell = clip(floor(u), 0, K + 1):
    # cell 0 is below lo, cells 1..K the table, cell K+1 above hi
    rise = at_knots[:, 1:] - at_knots[:, :-1]                            # Q inside, per unit of u
    total = points.sum(1, keepdim=True)
    below_at_low, outside_slope = total - count * low, count * width     # D(lo) from below, |dD/du| outside
    slope = torch.cat([-outside_slope, rise, outside_slope], 1)
    offset = torch.cat([below_at_low + outside_slope, at_knots[:, :-1] - rise * grid[1:],
                        at_knots[:, -1:] - outside_slope * (knots + 1)], 1)
    values = c32.flatten(1)
    units = (values - low) / width + 1
    index_dtype = SEARCH_INDEX_DTYPE if torch.onnx.is_in_onnx_export() else torch.int64
    finite_units = torch.where(units == units, units, torch.zeros_like(units))  # NaN: any cell, D stays NaN
    cell = torch.floor(finite_units).clamp(0, knots + 1).to(index_dtype)
    contrast = torch.gather(offset, 1, cell) + torch.gather(slope, 1, cell) * units
    return contrast.view_as(c).to(dtype)


def num_points(height: int, width: int, pool: int) -> int:
    """N = ceil(H/r) * ceil(W/r): a partial last block counts."""
    return math.ceil(height / pool) * math.ceil(width / pool)


def sampled_contrast(c: torch.Tensor, pool: int) -> torch.Tensor:
    """D(x) = sum_j |c(x) - p_j| over the points of an r x r, stride-r max-pool (ceil mode).

    c: B x 1 x H x W. Returns B x 1 x H x W. Exact; picks the faster of the two equal forms by the size
    H*W*N of the broadcast. An ONNX export reads D from a table where the broadcast is too large
    (``sampled_contrast_interpolated``; ``EXPORT_CONTRAST_KNOTS = 0`` exports the exact search).
    """
    if c.dim() != 4 or c.shape[1] != 1:
        raise ValueError(f"sampled_contrast expects B x 1 x H x W, got {tuple(c.shape)}")
    if pool < 1:
        raise ValueError(f"sampled_contrast pool must be >= 1, got {pool}")
    height, width = c.shape[2], c.shape[3]
    if height * width * num_points(height, width, pool) <= BROADCAST_MAX_ELEMENTS:
        return sampled_contrast_broadcast(c, pool)
    if torch.onnx.is_in_onnx_export() and EXPORT_CONTRAST_KNOTS:
        return sampled_contrast_interpolated(c, pool, EXPORT_CONTRAST_KNOTS)
    return sampled_contrast_exact(c, pool)


def context_convs_for_pool(pool: int) -> int:
    """Fewest 3x3 convs n with receptive field 2n + 1 >= r (at least one)."""
    return max(1, math.ceil((pool - 1) / 2))


def pool_for_feature_side(side: int, target_points_per_side: int = 20) -> int:
    """The stage rule: r = max(2, side // 20), so the pool yields ~10-20 points per side at 640."""
    return max(2, side // target_points_per_side)


def _fold_batchnorm(conv: nn.Conv2d, batchnorm: nn.BatchNorm2d) -> nn.Conv2d:
    """conv followed by eval BN -> one conv of the same class (torch's fuse_conv_bn_weights)."""
    weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, batchnorm.running_mean, batchnorm.running_var,
                                        batchnorm.eps, batchnorm.weight, batchnorm.bias)
    conv.weight, conv.bias = weight, bias
    return conv


def _cpu_inference(x: torch.Tensor) -> bool:
    """True where the hand-written single-channel kernels apply (CPU, no autograd, not exporting)."""
    return x.device.type == "cpu" and not torch.is_grad_enabled() and not torch.jit.is_tracing()


class ChannelReduction(nn.Conv2d):
    """The 1x1 C -> 1 reduction. On CPU at inference and in ONNX exports it runs as one matmul:
    single-output 1x1 convs measured 10-30x slower in oneDNN (2 threads) and ~10x in ONNX Runtime.
    Otherwise (training, CUDA) the plain nn.Conv2d. An export for OpenVINO sets ``export_as_matmul``
    False: OpenVINO keeps feature maps channels-last, and the matmul's planar view cost it a
    reorder of the whole map (4.4 ms of 16 a frame, measured) where its 1x1 conv costs ~0.2 ms."""

    export_as_matmul = True

    def __init__(self, channels: int):
        super().__init__(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        exporting = torch.onnx.is_in_onnx_export()
        as_matmul = (exporting and self.export_as_matmul) or (not exporting and _cpu_inference(x) and x.is_contiguous())
        if not as_matmul:
            return super().forward(x)
        batch, channels, height, width = x.shape
        reduced = torch.matmul(self.weight.view(1, channels), x.view(batch, channels, height * width))
        return reduced.add_(self.bias.view(1, 1, 1)).view(batch, 1, height, width)


class SingleChannelConv3x3(nn.Conv2d):
    """1 -> 1 channel 3x3 conv (padding 1). On CPU at inference it runs as nine shifted
    multiply-adds, ~3x faster than the generic conv kernels on a single channel. In ONNX exports
    it is a 1x3x3 Conv3d on a B x 1 x 1 x H x W view: ONNX Runtime rewrites every 2-D Conv into
    its blocked NCHWc layout, which pads one channel to a block of 16 and converts back after each
    conv (~5x slower for the stack, measured); 3-D convs are left alone. An export for OpenVINO sets
    ``export_as_conv3d`` False: there the plain 2-D conv measured ~3 % faster a frame (bf16 9.46 -> 9.12
    and 9.79 -> 9.47 ms in two interleaved A/B runs, GSSAM's nodes -16 to -20 %; fp32 -0 to -3 %).
    Elsewhere (training, CUDA) it is the plain nn.Conv2d. Same parameters either way."""

    export_as_conv3d = True

    def __init__(self):
        super().__init__(1, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export() and not self.export_as_conv3d:
            return super().forward(x)
        if torch.onnx.is_in_onnx_export():  # x: B x 1 x 1 x H x W from Gssam._context_map, or B x 1 x H x W
            flat = x.dim() == 4
            out = F.conv3d(x.unsqueeze(2) if flat else x, self.weight.unsqueeze(2), self.bias, padding=(0, 1, 1))
            return out.squeeze(2) if flat else out
        if not _cpu_inference(x):
            return super().forward(x)
        height, width = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1))
        weight = self.weight[0, 0]
        out = self.bias.view(1, 1, 1, 1).expand_as(x).clone()
        for row in range(3):
            for column in range(3):
                out.addcmul_(padded[..., row:row + height, column:column + width], weight[row, column])
        return out


class Gssam(nn.Module):
    """GSSAM on C channels with n context convs and an r x r sampling pool.

    ``num_convs`` (n) and ``pool`` (r) must satisfy 2n + 1 >= r (the paper's rule).
    ``mean_contrast`` (default True) feeds D / N to the normalisation instead of D: the sum grows
    with N, i.e. with the input size (N differs ~5x between 256-px training crops and 640-px
    inference) and, at N in the hundreds, drives sigmoid(D) to 1 with zero gradient from the start.
    Dividing by the constant N keeps the paper's comparison and its ordering (min-max "std" is
    unchanged by it); ``mean_contrast=False`` gives the paper's literal sigmoid(D).

    The identity-start variants (``IDENTITY_START``) add three learnable scalars: ``gate`` g
    (starts at 0, so the module is an identity and a trained YOLOX keeps its outputs),
    ``contrast_scale`` a and ``contrast_shift`` b (start at 1 and 0, the paper's sigmoid(D/N)),
    which let the attention fall below 0.5 and so suppress background; g may turn negative too.
    """

    def __init__(self, channels: int, num_convs: int, pool: int, variant: str = "sigres",
                 mean_contrast: bool = True):
        super().__init__()
        if variant not in VARIANTS:
            raise GssamConfigError(f"unknown GSSAM variant {variant!r}; valid: {', '.join(VARIANTS)}")
        if num_convs < 1 or pool < 1:
            raise GssamConfigError(f"GSSAM needs n >= 1 and r >= 1, got n={num_convs}, r={pool}")
        if 2 * num_convs + 1 < pool:
            raise GssamConfigError(
                f"GSSAM receptive field 2n+1={2 * num_convs + 1} < pool r={pool} (n={num_convs}); "
                f"use n >= {context_convs_for_pool(pool)}"
            )
        self.variant = variant
        self.num_convs = num_convs
        self.pool = pool
        self.mean_contrast = mean_contrast
        self.compares = variant in ("std", "sig", "sigres", "sigresid")
        self.residual = variant in ("sigres", "convres", "sigresid", "convresid")
        self.identity_start = variant in IDENTITY_START
        self.context = self._make_context(channels, num_convs)
        if self.identity_start:
            self.gate = nn.Parameter(torch.zeros(1))
        if variant == "sigresid":
            self.contrast_scale = nn.Parameter(torch.ones(1))
            self.contrast_shift = nn.Parameter(torch.zeros(1))

    @staticmethod
    def _make_context(channels: int, num_convs: int) -> nn.Sequential:
        layers: list[nn.Module] = [ChannelReduction(channels)]
        for _ in range(num_convs):
            layers += [nn.BatchNorm2d(1), nn.ReLU(inplace=True), SingleChannelConv3x3()]
        return nn.Sequential(*layers)

    def _context_map(self, features: torch.Tensor) -> torch.Tensor:
        """c = the context stack on F. Exported, the 1-channel map stays B x 1 x 1 x H x W from the
        first 3x3 conv to the last (see SingleChannelConv3x3), so each conv meets its ReLU directly
        (ONNX Runtime fuses the pair) instead of through a Squeeze/Unsqueeze."""
        reduction, *rest = self.context
        three_d = all(layer.export_as_conv3d for layer in rest if isinstance(layer, SingleChannelConv3x3))
        if (not torch.onnx.is_in_onnx_export() or not three_d
                or any(isinstance(layer, nn.BatchNorm2d) for layer in rest)):
            return self.context(features)  # (an unfused stack keeps 4-D: BatchNorm2d takes no 5-D input)
        c = reduction(features).unsqueeze(2)
        for layer in rest:
            c = layer(c)
        return c.squeeze(2)

    def attention(self, features: torch.Tensor) -> torch.Tensor:
        """A: B x 1 x H x W, broadcast over channels (before the residual)."""
        c = self._context_map(features)
        if not self.compares:
            return torch.sigmoid(c)
        contrast = sampled_contrast(c, self.pool)
        if self.variant == "std":
            low = contrast.amin(dim=(2, 3), keepdim=True)
            high = contrast.amax(dim=(2, 3), keepdim=True)
            return (contrast - low) / (high - low).clamp_min(1e-6)
        if self.mean_contrast:
            contrast = contrast / num_points(c.shape[2], c.shape[3], self.pool)
        if self.variant == "sigresid":
            contrast = contrast * self.contrast_scale.to(contrast.dtype) + self.contrast_shift.to(contrast.dtype)
        return torch.sigmoid(contrast)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        attention = self.attention(features)
        if self.identity_start:  # g = 0: F * 1 exactly, the input unchanged (in the features' dtype)
            attention = attention * self.gate.to(attention.dtype)
        if self.residual:
            attention = attention + 1  # F + F*A as one multiply over C channels
        return features * attention

    @torch.no_grad()
    def fuse(self) -> "Gssam":
        """Fold each BatchNorm into the conv before it (eval only; same outputs, fewer ops)."""
        layers = list(self.context)
        fused: list[nn.Module] = []
        for layer in layers:
            if isinstance(layer, nn.BatchNorm2d):
                fused[-1] = _fold_batchnorm(fused[-1], layer)
            else:
                fused.append(layer)
        self.context = nn.Sequential(*fused)
        return self

    def extra_repr(self) -> str:
        return f"variant={self.variant}, n={self.num_convs}, r={self.pool}, mean_contrast={self.mean_contrast}"
