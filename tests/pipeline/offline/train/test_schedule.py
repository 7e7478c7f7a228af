"""pipeline.offline.train.schedule: optimizer groups (the GSSAM lr scale), lr schedule."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from models.gssam import Gssam
from pipeline.offline.train.schedule import lr_factor, make_optimizer


class _TwinLike(nn.Module):
    """A conv (the trained network) followed by an identity-start GSSAM (the new layers)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gssam = Gssam(8, num_convs=2, pool=4, variant="sigresid")

    def forward(self, x):
        return self.gssam(self.conv(x))


def _one_step(model: nn.Module, scale: float) -> dict[str, float]:
    """Each parameter's change after one AdamW step at lr 1e-3 on a fixed loss."""
    torch.manual_seed(0)
    optimizer = make_optimizer(model, "adamw", 1e-3, 0.05, gssam_lr_scale=scale)
    for group in optimizer.param_groups:   # as Trainer.train_step sets it
        group["lr"] = 1e-3 * group["lr_scale"]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    x = torch.randn(2, 3, 16, 16)
    (model(x) * torch.linspace(-1, 1, 16)).pow(2).mean().backward()
    optimizer.step()
    return {name: float((p.detach() - before[name]).abs().max()) for name, p in model.named_parameters()}


def test_without_a_scale_the_groups_are_the_two_they_always_were():
    model = _TwinLike()
    groups = make_optimizer(model, "adamw", 1e-3, 0.05).param_groups
    assert [g["lr_scale"] for g in groups] == [1.0, 1.0] and [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_the_scale_moves_the_gssam_gate_that_much_faster_and_leaves_the_rest_alone():
    torch.manual_seed(1)
    plain, scaled = _TwinLike(), _TwinLike()
    scaled.load_state_dict(plain.state_dict())
    moved, moved_scaled = _one_step(plain, 1.0), _one_step(scaled, 20.0)
    # AdamW's first step moves each parameter by ~lr: the gate, at 0 with a gradient, by 1e-3 vs 2e-2
    assert moved["gssam.gate"] == pytest.approx(1e-3, rel=0.05)
    assert moved_scaled["gssam.gate"] == pytest.approx(20e-3, rel=0.05)
    assert moved_scaled["conv.bias"] == pytest.approx(moved["conv.bias"], rel=1e-4)
    groups = make_optimizer(scaled, "adamw", 1e-3, 0.05, gssam_lr_scale=20.0).param_groups
    gssam_ids = {id(p) for p in scaled.gssam.parameters()}
    for group in groups:
        assert all((id(p) in gssam_ids) == (group["lr_scale"] == 20.0) for p in group["params"])
        # decoupled decay shrinks by lr * decay per step: the scaled weights shrink no faster
        assert group["weight_decay"] * group["lr_scale"] in (0.0, pytest.approx(0.05))


def test_lr_warmup_then_cosine():
    assert lr_factor(0, 10, 100) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100) == pytest.approx(1.0)
    assert lr_factor(10, 10, 100) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100) == pytest.approx(0.525)
    assert lr_factor(100, 10, 100) == pytest.approx(0.05)
