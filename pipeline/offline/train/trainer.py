"""``Trainer``: the model, optimizer, EMA and crop sampler of one run, its step plan, one training step,
and its resumable state (what last.pt holds)."""
from __future__ import annotations

import functools
import logging
import math
import pickle
from pathlib import Path

import numpy as np
import torch

from pipeline.offline.train.camera import EFFECTS_VERSION
from pipeline.offline.train.device import autocast, frames_fit_on_device
from pipeline.offline.train.sampler import Augment, CropSampler
from pipeline.offline.train.schedule import ModelEMA, ema_settings, has_gssam, lr_factor, make_optimizer
from pipeline.offline.train.settings import TrainError, TrainSettings
from pipeline.offline.train.sources import ClipFrames
from pipeline.offline.train.state import STATE_FORMAT, file_lock, load_training_state, rng_state, set_rng_state

log = logging.getLogger("pipeline.offline.train")

STEP_TIME_SHARE = 0.88      # of a --minutes budget planned for steps; the rest is kept for the evaluations
PLACEHOLDER_EMA_STEPS = 10_000     # EMA window until the plan is known
REPLAN_MARGIN = 0.97        # re-planned steps fill this share of the time left after the evaluations
# restored on --resume, in this order, besides the weights, optimizer, scaler, EMA and random states
RESUMED_COUNTERS = ("step", "total_steps", "steps_per_epoch", "warmup", "history", "best", "images_seen",
                    "elapsed", "skipped_steps")


class Trainer:
    def __init__(self, settings: TrainSettings, device: torch.device, train_clips: list[ClipFrames],
                 val_clips: list[ClipFrames], class_names: list[str]):
        self.settings, self.device, self.class_names, self.val_clips = settings, device, class_names, val_clips
        self.out = Path(settings.out)
        self.model = self._build_model()
        self.optimizer = make_optimizer(self.model, settings.optimizer, settings.lr, settings.weight_decay,
                                        settings.gssam_lr_scale)
        self.scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and settings.amp == "fp16")
        # the cross-process lock keeps parallel runs from all claiming GPU memory for frames at once
        with file_lock(Path(settings.cache or self.out) / ".frames.lock"):
            on_device = frames_fit_on_device(settings.frames_on, settings.gpu_reserve_gb, device,
                                             sum(c.frames.nbytes for c in train_clips))
            augment = Augment(crop=settings.crop, small_object_power=settings.small_object_power,
                              camera_effects=settings.camera_effects, copy_paste=settings.copy_paste)
            self.sampler = CropSampler(train_clips, settings.input_size, augment, device, on_device)
        self.frames_on_device = on_device
        self.rng = np.random.default_rng(settings.seed)
        self.step, self.total_steps, self.steps_per_epoch, self.warmup = 0, 0, 0, settings.warmup_steps
        self.history = {"loss": [], "epochs": []}
        self.best = -1.0
        self.images_seen = 0
        self.elapsed = 0.0                 # training-loop seconds before this process (resume)
        self.skipped_steps = 0
        self.stopped_early = False         # the time budget ended the run before its planned last step
        self.stopped_by_patience = False   # --patience ended it: val stopped improving
        # the window is set when the steps are planned (or restored by load_state)
        self.ema = ModelEMA(self.model, *ema_settings(PLACEHOLDER_EMA_STEPS))

    @functools.cached_property
    def _frozen_norms(self) -> list[torch.nn.Module]:
        """The BatchNorm layers --freeze-bn keeps in eval mode (none without it)."""
        if not self.settings.freeze_bn:
            return []
        return [m for m in self.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]

    def _build_model(self) -> torch.nn.Module:
        import models

        settings = self.settings
        try:
            model = models.build_model(settings.model, num_classes=len(self.class_names)).to(self.device)
        except ValueError as error:
            raise TrainError(str(error)) from None
        if settings.init:
            self._load_init(model, settings.init)
        model.head.use_l1 = settings.l1_loss
        if settings.assignment == "yolox":      # the same module with yolox's own loss (a fallback, and for comparison)
            from yolox.models.yolo_head import YoloxHead
            model.head.__class__ = YoloxHead
        return model.train()

    def _load_init(self, model: torch.nn.Module, path: str) -> None:
        """Weights of the same model, or of the plain YOLOX this GSSAM model is the twin of."""
        import models

        try:
            meta = models.load_weights_into(path, model, self.class_names)
        except models.CheckpointError as error:
            raise TrainError(f"--init: {error}") from None
        if meta["name"] != self.settings.model:
            log.info("%s: baseline weights of %s from %s (GSSAM parameters at their initial values)",
                     self.settings.model, meta["name"], path)
            from models.gssam import IDENTITY_START

            if models.parse_model_name(self.settings.model).variant not in IDENTITY_START:
                log.warning("%s is not an identity-start variant (%s): it does not start where the baseline "
                            "is", self.settings.model, ", ".join(IDENTITY_START))
        else:
            log.info("%s: weights from %s", self.settings.model, path)

    # -- planning
    def plan_epochs(self, frames: int) -> None:
        one_pass = max(1, math.ceil(frames / self.settings.batch))
        self.steps_per_epoch = self.settings.epoch_steps or one_pass
        self.total_steps = self.settings.epochs * self.steps_per_epoch
        self._finish_plan()

    def plan_minutes(self, rate: float, budget_left: float) -> None:
        """Steps that fit the rest of the budget, 12 % kept for the evaluations."""
        self.total_steps = self.step + max(1, int(rate * budget_left * STEP_TIME_SHARE))
        one_pass = max(1, math.ceil(self.sampler.frame_count / self.settings.batch))
        per_eval = math.ceil(self.total_steps / self.settings.evals)
        self.steps_per_epoch = self.settings.epoch_steps or min(one_pass, per_eval)
        self._finish_plan()

    def replan_minutes(self, rate: float, budget_left: float, eval_seconds: float) -> None:
        """Fit the remaining steps to the remaining time at the rate of the last epoch: runs started
        side by side slow each other down once all are running, so the first probe overestimates."""
        steps = rate * budget_left
        evals = max(1, math.ceil(steps / self.steps_per_epoch))
        steps = rate * max(0.0, budget_left - evals * eval_seconds) * REPLAN_MARGIN
        self.total_steps = self.step + max(1, int(steps))

    def _finish_plan(self) -> None:
        self.warmup = max(1, min(self.settings.warmup_steps, self.total_steps // 5))
        decay, tau = ema_settings(self.total_steps)
        self.ema.decay, self.ema.tau = decay, tau

    # -- state
    def state(self) -> dict:
        return {"format": STATE_FORMAT, "model_name": self.settings.model, "step": self.step,
                "total_steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch, "warmup": self.warmup,
                "model": self.model.state_dict(), "ema": self.ema.module.state_dict(),
                "ema_meta": [self.ema.decay, self.ema.tau, self.ema.updates],
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "rng": rng_state(self.rng, self.device), "history": self.history, "best": self.best,
                "images_seen": self.images_seen, "elapsed": self.elapsed, "skipped_steps": self.skipped_steps,
                "recipe": self.recipe()}

    def recipe(self) -> dict:
        """Options that change what a step computes: a resumed run must use the same."""
        return {"l1_loss": bool(self.settings.l1_loss), "small_object_power": float(self.settings.small_object_power),
                "visible_boxes": self.settings.visible_boxes, "camera_effects": float(self.settings.camera_effects),
                # which effects a crop may get (camera.EFFECTS_VERSION) changes the draws of runs with effects
                "effects_version": EFFECTS_VERSION if self.settings.camera_effects else 0,
                "copy_paste": float(self.settings.copy_paste), "modality": self.settings.modality,
                "freeze_bn": bool(self.settings.freeze_bn),
                # on a model without GSSAM the scale changes nothing, so it must not bind a resume
                "gssam_lr_scale": float(self.settings.gssam_lr_scale) if has_gssam(self.model) else 1.0}

    def load_state(self, path: Path) -> None:
        state = self._read_state(path)
        self.model.load_state_dict(state["model"])
        self.ema.module.load_state_dict(state["ema"])
        self.ema.decay, self.ema.tau, self.ema.updates = state["ema_meta"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"], self.rng, self.device)
        for key in RESUMED_COUNTERS:
            setattr(self, key, state[key])

    def _read_state(self, path: Path) -> dict:
        """The state in ``path``, refused unless it is this model's and was trained with this recipe."""
        try:
            state = load_training_state(path, self.device)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
            raise TrainError(f"cannot resume from {path}: {str(error).splitlines()[0]}") from None
        if state.get("format") != STATE_FORMAT or state.get("model_name") != self.settings.model:
            raise TrainError(f"{path}: not a training state of model {self.settings.model!r}")
        started = started_recipe(state, self.recipe())
        if started != self.recipe():
            raise TrainError(f"--resume: {path} was trained with {started}, this command asks for {self.recipe()}; "
                             "resume with the same options")
        return state

    # -- one step
    def train_step(self) -> dict:
        for module in self._frozen_norms:   # --freeze-bn: the start model's statistics stay as they are
            module.eval()
        for group in self.optimizer.param_groups:
            group["lr"] = self.settings.lr * group.get("lr_scale", 1.0) * lr_factor(self.step, self.warmup,
                                                                                     self.total_steps)
        images, targets = self.sampler.batch(self.settings.batch, self.rng)
        with autocast(self.device, self.settings.amp):
            outputs = self.model(images, targets)
        loss = outputs["total_loss"]
        self.optimizer.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.ema.update(self.model)
        else:  # never let one bad batch poison the weights; counted in the log
            self.skipped_steps += 1
        self.step += 1
        self.images_seen += len(images)
        return {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in outputs.items()}


def started_recipe(state: dict, current: dict) -> dict:
    """The recipe a training state was made with; options older states did not record take the value
    they had then (a state without any recipe: the current one, unchecked)."""
    started = {"visible_boxes": "dataset", "camera_effects": 0.0, "copy_paste": 0.0, "gssam_lr_scale": 1.0,
               "modality": None, "freeze_bn": False,
               **state.get("recipe", current)}
    started.setdefault("effects_version", 1 if started["camera_effects"] else 0)
    return started
