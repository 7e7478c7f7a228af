"""A checkpoint's meta (model name, input size, class names, extras) read without torch.

A checkpoint is a torch.save'd zip (see models.checkpoint). Its ``data.pkl`` is read here by an
unpickler that admits no global at all: tensor rebuilds and storages come back as placeholders,
everything else must be plain Python data. So the supervisor and the preprocess stage (which need
only the input size and a readable file) never import torch, and reading is as safe as
``torch.load(weights_only=True)``: nothing in the file can run code.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

from .letterbox import check_input_size

FORMAT = "models.checkpoint/1"
RESERVED_META = ("name", "input_size", "class_names")
_TENSOR_GLOBALS = {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
                   ("collections", "OrderedDict")}


class CheckpointError(Exception):
    """A checkpoint that cannot be saved or loaded; the message is one line naming file and problem."""


class _Placeholder:
    """Stands for a tensor or storage: its data are not needed to read the meta."""

    def __init__(self, *args, **kwargs):
        pass


class _MetaUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _TENSOR_GLOBALS or (module == "torch" and name.endswith("Storage")):
            return dict if name == "OrderedDict" else _Placeholder
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a checkpoint")

    def persistent_load(self, pid):
        return _Placeholder()


def read_content(path: Path) -> dict:
    """The checkpoint's top-level dict with tensors as placeholders; CheckpointError on anything else."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pickles) != 1:
                raise CheckpointError(f"{path}: not a torch checkpoint archive (no data.pkl)")
            with archive.open(pickles[0]) as data:
                content = _MetaUnpickler(data).load()
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({type(error).__name__})") from None
    except (pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise CheckpointError(f"{path}: not a plain-tensor checkpoint ({str(error)[:160]})") from None
    return check_content(path, content)


def check_content(path: Path, content) -> dict:
    """The top level of a checkpoint: our format, a state_dict and a meta."""
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a models checkpoint (missing format {FORMAT!r})")
    if not isinstance(content.get("state_dict"), dict) or not isinstance(content.get("meta"), dict):
        raise CheckpointError(f"{path}: checkpoint lacks state_dict or meta")
    return content


def check_meta(path: Path, meta: dict) -> dict:
    """The meta with its reserved keys checked: input_size a tuple, class_names a list of strings."""
    missing = [k for k in RESERVED_META if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: checkpoint meta lacks {', '.join(missing)}")
    if not isinstance(meta["name"], str):
        raise CheckpointError(f"{path}: the model name must be a string, got {meta['name']!r}")
    names = meta["class_names"]
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(c, str) for c in names):
        raise CheckpointError(f"{path}: class_names must be a non-empty list of strings")
    try:
        input_size = check_input_size(meta["input_size"], "input_size")
    except ValueError as error:
        raise CheckpointError(f"{path}: {error}") from None
    return dict(meta, input_size=input_size, class_names=list(names))


def checkpoint_meta(path) -> dict:
    """The checkpoint's meta (name, input_size, class_names, extras) without torch or building the model."""
    path = Path(path)
    return check_meta(path, read_content(path)["meta"])
