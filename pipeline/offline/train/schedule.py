"""Optimisation: the optimizer (``make_optimizer``), the learning-rate schedule (``lr_factor``) and the
exponential moving average of the weights (``ModelEMA``, ``ema_settings``)."""
from __future__ import annotations

import copy
import math

import torch


def make_optimizer(model: torch.nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Weight decay on conv/linear weights only (not on norms and biases), as yolox does."""
    decay, no_decay = [], []
    for parameter_name, parameter in model.named_parameters():
        (decay if parameter.ndim > 1 and parameter_name.endswith("weight") else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))


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
