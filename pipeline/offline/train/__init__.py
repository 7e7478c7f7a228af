"""Training: ``python -m pipeline train`` (also ``python -m pipeline.offline.train``). See docs/training.md.

A lean loop around the yolox model's own train-mode loss (SimOTA), on CPU or CUDA; yolox's Trainer is
not used because it assumes CUDA. Frames are decoded once into memory (uint8, on the GPU when it fits),
crops are cut and augmented on the training device, so data loading stays off the critical path.
Every epoch: validation mAP50:95 on the val split with the EMA weights, ``last.pt`` (exact-resume state)
and ``best.pt`` (``epoch-N.pt`` too with --keep-epochs; models.save_checkpoint) in ``--out``; also ``log.json``
and ``curve.png``.

Where things are:
  settings.py    TrainSettings (the options, checked when built) and TrainError
  cli.py         argv -> TrainSettings (parse_args), main(argv)
  sources.py     ClipFrames; loading from a bundle, the dataset or synthetic renders (load_clips)
  sampler.py     FrameGroup, Augment, CropSampler (training crops on the device), letterbox_batch
  schedule.py    make_optimizer, lr_factor (warm-up + cosine), ModelEMA, ema_settings
  device.py      resolve_device, autocast, frames_fit_on_device, describe_hardware
  state.py       load_training_state, rng_state / set_rng_state, atomic_save, StopFlag, file_lock
  trainer.py     Trainer: model, optimizer, EMA, sampler, step plan, train_step, resumable state
  validation.py  evaluate_model (val mAP), coco_map
  loop.py        run(settings): the budgeted step loop, epoch ends, best.pt / last.pt, curve.png, log.json

The names below load on first use (PEP 562): the decoding processes that sources.py spawns import this
package, and need neither torch nor the model code.
"""
from __future__ import annotations

from models.lazy import lazy_names

_HOMES = {
    "main": "cli", "parse_args": "cli",
    "run": "loop", "write_curve": "loop",
    "Augment": "sampler", "CropSampler": "sampler", "FrameGroup": "sampler", "letterbox_batch": "sampler",
    "ModelEMA": "schedule", "ema_settings": "schedule", "lr_factor": "schedule", "make_optimizer": "schedule",
    "TrainError": "settings", "TrainSettings": "settings",
    "ClipFrames": "sources", "load_bundle": "sources", "load_clips": "sources", "load_dataset": "sources",
    "only_modality": "sources",
    "load_synthetic": "sources",
    "load_training_state": "state",
    "Trainer": "trainer",
    "coco_map": "validation", "evaluate_model": "validation",
}
__all__ = list(_HOMES)
__getattr__ = lazy_names(__name__, _HOMES)
