"""models/detector.py: letterbox, torch inference, yolox postprocess rescaled to the original image."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models import Detector, build_model, save_checkpoint

CLASSES = ["drone", "bird", "airplane"]
INPUT_SIZE = (64, 96)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("yolox-nano-gssam-sigres-p1", num_classes=len(CLASSES))
    path = tmp_path_factory.mktemp("detector") / "nano.pt"
    save_checkpoint(path, model, name="yolox-nano-gssam-sigres-p1", input_size=INPUT_SIZE, class_names=CLASSES)
    return path


@pytest.fixture(scope="module")
def detector(weights):
    return Detector(weights, conf_threshold=0.0, nms_threshold=0.45)


@pytest.fixture(scope="module")
def thresholded(weights):
    return Detector(weights, conf_threshold=0.3, nms_threshold=0.45)


def _image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_meta_is_exposed(detector):
    assert detector.class_names == CLASSES
    assert detector.input_size == INPUT_SIZE


def test_preprocess_letterboxes_top_left_with_114(detector):
    image = _image(32, 32)  # scaled by min(64/32, 96/32) = 2 -> 64 x 64, padded right to 96
    chw, ratio = detector.preprocess(image)
    assert chw.shape == (3, *INPUT_SIZE) and chw.dtype == np.float32
    assert ratio == pytest.approx(2.0)
    assert np.all(chw[:, :, 64:] == 114)
    assert not np.all(chw[:, :, :64] == 114)


def test_preprocess_rejects_non_images(detector):
    with pytest.raises(ValueError, match="H x W x 3"):
        detector.preprocess(np.zeros((10, 10), dtype=np.uint8))


def test_postprocess_rescales_to_the_original_image(thresholded):
    anchors = sum((INPUT_SIZE[0] // s) * (INPUT_SIZE[1] // s) for s in (8, 16, 32))
    raw = np.zeros((2, anchors, 5 + len(CLASSES)), dtype=np.float32)
    raw[:, 0] = [40, 20, 20, 10, 0.9, 0.1, 0.8, 0.0]  # cx, cy, w, h, obj, class scores
    raw[:, 1] = [41, 20, 20, 10, 0.5, 0.9, 0.0, 0.0]  # same place, other class: class-aware NMS keeps it
    raw[:, 2] = [41, 21, 20, 10, 0.5, 0.0, 0.7, 0.0]  # overlaps the first, same class: suppressed
    results = thresholded.postprocess(raw, [2.0, 0.5], [(32, 48, 3), (200, 200, 3)])
    first = results[0][np.argsort(-results[0][:, 4])]
    np.testing.assert_allclose(first[0], [15, 7.5, 25, 12.5, 0.72, 1], rtol=1e-5)
    np.testing.assert_allclose(first[1], [15.5, 7.5, 25.5, 12.5, 0.45, 0], rtol=1e-5)
    assert len(first) == 2
    np.testing.assert_allclose(results[1][0, :4], [60, 30, 100, 50], rtol=1e-5)
    assert len(results[1]) == 2


def test_class_agnostic_nms_keeps_one_box_per_object(weights):
    anchors = sum((INPUT_SIZE[0] // s) * (INPUT_SIZE[1] // s) for s in (8, 16, 32))
    raw = np.zeros((1, anchors, 5 + len(CLASSES)), dtype=np.float32)
    raw[0, 0] = [40, 20, 20, 10, 0.9, 0.1, 0.8, 0.0]  # a bird at 0.72
    raw[0, 1] = [41, 20, 20, 10, 0.5, 0.9, 0.0, 0.0]  # the same place as a drone at 0.45: suppressed
    raw[0, 2] = [10, 40, 8, 8, 0.9, 0.9, 0.0, 0.0]    # elsewhere: kept
    agnostic = Detector(weights, conf_threshold=0.3, nms_threshold=0.45, class_agnostic_nms=True)
    (result,) = agnostic.postprocess(raw, [1.0], [(64, 96, 3)])
    result = result[np.argsort(-result[:, 4])]
    np.testing.assert_allclose(result[:, 4:], [[0.81, 0], [0.72, 1]], rtol=1e-5)


def test_boxes_are_clipped_to_the_image(thresholded):
    anchors = sum((INPUT_SIZE[0] // s) * (INPUT_SIZE[1] // s) for s in (8, 16, 32))
    raw = np.zeros((1, anchors, 5 + len(CLASSES)), dtype=np.float32)
    raw[0, 0] = [2, 2, 20, 20, 1.0, 1.0, 0.0, 0.0]
    (result,) = thresholded.postprocess(raw, [1.0], [(10, 12, 3)])
    np.testing.assert_allclose(result[0, :4], [0, 0, 12, 10])


def test_call_runs_end_to_end(detector):
    images = [_image(48, 80, 1), _image(100, 60, 2)]
    results = detector(images)
    assert len(results) == 2
    for image, result in zip(images, results):
        assert result.dtype == np.float32 and result.shape[1] == 6
        assert len(result) > 0  # threshold 0: an untrained model still proposes boxes
        assert np.all(result[:, [0, 2]] <= image.shape[1]) and np.all(result[:, [1, 3]] <= image.shape[0])
        assert set(np.unique(result[:, 5])) <= {0.0, 1.0, 2.0}
    assert detector([]) == []


def test_torch_detector_equals_unfused_model(detector, weights):
    from models import load_checkpoint

    model, _ = load_checkpoint(weights)
    chw, _ = detector.preprocess(_image(64, 96, 3))
    with torch.no_grad():
        expected = model(torch.from_numpy(chw[None])).numpy()
    np.testing.assert_allclose(detector.infer(chw[None]), expected, rtol=1e-4, atol=2e-3)


@pytest.mark.parametrize("kwargs,problem", [
    ({"backend": "tensorrt"}, "unknown backend"),
    ({"fp16": True}, "fp16 needs a cuda device"),
    ({"backend": "onnx", "device": "cuda"}, "cpu only"),
    ({"workers": 0}, "workers must be a whole number >= 1"),
    ({"workers": True}, "workers must be a whole number >= 1"),
])
def test_bad_arguments(weights, kwargs, problem):
    with pytest.raises(ValueError, match=problem):
        Detector(weights, **kwargs)


@pytest.mark.parametrize("workers, count", [(2, 1), (2, 2), (2, 3), (2, 5), (3, 2), (3, 7)])
def test_workers_split_a_batch_and_keep_its_order(weights, tmp_path, workers, count):
    """1-thread copies run a batch side by side (fewer images than copies too): the same outputs,
    image for image, as one copy."""
    single = Detector(weights, backend="onnx", onnx_threads=1, cache_dir=tmp_path)
    several = Detector(weights, backend="onnx", onnx_threads=1, cache_dir=tmp_path, workers=workers)
    assert len({id(engine) for engine in several.engines}) == workers
    images = np.stack([single.preprocess(_image(60, 90, seed))[0] for seed in range(count)])
    np.testing.assert_array_equal(several.infer(images), single.infer(images))
    several.close()


def test_a_failing_worker_fails_the_batch_in_one_error_after_every_copy_stopped(weights, tmp_path):
    detector = Detector(weights, backend="onnx", onnx_threads=1, cache_dir=tmp_path, workers=2)
    running = []

    class Failing:
        def run(self, batch):
            running.append(len(batch))
            raise RuntimeError("model run failed")

    detector.engines[1] = Failing()
    images = np.stack([detector.preprocess(_image(60, 90, seed))[0] for seed in range(4)])
    with pytest.raises(RuntimeError, match="model run failed"):
        detector.infer(images)
    assert running == [2]
    detector.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fp16_channels_last_close_to_cpu(weights, detector):
    gpu = Detector(weights, device="cuda", fp16=True, conf_threshold=0.0)
    chw, _ = detector.preprocess(_image(64, 96, 4))
    cpu_out, gpu_out = detector.infer(chw[None]), gpu.infer(chw[None])
    np.testing.assert_allclose(gpu_out[..., 4:], cpu_out[..., 4:], atol=2e-2)
