"""models/onnx_export.py: ONNX (GSSAM inside, opset 17) + decode equals eager torch within 1e-4."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from models import Detector, build_model, gssam, load_checkpoint, save_checkpoint
from models.yolox_gssam import gssam_modules
from models.onnx_export import OPSET, cached_onnx_path, ensure_onnx

CLASSES = ["drone", "bird"]
# At 128 x 160 every stage's broadcast is small enough to be chosen; the tests that force
# BROADCAST_MAX_ELEMENTS = 0 export the sampled comparison instead: the table of
# gssam.sampled_contrast_interpolated, or with EXPORT_CONTRAST_KNOTS = 0 the exact sort + search.
INPUT_SIZE = (128, 160)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("yolox-nano-gssam-sigres-p1", num_classes=len(CLASSES))
    images = torch.rand(2, 3, *INPUT_SIZE) * 255
    targets = torch.zeros(2, 2, 5)
    targets[:, 0] = torch.tensor([1.0, 40.0, 40.0, 16.0, 12.0])
    model(images, targets)  # BN statistics off their defaults
    path = tmp_path_factory.mktemp("onnx") / "nano.pt"
    save_checkpoint(path, model.eval(), name="yolox-nano-gssam-sigres-p1", input_size=INPUT_SIZE,
                    class_names=CLASSES)
    return path


def _batch(seed=0, count=2):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (count, 3, *INPUT_SIZE)).astype(np.float32)


def test_onnx_equals_torch(weights, tmp_path):
    torch_detector = Detector(weights, backend="torch")
    onnx_detector = Detector(weights, backend="onnx", cache_dir=tmp_path)
    batch = _batch()
    expected, actual = torch_detector.infer(batch), onnx_detector.infer(batch)
    scale = np.maximum(1.0, np.abs(expected))
    assert np.max(np.abs(actual - expected) / scale) < 1e-4


def test_onnx_at_another_input_size_than_the_checkpoints(weights, tmp_path):
    """stages.preprocess.input_size: the export follows the size the frames come at."""
    size = (INPUT_SIZE[0] + 32, INPUT_SIZE[1] + 64)
    torch_detector = Detector(weights, backend="torch", input_size=size)
    onnx_detector = Detector(weights, backend="onnx", cache_dir=tmp_path, input_size=size)
    batch = np.random.default_rng(1).uniform(0, 255, (1, 3, *size)).astype(np.float32)
    expected, actual = torch_detector.infer(batch), onnx_detector.infer(batch)
    assert actual.shape == expected.shape and np.max(np.abs(actual - expected) / np.maximum(1.0, np.abs(expected))) < 1e-4
    with pytest.raises(ValueError, match="multiples of 32"):
        Detector(weights, backend="torch", input_size=(100, 96))


def test_graph_is_opset17_and_contains_the_sampling(weights, tmp_path, monkeypatch):
    monkeypatch.setattr(gssam, "BROADCAST_MAX_ELEMENTS", 0)
    detector = Detector(weights, backend="onnx", cache_dir=tmp_path)
    graph = onnx.load(str(detector.onnx_path))
    assert any(o.domain in ("", "ai.onnx") and o.version == OPSET for o in graph.opset_import)
    ops = {node.op_type for node in graph.graph.node}
    assert {"MaxPool", "Floor", "GatherElements", "Sigmoid"} <= ops
    assert "TopK" not in ops  # the table of sampled_contrast_interpolated needs no sort
    assert "Exp" not in ops  # box decoding runs outside the graph
    # the 1-channel context convs are exported 3-D (kept out of ONNX Runtime's blocked 2-D layout)
    kernels_3d = {t.name for t in graph.graph.initializer if len(t.dims) == 5}
    conv3d_outputs = {n.output[0] for n in graph.graph.node if n.op_type == "Conv" and n.input[1] in kernels_3d}
    assert conv3d_outputs
    readers = [n.op_type for n in graph.graph.node if set(n.input) & conv3d_outputs]
    # BNs folded before export; the map stays 3-D through each stack: one Squeeze per module, at its end
    assert "BatchNormalization" not in readers
    assert readers.count("Squeeze") == len(list(gssam_modules(load_checkpoint(weights)[0])))


@pytest.mark.parametrize("knots", [0, gssam.EXPORT_CONTRAST_KNOTS])
def test_forced_sampled_comparison_everywhere_still_matches(weights, tmp_path, monkeypatch, knots):
    """Every stage exported without the broadcast: the exact sort and unrolled search (knots 0) or
    the interpolated table, against eager torch's exact comparison."""
    monkeypatch.setattr(gssam, "BROADCAST_MAX_ELEMENTS", 0)
    monkeypatch.setattr(gssam, "EXPORT_CONTRAST_KNOTS", knots)
    torch_detector = Detector(weights, backend="torch")
    onnx_detector = Detector(weights, backend="onnx", cache_dir=tmp_path / str(knots))
    ops = {node.op_type for node in onnx.load(str(onnx_detector.onnx_path)).graph.node}
    assert ({"TopK", "CumSum"} <= ops) == (knots == 0)
    batch = _batch(seed=1, count=2)  # each image samples its own points
    expected, actual = torch_detector.infer(batch), onnx_detector.infer(batch)
    assert np.max(np.abs(actual - expected) / np.maximum(1.0, np.abs(expected))) < 1e-4


def test_export_is_cached_by_content(weights, tmp_path):
    first = Detector(weights, backend="onnx", cache_dir=tmp_path)
    stamp = first.onnx_path.stat().st_mtime_ns
    second = Detector(weights, backend="onnx", cache_dir=tmp_path)
    assert second.onnx_path == first.onnx_path == cached_onnx_path(weights, INPUT_SIZE, tmp_path)
    assert second.onnx_path.stat().st_mtime_ns == stamp


def test_identity_start_twin_exports_with_its_gate(tmp_path):
    torch.manual_seed(3)
    name = "yolox-nano-gssam-sigresid-p1"
    model = build_model(name, num_classes=len(CLASSES)).eval()
    with torch.no_grad():
        for _, module in gssam_modules(model):  # as after training: an open gate, a shifted sigmoid
            module.gate.fill_(0.8)
            module.contrast_shift.fill_(-1.0)
    path = save_checkpoint(tmp_path / "twin.pt", model, name=name, input_size=INPUT_SIZE, class_names=CLASSES)
    batch = _batch(seed=4)
    expected = Detector(path, backend="torch").infer(batch)
    actual = Detector(path, backend="onnx", cache_dir=tmp_path).infer(batch)
    assert np.max(np.abs(actual - expected) / np.maximum(1.0, np.abs(expected))) < 1e-4


def test_the_stem_reads_the_image_with_one_strided_conv(weights, tmp_path):
    """Focus's slices and concat are exported as the 6x6 stride-2 conv they equal."""
    graph = onnx.load(str(Detector(weights, backend="onnx", cache_dir=tmp_path).onnx_path)).graph
    readers = [node for node in graph.node if "images" in node.input]
    assert [node.op_type for node in readers] == ["Conv"]
    attributes = {a.name: list(a.ints) for a in readers[0].attribute}
    assert attributes["strides"] == [2, 2] and attributes["pads"] == [2, 2, 2, 2]


def _reductions(path) -> dict[str, int]:
    """GSSAM channel reductions in an exported graph, by op type."""
    nodes = [n for n in onnx.load(str(path)).graph.node if "attend_output/" in n.name and "context.0/" in n.name]
    return {op: sum(n.op_type == op for n in nodes) for op in ("MatMul", "Conv")}


def _context_kernel_ranks(path) -> list[int]:
    """Ranks of the kernels of the GSSAM context convs after the reduction (context.1 ...), in graph order."""
    graph = onnx.load(str(path)).graph
    ranks = {t.name: len(t.dims) for t in graph.initializer}
    return [ranks[n.input[1]] for n in graph.node if n.op_type == "Conv" and "attend_output/" in n.name
            and "context." in n.name and "context.0/" not in n.name]


def test_each_runtime_gets_its_own_export_with_the_reduction_it_runs_fast(weights, tmp_path):
    modules = len(gssam_modules(load_checkpoint(weights)[0]))
    for_onnxruntime = cached_onnx_path(weights, INPUT_SIZE, tmp_path)
    for_openvino = cached_onnx_path(weights, INPUT_SIZE, tmp_path, flavor="openvino")
    assert for_onnxruntime != for_openvino
    assert ensure_onnx(weights, INPUT_SIZE, tmp_path) == for_onnxruntime
    assert ensure_onnx(weights, INPUT_SIZE, tmp_path, flavor="openvino") == for_openvino
    assert _reductions(for_onnxruntime) == {"MatMul": modules, "Conv": 0}
    assert _reductions(for_openvino) == {"MatMul": 0, "Conv": modules}
    # the 1-channel 3x3 convs: 3-D for ONNX Runtime (out of its blocked layout), plain 2-D for OpenVINO
    context_convs = sum(m.num_convs for _, m in gssam_modules(load_checkpoint(weights)[0]))
    assert _context_kernel_ranks(for_onnxruntime) == [5] * context_convs
    assert _context_kernel_ranks(for_openvino) == [4] * context_convs
    with pytest.raises(ValueError, match="unknown export flavor 'tensorrt'"):
        cached_onnx_path(weights, INPUT_SIZE, tmp_path, flavor="tensorrt")


def test_openvino_equals_torch_image_by_image(weights, tmp_path):
    pytest.importorskip("openvino", reason="the openvino backend's package is not installed")
    batch = _batch(seed=2, count=3)  # compiled for one image: a batch runs image by image
    expected = Detector(weights, backend="torch").infer(batch)
    actual = Detector(weights, backend="openvino", cache_dir=tmp_path).infer(batch)
    assert actual.shape == expected.shape
    assert np.max(np.abs(actual - expected) / np.maximum(1.0, np.abs(expected))) < 1e-4
