"""Each backend's detections equal the fp32 reference (ONNX Runtime) within the tolerance its class
declares (``Backend.agreement``) on real frames of the shipped default model: the dataset's val
frames where ../shared is present, else rendered and H.264-encoded synthetic frames."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import supervision as sv

from models import DEFAULT_WEIGHTS, Detector
from models.backends import BACKENDS, REGISTRY, BackendError, check_available
from models.quantize import KINDS, quantize
from tests.conftest import REPO_ROOT

CONF = 0.3


def _installed(name: str) -> bool:
    try:
        check_available(name)
        return True
    except BackendError:
        return False


@pytest.fixture(scope="module")
def frames(synthetic_clip):
    from pipeline.offline.data import dataset

    try:
        clips = dataset.load_split("val")
        return [next(dataset.iter_frames(clip, stride=50, max_frames=1))[1] for clip in clips[::max(1, len(clips) // 16)][:16]]
    except dataset.DatasetError:
        import cv2

        capture, images = cv2.VideoCapture(str(synthetic_clip.video)), []
        while len(images) < 16:
            ok, image = capture.read()
            if not ok:
                break
            images.append(image)
        capture.release()
        return images


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("backend-cache")


@pytest.fixture(scope="module")
def reference(frames, cache):
    detector = Detector(DEFAULT_WEIGHTS, backend="onnx", conf_threshold=CONF, cache_dir=cache)
    found = [detector([frame])[0] for frame in frames]
    assert sum(len(f) for f in found) >= 5, "too few reference detections to compare on"
    return found


def share_found(reference: list, found: list, iou: float) -> float:
    total = sum(len(r) for r in reference)
    hits = sum(int((sv.box_iou_batch(r[:, :4], f[:, :4]).max(1) >= iou).sum()) for r, f in zip(reference, found)
               if len(r) and len(f))
    return hits / total


@pytest.mark.slow
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "onnx"])
def test_backend_agrees_with_the_fp32_reference(backend, frames, reference, cache):
    if not _installed(backend):
        pytest.skip(f"{backend} cannot run here")
    if backend in KINDS:  # calibrated on other frames than the ones compared
        from pipeline.offline.data.synthetic import render_clip

        calibration = Detector(DEFAULT_WEIGHTS, backend="onnx", cache_dir=cache)
        images = [image for seed in range(8) for image, _ in render_clip(seed=100 + seed, frames=2, size=(640, 512),
                                                                         modality="IR" if seed % 2 else "V")]
        quantize(DEFAULT_WEIGHTS, calibration.input_size, np.stack([calibration.preprocess(i)[0] for i in images]),
                 backend, cache)
    detector = Detector(DEFAULT_WEIGHTS, backend=backend, conf_threshold=CONF, cache_dir=cache)
    iou, share = REGISTRY[backend].agreement
    assert share_found(reference, [detector([frame])[0] for frame in frames], iou) >= share


def test_an_onnx_detector_process_never_imports_torch(cache):
    Detector(DEFAULT_WEIGHTS, backend="onnx", cache_dir=cache)  # the export is cached (this needs torch)
    code = ("import sys, numpy as np\nfrom models import Detector\n"
            f"d = Detector(backend='onnx', cache_dir={str(cache)!r}, conf_threshold=0.3)\n"
            "d([np.zeros((480, 640, 3), np.uint8)])\n"
            "assert 'torch' not in sys.modules and 'yolox' not in sys.modules, 'torch was imported'\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-500:]


def test_an_int8_model_follows_its_weights(tmp_path, random_weights):
    from models.quantize import quantized_path

    copy = tmp_path / "elsewhere" / "default.pt"
    copy.parent.mkdir()
    copy.write_bytes(DEFAULT_WEIGHTS.read_bytes())
    size = (512, 640)
    assert quantized_path(copy, size, tmp_path) == quantized_path(DEFAULT_WEIGHTS, size, tmp_path)  # by content
    changed = tmp_path / "changed" / "default.pt"
    changed.parent.mkdir()
    changed.write_bytes(random_weights.read_bytes())
    assert quantized_path(changed, size, tmp_path) != quantized_path(DEFAULT_WEIGHTS, size, tmp_path)
    with pytest.raises(BackendError, match=r"no onnx-int8 model of .* make it once with python -m pipeline quantize"):
        Detector(copy, backend="onnx-int8", cache_dir=tmp_path)
