"""Checkpoints: plain tensors + meta, loadable with torch.load(weights_only=True).

File layout (a torch.save'd dict):
    {"format": "models.checkpoint/1",
     "state_dict": {parameter/buffer name: tensor},
     "meta": {"name": model name, "input_size": [h, w], "class_names": [...], **extra}}
``extra`` holds plain values only (numbers, strings, bools, None, lists/tuples/dicts of those,
tensors), e.g. epoch=12, metrics={"map50_95": 0.41}.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from .yolox_gssam import baseline_name, build_model, parse_model_name, twin_state_dict

from .letterbox import check_input_size
from .meta import FORMAT, RESERVED_META, CheckpointError, check_content, check_meta


def _plain(value) -> bool:
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _check_input_size(input_size, where: str) -> list[int]:
    try:
        return list(check_input_size(input_size, "input_size"))
    except ValueError as error:
        raise CheckpointError(f"{where}: {error}") from None


def save_checkpoint(path, model: nn.Module, *, name: str, input_size, class_names, **extra) -> Path:
    """Write the model's weights and meta to ``path`` atomically (temp file + rename)."""
    path = Path(path)
    try:
        parse_model_name(name)
    except ValueError as error:
        raise CheckpointError(f"{path}: {error}") from None
    class_names = [str(c) for c in class_names]
    meta = {"name": name, "input_size": _check_input_size(input_size, str(path)), "class_names": class_names}
    clash = sorted(set(extra) & set(RESERVED_META))
    if clash or not _plain(extra):
        raise CheckpointError(f"{path}: extras must be plain values with keys other than {RESERVED_META}")
    meta.update(extra)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"format": FORMAT, "state_dict": state, "meta": meta}, temporary)
    os.replace(temporary, path)
    return path


def _read(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except (zipfile.BadZipFile, EOFError) as error:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({type(error).__name__})") from None
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else "unpickling failed"
        raise CheckpointError(f"{path}: not a plain-tensor checkpoint ({first[:160]})") from None
    except Exception as error:  # torch.load raises many types on garbage (KeyError, RuntimeError, ...)
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        first = first.split(". ")[0]  # torch appends paragraphs of advice after the first sentence
        raise CheckpointError(
            f"{path}: unreadable or truncated checkpoint ({type(error).__name__}: {first[:160]})") from None
    return check_content(path, content)


def _check_meta(path: Path, meta: dict) -> dict:
    meta = check_meta(path, meta)
    try:
        parse_model_name(meta["name"])
    except ValueError as error:
        raise CheckpointError(f"{path}: {error}") from None
    return meta


def _match_weights(path: Path, model: nn.Module, state: dict) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        first = mismatched[0] if mismatched else (missing or unexpected)[0]
        detail = (f"{first} {list(state[first].shape)} vs {list(expected[first].shape)}"
                  if mismatched else first)
        raise CheckpointError(
            f"{path}: weights do not match model {model.model_name!r}: {len(mismatched)} shape mismatches, "
            f"{len(missing)} missing, {len(unexpected)} unexpected (first: {detail})"
        )
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: state_dict holds non-tensor values")
    model.load_state_dict(state)


def load_checkpoint(path, device="cpu") -> tuple[nn.Module, dict]:
    """Rebuild the checkpoint's model, load its weights, return (model in eval mode, meta).

    meta: name, input_size (h, w), class_names, plus any extras saved with it.
    """
    path = Path(path)
    content = _read(path)
    meta = _check_meta(path, content["meta"])
    model = build_model(meta["name"], num_classes=len(meta["class_names"]))
    _match_weights(path, model, content["state_dict"])
    return model.to(device).eval(), meta


def load_weights_into(path, model: nn.Module, class_names) -> dict:
    """Load a checkpoint's weights into ``model`` (train-time ``--init``); returns its meta.

    The checkpoint holds either the same model or the plain YOLOX the model is a GSSAM twin of
    (``yolox-nano`` for ``yolox-nano-gssam-sigresid-p1``): then the backbone, neck and head weights
    map one to one and the GSSAM parameters keep their initial values (an identity for the
    identity-start variants). The class names must match.
    """
    path = Path(path)
    content = _read(path)
    meta = _check_meta(path, content["meta"])
    state = {k: v.float() for k, v in content["state_dict"].items()}
    if list(meta["class_names"]) != [str(c) for c in class_names]:
        raise CheckpointError(f"{path}: classes {meta['class_names']} differ from {list(class_names)}")
    if meta["name"] != model.model_name:
        if meta["name"] != baseline_name(model.model_name) or "-gssam-" not in model.model_name:
            raise CheckpointError(f"{path}: holds {meta['name']}, not {model.model_name}"
                                  + (f" nor its baseline {baseline_name(model.model_name)}"
                                     if "-gssam-" in model.model_name else ""))
        state = twin_state_dict(state, model)
    _match_weights(path, model, state)
    return meta


def blend_checkpoints(start, tuned, share: float, path, **extra) -> Path:
    """Write ``(1 - share) * start + share * tuned`` to ``path``: the weight-space blend of a model and
    its fine-tune (Wortsman et al., "Robust fine-tuning of zero-shot models", 2022), which keeps much of
    what the start knew for little of what the fine-tune gained. Both must hold the same model and
    classes; every float tensor is blended (BatchNorm's running statistics too), integer ones (the
    batch counters) come from ``tuned``, and the file keeps tuned's precision (fp16 from training).
    The meta is tuned's, its scores renamed ``tuned_metrics`` (they are not the blend's), with
    ``blend`` recording the share and the two files' names."""
    if not 0.0 <= share <= 1.0:
        raise CheckpointError(f"blend share {share} is not in 0..1")
    start, tuned = Path(start), Path(tuned)
    contents = [_read(start), _read(tuned)]
    (start_meta, meta) = [_check_meta(where, content["meta"]) for where, content in zip((start, tuned), contents)]
    if start_meta["name"] != meta["name"] or list(start_meta["class_names"]) != list(meta["class_names"]):
        raise CheckpointError(f"{start} and {tuned} hold different models or classes: cannot blend them")
    start_state, tuned_state = (content["state_dict"] for content in contents)
    model = build_model(meta["name"], num_classes=len(meta["class_names"]))
    _match_weights(start, model, start_state)
    _match_weights(tuned, model, tuned_state)
    blended = {name: (torch.lerp(start_state[name].float(), value.float(), share)
                      if value.is_floating_point() else value) for name, value in tuned_state.items()}
    model.load_state_dict(blended)
    if all(v.dtype == torch.float16 for v in tuned_state.values() if v.is_floating_point()):
        model.half()
    kept = {k: v for k, v in meta.items() if k not in (*RESERVED_META, "metrics")}
    if "metrics" in meta:
        kept["tuned_metrics"] = meta["metrics"]
    kept.update(extra, blend={"share": float(share), "start": start.name, "tuned": tuned.name})
    return save_checkpoint(path, model, name=meta["name"], input_size=meta["input_size"],
                           class_names=meta["class_names"], **kept)
