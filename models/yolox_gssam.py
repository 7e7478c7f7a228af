"""YOLOX and YOLOX-GSSAM built by name on the yolox package's own network, loss and decoding.

Names: ``yolox-{nano,tiny,s,m,l,x}`` (plain YOLOX, the yolox package's named configs: nano is
depthwise with width 0.25 / depth 0.33, tiny 0.375/0.33, s 0.5/0.33, m 0.75/0.67, l 1/1, x 1.25/1.33)
and ``yolox-SIZE-gssam-VARIANT-pPOSITION`` with VARIANT in std, sig, sigres, conv, convres (the
paper's) or sigresid, convresid (identity start: see models/gssam.py) and POSITION 1 or 2, e.g.
``yolox-nano-gssam-sigres-p1``.

The model is the yolox package's ``YoloxModule`` (a plain nn.Module):

* train mode: ``model(images, targets)`` with images B x 3 x H x W raw 0-255 BGR floats and targets
  B x max_labels x 5 rows ``[class, cx, cy, w, h]`` in input pixels (all-zero rows are padding)
  returns a dict ``{"total_loss", "iou_loss", "l1_loss", "conf_loss", "cls_loss", "num_fg"}``;
  ``total_loss`` is the scalar tensor to backpropagate, ``l1_loss`` is the float 0.0 unless
  ``model.head.use_l1`` is set, ``num_fg`` is a float (mean foreground anchors per label).
* eval mode: ``model(images)`` returns B x A x (5 + num_classes) decoded predictions
  ``[cx, cy, w, h, objectness, class scores...]`` (sigmoids applied), A = HW/64 + HW/256 + HW/1024.
  With ``model.head.decode_in_inference = False`` it returns the undecoded outputs (used by ONNX export).

H and W must be multiples of 32 (rectangular inputs are fine).

GSSAM placement (spec section "Where it goes in YOLOX"): GSSAM1..5 belong to the backbone stages
stem, dark2, dark3, dark4, dark5 of ``CspDarknet``; the FPN reads dark3/dark4/dark5 from the
backbone's output dict. Each stage is wrapped in ``AttendedStage`` (no yolox code is forked):

* position 1: ``stage = AttendedStage(block, attend_output=GSSAM_k)`` -> the attended output is
  what the backbone hands to both the FPN and the next stage.
* position 2: GSSAM_k is applied to the *input* of stage k+1:
  ``stage_{k+1} = AttendedStage(block, attend_input=GSSAM_k)`` -> the FPN receives stage k's raw
  output, only the next stage sees attended features. dark5 has no next stage (the FPN is its only
  reader), so in position 2 GSSAM5 would be an identity and is not built: p2 has GSSAM1..4.

n and r per stage (the paper leaves them open): from the stage's feature side at the reference
input 640 (stride 2, 4, 8, 16, 32 -> sides 320, 160, 80, 40, 20):
``r = max(2, side // 20)`` (a pool grid of 10-20 points per side at 640; 4-10 on the 256-320
training crops) and ``n = max(1, ceil((r - 1) / 2))``, the fewest 3x3 convs whose receptive
field 2n + 1 covers r. Result: stem r=16 n=8, dark2 r=8 n=4, dark3 r=4 n=2, dark4 r=2 n=1,
dark5 r=2 n=1. Modules are fixed at build time, so r does not change with the input size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from yolox.config import YoloxConfig

from .gssam import VARIANTS, Gssam, context_convs_for_pool, pool_for_feature_side
from .simota import BatchedSimOTAHead

SIZES = ("nano", "tiny", "s", "m", "l", "x")
POSITIONS = (1, 2)
STAGES = ("stem", "dark2", "dark3", "dark4", "dark5")
STAGE_STRIDES = (2, 4, 8, 16, 32)
STAGE_WIDTHS = (64, 128, 256, 512, 1024)  # output channels at width 1.0
REFERENCE_INPUT = 640


@dataclass(frozen=True)
class ModelSpec:
    size: str
    variant: str | None = None  # None: plain YOLOX
    position: int | None = None

    @property
    def name(self) -> str:
        base = f"yolox-{self.size}"
        return base if self.variant is None else f"{base}-gssam-{self.variant}-p{self.position}"


def model_names() -> list[str]:
    """Every valid model name."""
    names = [ModelSpec(size).name for size in SIZES]
    names += [ModelSpec(s, v, p).name for s in SIZES for v in VARIANTS for p in POSITIONS]
    return names


def parse_model_name(name: str) -> ModelSpec:
    """'yolox-nano-gssam-sigres-p1' -> ModelSpec; ValueError (one line) for anything else."""
    specs = {n: None for n in model_names()}
    if not isinstance(name, str) or name not in specs:
        raise ValueError(
            f"unknown model name {name!r}; valid: yolox-{{{','.join(SIZES)}}} with optional suffix "
            f"-gssam-{{{','.join(VARIANTS)}}}-p{{1,2}} (e.g. yolox-nano-gssam-sigres-p1)"
        )
    parts = name.split("-")
    if len(parts) == 2:
        return ModelSpec(parts[1])
    return ModelSpec(parts[1], parts[3], int(parts[4][1:]))


def stage_plan(stage_index: int) -> tuple[int, int]:
    """(n, r) for GSSAM at the given backbone stage: see the module docstring."""
    side = REFERENCE_INPUT // STAGE_STRIDES[stage_index]
    pool = pool_for_feature_side(side)
    return context_convs_for_pool(pool), pool


class AttendedStage(nn.Module):
    """A backbone stage with optional GSSAM on its input (position 2) and/or output (position 1)."""

    def __init__(self, block: nn.Module, attend_input: nn.Module | None = None,
                 attend_output: nn.Module | None = None):
        super().__init__()
        self.block = block
        self.attend_input = attend_input
        self.attend_output = attend_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attend_input is not None:
            x = self.attend_input(x)
        x = self.block(x)
        if self.attend_output is not None:
            x = self.attend_output(x)
        return x


def _yolox_config(size: str, num_classes: int) -> YoloxConfig:
    config = YoloxConfig.get_named_config(f"yolox-{size}")
    config.num_classes = num_classes
    return config


def insert_gssam(darknet: nn.Module, width: float, variant: str, position: int) -> None:
    """Wrap the CspDarknet stages in place with GSSAM1..5 at the given position."""
    for index, stage in enumerate(STAGES):
        if position == 2 and index == len(STAGES) - 1:
            break  # GSSAM5 at position 2 would feed nothing
        num_convs, pool = stage_plan(index)
        gssam = Gssam(int(STAGE_WIDTHS[index] * width), num_convs, pool, variant)
        if position == 1:
            setattr(darknet, stage, AttendedStage(getattr(darknet, stage), attend_output=gssam))
        else:
            following = STAGES[index + 1]
            setattr(darknet, following, AttendedStage(getattr(darknet, following), attend_input=gssam))


def _init_like_yolox(model: nn.Module) -> None:
    """yolox's BN settings (eps 1e-3, momentum 0.03) for the added modules too."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps = 1e-3
            module.momentum = 0.03


def build_model(name: str, num_classes: int) -> nn.Module:
    """Build a freshly initialised model by name (see module docstring); returns it in train mode."""
    spec = parse_model_name(name)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    config = _yolox_config(spec.size, num_classes)
    model = config.get_model()
    # the same head module, with its training loss on the batched SimOTA assignment (models/simota.py)
    model.head.__class__ = BatchedSimOTAHead
    if spec.variant is not None:
        insert_gssam(model.backbone.backbone, config.width, spec.variant, spec.position)
        _init_like_yolox(model)
    model.model_name = spec.name
    model.train()
    return model


def baseline_name(name: str) -> str:
    """The plain YOLOX a model is the twin of: 'yolox-nano-gssam-sigresid-p1' -> 'yolox-nano'."""
    return ModelSpec(parse_model_name(name).size).name


def twin_state_dict(baseline_state: dict, twin: nn.Module) -> dict:
    """A plain YOLOX's weights renamed for its GSSAM twin, plus the twin's own GSSAM parameters.

    Wrapping a backbone stage in ``AttendedStage`` moves its weights under ``.block``; everything
    else (neck, head, unwrapped stages) keeps its name. The GSSAM modules keep their freshly built
    values, so an identity-start twin computes what the baseline computes.
    """
    prefix = "backbone.backbone."
    wrapped = {stage for stage in STAGES if isinstance(getattr(twin.backbone.backbone, stage), AttendedStage)}
    state = {}
    for key, value in baseline_state.items():
        stage = key[len(prefix):].split(".", 1)[0] if key.startswith(prefix) else None
        if stage in wrapped:
            key = f"{prefix}{stage}.block.{key[len(prefix) + len(stage) + 1:]}"
        state[key] = value
    own = {k: v for k, v in twin.state_dict().items() if ".attend_input." in k or ".attend_output." in k}
    return {**state, **own}


def gssam_modules(model: nn.Module) -> list[tuple[str, Gssam]]:
    """(qualified name, module) for every GSSAM in a model, in stage order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, Gssam)]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def feature_sides(input_size: tuple[int, int]) -> list[tuple[int, int]]:
    """(H, W) of each backbone stage's output for an input size."""
    h, w = input_size
    return [(math.ceil(h / s), math.ceil(w / s)) for s in STAGE_STRIDES]


# YOLOX's Focus concatenates the four pixel phases of each 2 x 2 block in this order of (row, column)
FOCUS_PHASES = ((0, 0), (1, 0), (0, 1), (1, 1))


class StridedFocus(nn.Module):
    """YOLOX's Focus (four strided slices, a concat, a 3x3 conv) as the one 6x6 stride-2 conv it
    equals: a 3x3 conv over the phase channels at half resolution reads, for each phase (dy, dx)
    and tap (i, j), the input pixel (2(y + i - 1) + dy, 2(x + j - 1) + dx), i.e. tap (2i + dy, 2j + dx)
    of a 6x6 window starting 2 pixels above and left. Same outputs (to float rounding); the slices
    and concat cost ONNX Runtime ~1 ms a frame and OpenVINO runs them in reference kernels."""

    def __init__(self, focus: nn.Module):
        super().__init__()
        conv = getattr(focus.conv, "conv", None)
        plain = (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
                 and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
                 and conv.in_channels % len(FOCUS_PHASES) == 0 and hasattr(focus.conv, "bn"))
        if not plain:
            raise ValueError(f"StridedFocus expects an unfused Focus with a 3x3 stride-1 conv, got {focus.conv}")
        phase_channels = conv.in_channels // len(FOCUS_PHASES)
        weight = conv.weight.new_zeros(conv.out_channels, phase_channels, 6, 6)
        for phase, (dy, dx) in enumerate(FOCUS_PHASES):
            taps = conv.weight[:, phase * phase_channels:(phase + 1) * phase_channels]
            weight[:, :, dy::2, dx::2] = taps
        self.conv = nn.Conv2d(phase_channels, conv.out_channels, 6, stride=2, padding=2, bias=conv.bias is not None)
        self.conv.weight.data.copy_(weight)
        if conv.bias is not None:
            self.conv.bias.data.copy_(conv.bias)
        self.bn, self.act = focus.conv.bn, focus.conv.act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


@torch.no_grad()
def focus_as_strided_conv(model: nn.Module) -> nn.Module:
    """Replace every yolox Focus of ``model`` in place by its StridedFocus (inference graphs)."""
    from yolox.models.network_blocks import Focus

    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, Focus):
                setattr(parent, name, StridedFocus(child))
    return model


@torch.no_grad()
def fuse_for_inference(model: nn.Module) -> nn.Module:
    """Eval model with every Conv+BN folded (yolox's fuse_model, plus the GSSAM context stacks)."""
    from yolox.utils import fuse_model

    model = fuse_model(model.eval())
    for _, gssam in gssam_modules(model):
        gssam.fuse()
    return model
