"""ONNX export (GSSAM inside, opset 17) with the head's box decoding kept out of the graph.

The graph returns the head's undecoded outputs (B x A x (5 + C), sigmoids applied), as every backend
does; models.postprocess decodes them. Exported files are cached by the weights file's content hash,
the code that shapes the graph (GRAPH_SOURCES), the torch and yolox releases, input size and opset. Finding a cached file imports no torch:
only an export does.
"""
from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import os
import warnings
from pathlib import Path

OPSET = 17
DEFAULT_CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache" / "onnx"
# The graph is shaped for the runtime that runs it (same outputs, different cost): "onnxruntime" keeps
# GSSAM's channel reduction a MatMul (its blocked layout makes a 1-output conv slow), "openvino" a
# 1x1 Conv (its channels-last layout makes the MatMul's planar view slow). Value: file name suffix.
FLAVORS = {"onnxruntime": "", "openvino": "-ov"}


def _check_flavor(flavor: str) -> None:
    if flavor not in FLAVORS:
        raise ValueError(f"unknown export flavor {flavor!r}; valid: {', '.join(FLAVORS)}")


def export_onnx(model, path, input_size: tuple[int, int], opset: int = OPSET, flavor: str = "onnxruntime") -> Path:
    """Export an eval copy of ``model`` (an nn.Module) for inputs N x 3 x H x W (dynamic batch) to ``path``."""
    import torch

    from .gssam import ChannelReduction, SingleChannelConv3x3
    from .yolox_gssam import focus_as_strided_conv, gssam_modules

    _check_flavor(flavor)
    path = Path(path)
    export_model = focus_as_strided_conv(copy.deepcopy(model).float().cpu().eval())
    for _, gssam in gssam_modules(export_model):  # ONNX Runtime cannot fold the BNs of the 1-channel 3-D convs;
        gssam.fuse()                              # the rest it folds itself (pre-folded measured 7 % slower)
    for module in export_model.modules():  # each runtime's faster form of GSSAM's 1-channel steps
        if isinstance(module, ChannelReduction):
            module.export_as_matmul = flavor == "onnxruntime"
        if isinstance(module, SingleChannelConv3x3):
            module.export_as_conv3d = flavor == "onnxruntime"
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


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, 16 hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


GRAPH_SOURCES = ("gssam.py", "yolox_gssam.py", "simota.py", "checkpoint.py", "onnx_export.py")  # the graph's code


def package_version(name: str) -> str:
    """The installed release of ``name``, or "absent" (a host that carries cached exports may lack torch)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _code_digest() -> str:
    """Changes whenever the code that shapes the graph changes: these modules, torch, yolox."""
    digest = hashlib.sha256()
    for package in ("torch", "pixeltable-yolox"):
        digest.update(package_version(package).encode())
    here = Path(__file__).resolve().parent
    for source in GRAPH_SOURCES:
        digest.update((here / source).read_bytes())
    return digest.hexdigest()[:8]


def cached_onnx_path(weights, input_size: tuple[int, int], cache_dir=None, opset: int = OPSET,
                     flavor: str = "onnxruntime") -> Path:
    """Where the export of ``weights`` lives:
    <cache>/<stem>-<weights sha>-<code sha>-<h>x<w>-opset<k><flavor suffix>.onnx."""
    _check_flavor(flavor)
    weights = Path(weights)
    cache = Path(cache_dir or os.environ.get("MODELS_ONNX_CACHE", DEFAULT_CACHE_DIR))
    h, w = input_size
    return cache / f"{weights.stem}-{file_digest(weights)}-{_code_digest()}-{h}x{w}-opset{opset}{FLAVORS[flavor]}.onnx"


def ensure_onnx(weights, input_size: tuple[int, int], cache_dir=None, flavor: str = "onnxruntime") -> Path:
    """The cached export of ``weights`` for ``flavor``'s runtime, exporting it first if absent (torch, ~4 s)."""
    path = cached_onnx_path(weights, input_size, cache_dir, flavor=flavor)
    if not path.is_file():
        from .checkpoint import load_checkpoint

        model, _ = load_checkpoint(weights, device="cpu")
        export_onnx(model, path, input_size, flavor=flavor)
    return path
