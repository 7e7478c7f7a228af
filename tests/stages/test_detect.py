"""The detect stage gives exactly what models.Detector gives on the same frames, batched or not."""
import numpy as np

from pipeline.runtime.config import config_from_dict
from pipeline.runtime.messages import FrameMessage
from stages.detect import DetectStage
from stages.preprocess import PreprocessStage


def test_batched_stage_output_equals_detector_on_each_frame(tmp_path, random_weights, synthetic_clip):
    import cv2
    from models import Detector

    cfg = config_from_dict({"sources": [{"id": "a", "uri": str(synthetic_clip.video)}], "output_dir": str(tmp_path),
                            "stages": {"detect": {"weights": str(random_weights), "backend": "torch",
                                                  "batch_size": 3, "conf_threshold": 1e-6}}})
    cap = cv2.VideoCapture(str(synthetic_clip.video))
    images = [cap.read()[1] for _ in range(3)]
    pre, det = PreprocessStage(cfg), DetectStage(cfg)
    msgs = [pre.process(FrameMessage("a", i, i / 30, 0.0, {"image": im}))[0] for i, im in enumerate(images)]
    out = det.process_batch(msgs)
    reference = Detector(random_weights, backend="torch", conf_threshold=1e-6,
                         class_agnostic_nms=cfg.stages.detect.class_agnostic_nms)
    for msg, image in zip(out, images):
        assert "input" not in msg.buffers  # the letterboxed copy does not travel further
        expected = reference([image])[0]
        assert len(expected) > 0
        np.testing.assert_allclose(msg.detections, expected, rtol=1e-4, atol=1e-3)
        # objectness per detection, class-agnostic: score = objectness x class score <= objectness
        objectness = np.array(msg.meta["object_scores"])
        assert len(objectness) == len(msg.detections) and ((objectness >= 0) & (objectness <= 1)).all()
        assert (msg.detections[:, 4] <= objectness + 1e-3).all()


def test_auto_backend_and_workers_run_what_this_machine_runs_fastest(tmp_path, random_weights, synthetic_clip):
    """backend: auto resolves here (openvino-bf16 on a bf16 CPU with openvino, else onnx); two
    1-thread workers give the same boxes as the named backend on one copy."""
    import cv2
    from models import Detector
    from models.backends import resolve_backend

    cfg = config_from_dict({"sources": [{"id": "a", "uri": str(synthetic_clip.video)}], "output_dir": str(tmp_path),
                            "stages": {"detect": {"weights": str(random_weights), "backend": "auto", "threads": 1,
                                                  "workers": 2, "spin": False, "conf_threshold": 1e-6}}})
    DetectStage.preflight(cfg)
    det = DetectStage(cfg)
    chosen = resolve_backend("auto")
    assert det.detector.backend == chosen and chosen in ("openvino-bf16", "onnx") and len(det.detector.engines) == 2
    cap = cv2.VideoCapture(str(synthetic_clip.video))
    images = [cap.read()[1] for _ in range(3)]
    pre = PreprocessStage(cfg)
    out = det.process_batch([pre.process(FrameMessage("a", i, i / 30, 0.0, {"image": im}))[0]
                             for i, im in enumerate(images)])
    reference = Detector(random_weights, backend=chosen, onnx_threads=1, conf_threshold=1e-6,
                         class_agnostic_nms=cfg.stages.detect.class_agnostic_nms)
    for msg, image in zip(out, images):
        np.testing.assert_allclose(msg.detections, reference([image])[0], rtol=1e-4, atol=1e-3)
    det.close()
    assert det.detector._pool._shutdown  # the workers' threads are stopped with the stage
