"""The run: ``run(settings)`` loads the data, builds the ``Trainer`` and drives the step loop within its
budget; every epoch end validates, saves ``best.pt`` / ``last.pt`` and draws ``curve.png``; the run ends
with ``log.json``. SIGTERM / SIGINT save ``last.pt`` at the next step and exit 143 (``--resume`` continues)."""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.offline.train.device import describe_hardware, resolve_device
from pipeline.offline.train.settings import TrainError, TrainSettings
from pipeline.offline.train.sources import load_training_clips
from pipeline.offline.train.state import StopFlag, atomic_save
from pipeline.offline.train.trainer import Trainer
from pipeline.offline.train.validation import evaluate_model

log = logging.getLogger("pipeline.offline.train")

EXIT_INTERRUPTED = 143             # 128 + SIGTERM, as a shell reports a process ended by it
PROBE_FIRST_STEP = 2               # steps before it pay for cudnn autotuning and allocator growth
MIN_EVAL_SECONDS = 5.0             # time kept for the final evaluation before the first one was timed
VAL_BATCH_LIMIT = 32               # validation runs full frames: smaller batches than the crops'


def run(settings: TrainSettings, step_callback=None, data: tuple | None = None) -> int:
    """Train per ``settings``. step_callback(trainer) runs after every step (tests). ``data``: (train
    clips, val clips, class names) already loaded (``pipeline adapt``), instead of the settings' data."""
    started = time.monotonic()
    device = _prepare(settings)
    train_clips, val_clips, class_names = data or load_training_clips(settings, settings.workers or os.cpu_count() or 1)
    load_seconds = time.monotonic() - started
    if settings.prepare_only:
        print(f"prepared: {len(train_clips)} train clips ({sum(len(c.frames) for c in train_clips)} frames, "
              f"{sum(c.frames.nbytes for c in train_clips) / 2**30:.2f} GiB), {len(val_clips)} val clips "
              f"in {load_seconds:.1f}s")
        return 0
    trainer = Trainer(settings, device, train_clips, val_clips, class_names)
    if settings.resume:
        trainer.load_state(Path(settings.out) / "last.pt")
        if _stalled(trainer, settings):   # it ended by --patience: training on would only re-stop it
            log.info("%s: this run already ended by --patience at step %d (best %.4f): nothing to resume",
                     settings.model, trainer.step, trainer.best)
            trainer.stopped_by_patience = True
            _write_log(trainer, settings, device, time.monotonic() - started, "done")
            return 0
    elif settings.epochs is not None:
        trainer.plan_epochs(trainer.sampler.frame_count)
    log.info("%s: %d train frames (%d objects), %d val clips, frames on %s, data ready in %.1fs",
             settings.model, trainer.sampler.frame_count, len(trainer.sampler.objects), len(val_clips),
             "GPU" if trainer.frames_on_device else "host", load_seconds)
    with StopFlag() as stop:
        status = _loop(trainer, settings, stop, step_callback)
    _write_log(trainer, settings, device, load_seconds, status)
    return 0 if status == "done" else EXIT_INTERRUPTED


def _prepare(settings: TrainSettings) -> torch.device:
    """The device, seeded generators and a checked run folder."""
    device = resolve_device(settings.device)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    random.seed(settings.seed)
    np.random.seed(settings.seed)
    torch.manual_seed(settings.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "last.pt").exists() and not settings.resume and not settings.prepare_only:
        raise TrainError(f"{out}/last.pt exists: pass --resume to continue it, or choose another --out")
    if settings.resume and not (out / "last.pt").exists():
        raise TrainError(f"--resume: no {out}/last.pt to continue")
    return device


@dataclass
class _Clock:
    """Time bookkeeping of one loop (monotonic seconds)."""
    budget: float | None        # seconds of loop in all (None: an --epochs run)
    loop_start: float           # when the loop would have started had it never been interrupted
    epoch_started: float
    epoch_first_step: int
    eval_seconds: float = 0.0   # how long the last epoch-end evaluation took
    probe_start: float | None = None

    @classmethod
    def start(cls, trainer: Trainer, settings: TrainSettings) -> "_Clock":
        budget = settings.minutes * 60 if settings.minutes is not None else None
        if budget is not None and settings.end_by is not None:   # a wall-clock deadline shared by parallel runs
            budget = min(budget, trainer.elapsed + settings.end_by - time.time())
        now = time.monotonic()
        return cls(budget, now - trainer.elapsed, now, trainer.step)

    def out_of_time(self, trainer: Trainer) -> bool:
        """Would the final evaluation overrun the budget after this step? (the step rate may have dropped)"""
        return self.budget is not None and bool(trainer.total_steps) and \
            trainer.elapsed + max(self.eval_seconds, MIN_EVAL_SECONDS) > self.budget


def _loop(trainer: Trainer, settings: TrainSettings, stop: StopFlag, step_callback) -> str:
    from tqdm import tqdm

    clock = _Clock.start(trainer, settings)
    progress = tqdm(total=trainer.total_steps or None, initial=trainer.step, desc=settings.model, unit="step",
                    disable=settings.no_progress or None, dynamic_ncols=True)
    while trainer.total_steps == 0 or trainer.step < trainer.total_steps:
        _step(trainer, settings, clock, progress)
        if step_callback is not None:
            step_callback(trainer)
        epoch_end = trainer.steps_per_epoch and trainer.step % trainer.steps_per_epoch == 0
        out_of_time = clock.out_of_time(trainer)
        last = bool(trainer.total_steps) and (trainer.step >= trainer.total_steps or out_of_time)
        if epoch_end or last:
            _timed_epoch_end(trainer, settings, clock, progress, last)
            if not last and _stalled(trainer, settings):
                log.info("%s: val mAP50:95 has not improved for %d evaluations: stopping at step %d (best %.4f)",
                         settings.model, settings.patience, trainer.step, trainer.best)
                trainer.stopped_by_patience = last = True
        if last:
            trainer.stopped_early = trainer.step < trainer.total_steps and not trainer.stopped_by_patience
            break
        if stop.raised is not None:
            _save_last(trainer)
            progress.close()
            log.warning("%s: stopped by signal %d at step %d; continue with --resume", settings.model,
                        stop.raised, trainer.step)
            return "interrupted"
    progress.close()
    return "done"


def _stalled(trainer: Trainer, settings: TrainSettings) -> bool:
    """Early stop: the last ``patience`` evaluations all scored below the best one before them."""
    scores = [epoch["map50_95"] for epoch in trainer.history["epochs"]]
    if not settings.patience or len(scores) <= settings.patience:
        return False
    return max(scores[-settings.patience:]) <= max(scores[:-settings.patience])


def _step(trainer: Trainer, settings: TrainSettings, clock: _Clock, progress) -> None:
    """One training step; in a --minutes run the first steps also measure the rate that plans the rest."""
    if trainer.step == PROBE_FIRST_STEP:
        clock.probe_start = time.monotonic()
    losses = trainer.train_step()
    trainer.history["loss"].append(losses["total_loss"])
    trainer.elapsed = time.monotonic() - clock.loop_start
    progress.update(1)
    progress.set_postfix(loss=f"{losses['total_loss']:.3f}", refresh=False)
    if trainer.total_steps == 0 and trainer.step >= max(settings.probe_steps, PROBE_FIRST_STEP + 1):
        rate = (trainer.step - PROBE_FIRST_STEP) / (time.monotonic() - clock.probe_start)
        trainer.plan_minutes(rate, clock.budget - trainer.elapsed)
        progress.total = trainer.total_steps
        log.info("%s: %.2f steps/s measured -> %d steps, %d per epoch", settings.model, rate,
                 trainer.total_steps, trainer.steps_per_epoch)


def _timed_epoch_end(trainer: Trainer, settings: TrainSettings, clock: _Clock, progress, last: bool) -> None:
    """The epoch end, timed; a --minutes run then re-fits its remaining steps to the time left."""
    eval_started = time.monotonic()
    _end_epoch(trainer, settings)
    clock.eval_seconds = time.monotonic() - eval_started
    if clock.budget is not None and not last:
        rate = (trainer.step - clock.epoch_first_step) / max(eval_started - clock.epoch_started, 1e-6)
        trainer.replan_minutes(rate, clock.budget - (eval_started - clock.loop_start) - clock.eval_seconds,
                               clock.eval_seconds)
        progress.total = trainer.total_steps
    trainer.elapsed = time.monotonic() - clock.loop_start
    clock.epoch_started, clock.epoch_first_step = time.monotonic(), trainer.step


def _save_last(trainer: Trainer) -> None:
    atomic_save(trainer.state(), trainer.out / "last.pt")


def _save_weights(trainer: Trainer, path: Path, metrics: dict, epoch: int) -> None:
    import models

    half = copy.deepcopy(trainer.ema.module).half()     # fp16 weights: half the file; loads into float models
    models.save_checkpoint(path, half, name=trainer.settings.model,
                           input_size=trainer.settings.input_size, class_names=trainer.class_names,
                           epoch=epoch, step=trainer.step, metrics=metrics, trained_with="pipeline.offline.train")


def _end_epoch(trainer: Trainer, settings: TrainSettings) -> None:
    epoch = math.ceil(trainer.step / trainer.steps_per_epoch)
    metrics = evaluate_model(trainer.ema.module, trainer.val_clips, trainer.class_names, settings.input_size,
                             trainer.device, min(settings.batch, VAL_BATCH_LIMIT), settings.amp, settings.val_per_clip)
    window = trainer.history["loss"][-trainer.steps_per_epoch:]
    record = {"epoch": epoch, "step": trainer.step, "images_seen": trainer.images_seen,
              "elapsed_s": round(trainer.elapsed, 1), "loss": float(np.mean(window)) if window else None,
              "map50_95": metrics["map50_95"], "map50": metrics["map50"], "per_modality": metrics["per_modality"]}
    trainer.history["epochs"].append(record)
    if metrics["map50_95"] > trainer.best:
        trainer.best = metrics["map50_95"]
        _save_weights(trainer, trainer.out / "best.pt", metrics, epoch)
    if settings.keep_epochs:  # a study scores every step count afterwards
        _save_weights(trainer, trainer.out / f"epoch-{epoch}.pt", metrics, epoch)
    _save_last(trainer)
    write_curve(trainer.history, trainer.out / "curve.png", settings.model)
    log.info("%s epoch %d step %d/%d: loss %.3f val mAP50:95 %.4f mAP50 %.4f (best %.4f) %.0fs",
             settings.model, epoch, trainer.step, trainer.total_steps, record["loss"] or float("nan"),
             metrics["map50_95"], metrics["map50"], trainer.best, trainer.elapsed)


def write_curve(history: dict, path: Path, title: str) -> None:
    """curve.png: the training loss (raw and smoothed) and the validation mAP per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    losses = np.array(history["loss"], dtype=float)
    if len(losses):
        window = max(1, len(losses) // 50)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        left.plot(np.arange(len(losses)), losses, alpha=0.25, color="tab:blue")
        left.plot(np.arange(window - 1, len(losses)), smooth, color="tab:blue")
    left.set(xlabel="step", ylabel="total loss", title="training loss")
    epochs = history["epochs"]
    right.plot([e["step"] for e in epochs], [e["map50_95"] for e in epochs], "o-", label="mAP50:95")
    right.plot([e["step"] for e in epochs], [e["map50"] for e in epochs], "s--", label="mAP50")
    right.set(xlabel="step", ylabel="val mAP (EMA)", title="validation")
    right.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def _write_log(trainer: Trainer, settings: TrainSettings, device: torch.device, load_seconds: float,
               status: str) -> None:
    record = {"model": settings.model, "status": status, "hardware": describe_hardware(device),
              "config": settings.as_config(), "data_load_s": round(load_seconds, 1),
              "train_loop_s": round(trainer.elapsed, 1), "steps": trainer.step, "total_steps": trainer.total_steps,
              "steps_per_epoch": trainer.steps_per_epoch, "images_seen": trainer.images_seen,
              "train_frames": trainer.sampler.frame_count, "frames_on_gpu": trainer.frames_on_device,
              "skipped_nonfinite_steps": trainer.skipped_steps, "stopped_early_by_budget": trainer.stopped_early,
              "stopped_early_by_patience": trainer.stopped_by_patience,
              "best_val_map50_95": trainer.best, "epochs": trainer.history["epochs"]}
    (trainer.out / "log.json").write_text(json.dumps(record, indent=1) + "\n")
