"""The weights the project ships: each loads, carries its meta, has a model card; the field model finds
the drone of the embedded real clip `make demo` replays, the demo model those of the synthetic clip;
names resolve to them."""
from pathlib import Path

import pytest

import models
from stages.detect import DetectConfig
from pipeline.offline.data.dataset import CLASSES
from pipeline.offline.eval import clip_recall
from pipeline.offline.data.synthetic import make_clip

WEIGHTS = sorted((Path(models.__file__).parent / "weights").glob("*.pt"))
REPO = Path(models.__file__).resolve().parent.parent
ASSETS = REPO / "configs" / "assets"  # the embedded demo clip (scripts/make_demo_clip.py)


@pytest.mark.parametrize("path", WEIGHTS, ids=[p.name for p in WEIGHTS])
def test_shipped_weights_load_with_meta_and_card(path):
    model, meta = models.load_checkpoint(path)
    assert meta["class_names"] == list(CLASSES) and meta["input_size"] == (512, 640)
    assert path.stat().st_size < 40 * 2**20
    card = path.with_suffix(".md")
    assert card.is_file(), f"{path.name} has no model card"
    assert meta["name"] in card.read_text()


def test_default_is_the_nano_sigres_p1():
    assert models.load_checkpoint(models.DEFAULT_WEIGHTS)[1]["name"] == "yolox-nano-gssam-sigres-p1"


def test_shipped_names_resolve_and_paths_stay_paths(tmp_path):
    assert models.shipped_weights("default") == models.DEFAULT_WEIGHTS
    assert models.shipped_weights("demo") == models.WEIGHTS_DIR / "demo.pt"
    for not_a_name in ("", "nothing-shipped", "../weights/default", "default.pt", str(tmp_path / "default")):
        assert models.shipped_weights(not_a_name) is None, not_a_name
    assert models.weights_file("demo") == models.WEIGHTS_DIR / "demo.pt"
    assert models.weights_file("runs/x/best.pt") == Path("runs/x/best.pt")


def test_the_demo_configs_replay_the_embedded_clip_with_the_field_model():
    import yaml

    for name in ("demo.yaml", "view_demo.yaml"):
        config = yaml.safe_load((REPO / "configs" / name).read_text())
        assert config["stages"]["detect"]["weights"] == "default", name
        assert {source["uri"] for source in config["sources"]} == {"assets/V_DRONE_080.mp4"}, name
    assert (ASSETS / "V_DRONE_080.mp4").stat().st_size < 1 << 20


def test_the_field_model_finds_the_drone_of_the_embedded_clip():
    """`make demo`'s clip, from the test split: >= 90 % of its drone boxes (tightened) at IoU 0.5,
    every 3rd frame, run as the pipeline runs the model."""
    detector = models.Detector(models.shipped_weights("default"), backend="onnx",
                               class_agnostic_nms=DetectConfig().class_agnostic_nms)
    report = clip_recall(detector, ASSETS / "V_DRONE_080.mp4", ASSETS / "V_DRONE_080.json")
    assert report["boxes"] == 100
    assert report["recall"]["0.5"] >= 0.90, f"the field model found {report['recall']['0.5']:.1%} of the drones"


@pytest.mark.slow
def test_demo_model_finds_the_drones_of_the_synthetic_clip(tmp_path):
    """The issue's bar: >= 90 % of the drones of the synthetic seed-7 clip (the demo clip until 2026-12-07) at
    IoU 0.5, every 3rd frame."""
    paths = make_clip(tmp_path, seed=7, frames=300, size=(640, 512))
    detector = models.Detector(models.shipped_weights("demo"), backend="onnx",
                               class_agnostic_nms=DetectConfig().class_agnostic_nms)  # as the pipeline runs it
    report = clip_recall(detector, paths.video, paths.coco)
    assert report["boxes"] > 100
    assert report["recall"]["0.5"] >= 0.90, f"demo model found {report['recall']['0.5']:.1%} of the demo drones"
