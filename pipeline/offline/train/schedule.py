"""Optimisation: the optimizer (``make_optimizer``), the learning-rate schedule (``lr_factor``) and the
exponential moving average of the weights (``ModelEMA``, ``ema_settings``)."""
from __future__ import annotations

import copy
import math

import torch


def make_optimizer(model: torch.nn.Module, name: str, lr: float, weight_decay: float,
                   gssam_lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """Weight decay on conv/linear weights only (not on norms and biases), as yolox does.

    With ``gssam_lr_scale`` != 1 the parameters of the GSSAM modules get their own groups whose
    ``lr_scale`` multiplies the scheduled lr: a twin started from a trained YOLOX has its GSSAM
    layers new and its gate at 0, and at the backbone's fine-tuning lr the gate moves by about the
    lr per step (docs/ablation.md). At 1 the groups are the two they always were (old states resume).
    """
    from models.gssam import Gssam

    scaled = {id(p) for m in model.modules() if isinstance(m, Gssam) for p in m.parameters()} \
        if gssam_lr_scale != 1.0 else set()
    groups = _decay_groups(model, lambda p: id(p) not in scaled, weight_decay, 1.0)
    if scaled:  # AdamW shrinks by lr * decay per step: divided by the scale, these shrink as fast as the rest
        groups += [g for g in _decay_groups(model, lambda p: id(p) in scaled, weight_decay / gssam_lr_scale,
                                            gssam_lr_scale) if g["params"]]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))


def has_gssam(model: torch.nn.Module) -> bool:
    """Whether the model holds GSSAM modules (the only ones ``gssam_lr_scale`` acts on)."""
    from models.gssam import Gssam

    return any(isinstance(m, Gssam) for m in model.modules())


def _decay_groups(model: torch.nn.Module, chosen, weight_decay: float, lr_scale: float) -> list[dict]:
    """The chosen parameters as (decayed: conv/linear weights, not decayed: norms and biases)."""
    decay, no_decay = [], []
    for parameter_name, parameter in model.named_parameters():
        if chosen(parameter):
            (decay if parameter.ndim > 1 and parameter_name.endswith("weight") else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay, "lr_scale": lr_scale},
            {"params": no_decay, "weight_decay": 0.0, "lr_scale": lr_scale}]


def lr_factor(step: int, warmup: int, total: int, final: float = 0.05) -> float:
    """Linear warm-up, then cosine from 1 to ``final`` at ``total`` (total 0 = not known yet: flat)."""
    if step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / (total - warmup))
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))


class ModelEMA:
    """Exponential moving average of weights and buffers; decay ramps up as d_max * (1 - exp(-n / tau))."""

    def __init__(self, model: torch.nn.Module, decay: float, tau: float):
        self.module = copy.deepcopy(model).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        current = model.state_dict()
        for name, value in self.module.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d).add_(current[name].detach(), alpha=1 - d)
            else:
                value.copy_(current[name])


def ema_settings(total_steps: int) -> tuple[float, float]:
    """Averaging window ~ a tenth of the run (a fixed 0.9998 would average over more than a short run)."""
    decay = min(0.9998, max(0.99, 1 - 10 / max(total_steps, 1)))
    return decay, max(20.0, total_steps / 20)
