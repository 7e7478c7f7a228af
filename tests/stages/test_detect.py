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


def _weights_config(tmp_path, weights: str):
    import textwrap

    from pipeline.runtime.config import load_config

    (tmp_path / "clip.mp4").write_bytes(b"")
    path = tmp_path / "cfg.yaml"
    path.write_text(textwrap.dedent(f"""
        sources: [{{id: cam0, uri: clip.mp4}}]
        output_dir: out
        stages: {{detect: {{weights: '{weights}'}}}}
    """))
    return load_config(path)


def test_weights_by_shipped_name_or_by_path_beside_the_config(tmp_path):
    import models
    from stages.model_input import weights_path

    assert weights_path(_weights_config(tmp_path, "demo")) == str(models.WEIGHTS_DIR / "demo.pt")
    (tmp_path / "mine").write_bytes(b"x")                       # a path without a suffix is still a path
    assert weights_path(_weights_config(tmp_path, "mine")) == str(tmp_path / "mine")
    assert weights_path(_weights_config(tmp_path, "./mine")) == str(tmp_path / "mine")


def test_weights_that_name_nothing_or_two_things_are_one_line(tmp_path):
    import pytest

    from pipeline.runtime.config import ConfigError

    with pytest.raises(ConfigError, match="nosuchmodel does not exist and is not a shipped name \\(default, demo"):
        _weights_config(tmp_path, "nosuchmodel")
    with pytest.raises(ConfigError, match="Demo does not exist and is not a shipped name"):
        _weights_config(tmp_path, "Demo")                      # names match exactly, whatever the file system
    (tmp_path / "demo").write_bytes(b"x")                      # a file beside the config called like a shipped one
    with pytest.raises(ConfigError, match="names a shipped checkpoint and the file .*write ./demo for the file"):
        _weights_config(tmp_path, "demo")
    assert _weights_config(tmp_path, "./demo").stages.detect.weights == "./demo"
