"""ONNX export (GSSAM inside, opset 17) with the head's box decoding kept out of the graph.

The graph returns the head's undecoded outputs (B x A x (5 + C), sigmoids applied); ``decode`` runs
the yolox head's own ``decode_outputs`` on them, so ONNX Runtime + decode equals eager torch.
Exported files are cached by the weights file's content hash, this package's code, input size and opset.
"""
from __future__ import annotations

import copy
import hashlib
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .yolox_gssam import gssam_modules

OPSET = 17
DEFAULT_CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache" / "onnx"


def export_onnx(model: nn.Module, path, input_size: tuple[int, int], opset: int = OPSET) -> Path:
    """Export an eval copy of ``model`` for inputs N x 3 x H x W (dynamic batch) to ``path``."""
    path = Path(path)
    export_model = copy.deepcopy(model).float().cpu().eval()
    for _, gssam in gssam_modules(export_model):  # ONNX Runtime cannot fold the BNs of the 1-channel 3-D convs;
        gssam.fuse()                              # the rest it folds itself (pre-folded measured 7 % slower)
    export_model.head.decode_in_inference = False
    dummy = torch.zeros(1, 3, *input_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shapes are fixed per export
        warnings.filterwarnings("ignore", message="Constant folding")
        torch.onnx.export(
            export_model, (dummy,), str(temporary), opset_version=opset, dynamo=False,
            input_names=["images"], output_names=["outputs"],
            dynamic_axes={"images": {0: "batch"}, "outputs": {0: "batch"}},
        )
    os.replace(temporary, path)
    return path


def decode(head: nn.Module, raw: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
    """Decode undecoded head outputs for an input size with the yolox head's own decoder."""
    height, width = input_size
    head.hw = [(height // s, width // s) for s in head.strides]
    return head.decode_outputs(raw, dtype=raw.type())


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _code_digest() -> str:
    """Changes whenever the code that shapes the graph (this package, torch) changes."""
    digest = hashlib.sha256(torch.__version__.encode())
    for source in sorted(Path(__file__).resolve().parent.glob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:8]


def cached_onnx_path(weights, input_size: tuple[int, int], cache_dir=None, opset: int = OPSET) -> Path:
    """Where the export of ``weights`` lives: <cache>/<stem>-<weights sha>-<code sha>-<h>x<w>-opset<k>.onnx."""
    weights = Path(weights)
    cache = Path(cache_dir or os.environ.get("MODELS_ONNX_CACHE", DEFAULT_CACHE_DIR))
    h, w = input_size
    return cache / f"{weights.stem}-{_file_digest(weights)}-{_code_digest()}-{h}x{w}-opset{opset}.onnx"


def ensure_onnx(weights, model: nn.Module, input_size: tuple[int, int], cache_dir=None) -> Path:
    """The cached export of ``weights``, exporting it first if absent (about a second)."""
    path = cached_onnx_path(weights, input_size, cache_dir)
    if not path.is_file():
        export_onnx(model, path, input_size)
    return path


def onnx_session(path, threads: int = 2):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads.

    Its threads keep spinning a while after each run (ONNX Runtime's default): measured here, a lone
    nano session runs in 14.8 ms spinning vs 20.5 ms sleeping. Two sessions run in turn steal each
    other's CPU that way (scripts/model_report.py times them in blocks for this reason)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
