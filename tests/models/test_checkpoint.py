"""models/checkpoint.py: round trip with weights_only loading; every bad file gives one line."""
from __future__ import annotations

import pytest
import torch

from models import CheckpointError, build_model, load_checkpoint, load_weights_into, save_checkpoint
from models.checkpoint import FORMAT

NAME = "yolox-nano-gssam-sigres-p1"
CLASSES = ["drone", "bird"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(NAME, num_classes=len(CLASSES)).eval()
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, model, name=NAME, input_size=(64, 96), class_names=CLASSES,
                    epoch=7, metrics={"map50_95": 0.25})
    return model, path


def _assert_one_line_naming(error: CheckpointError, path, problem: str):
    message = str(error)
    assert "\n" not in message
    assert str(path) in message
    assert problem in message


def test_round_trip_rebuilds_the_model(saved):
    model, path = saved
    loaded, meta = load_checkpoint(path)
    assert meta == {"name": NAME, "input_size": (64, 96), "class_names": CLASSES,
                    "epoch": 7, "metrics": {"map50_95": 0.25}}
    assert not loaded.training
    images = torch.rand(1, 3, 64, 96) * 255
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images))


def test_file_is_plain_tensors_loadable_weights_only(saved):
    _, path = saved
    content = torch.load(path, weights_only=True)
    assert content["format"] == FORMAT
    assert all(isinstance(v, torch.Tensor) for v in content["state_dict"].values())


def _raises(path, problem):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    _assert_one_line_naming(info.value, path, problem)


def test_missing_file(tmp_path):
    _raises(tmp_path / "absent.pt", "no such checkpoint file")


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello, not a zip\n")
    _raises(path, "checkpoint")


def test_truncated_file(saved, tmp_path):
    _, path = saved
    cut = tmp_path / "cut.pt"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    _raises(cut, "truncated")


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "object.pt"
    torch.save({"format": FORMAT, "state_dict": {}, "meta": {}, "payload": torch.nn.ReLU()}, path)
    _raises(path, "not a plain-tensor checkpoint")


def test_foreign_torch_file(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    _raises(path, "not a models checkpoint")


def test_mismatched_shapes(tmp_path):
    path = tmp_path / "three_classes.pt"
    model = build_model(NAME, num_classes=3)
    save_checkpoint(path, model, name=NAME, input_size=(64, 64), class_names=["a", "b", "c"])
    content = torch.load(path, weights_only=True)
    content["meta"]["class_names"] = ["a", "b"]  # meta says 2 classes, weights hold 3
    torch.save(content, path)
    _raises(path, "weights do not match model")


def test_weights_of_another_model(tmp_path):
    path = tmp_path / "other.pt"
    save_checkpoint(path, build_model("yolox-nano", 2), name="yolox-nano", input_size=(64, 64),
                    class_names=CLASSES)
    content = torch.load(path, weights_only=True)
    content["meta"]["name"] = "yolox-nano-gssam-sig-p2"
    torch.save(content, path)
    _raises(path, "missing")


def test_unknown_model_name(tmp_path, saved):
    _, good = saved
    content = torch.load(good, weights_only=True)
    content["meta"]["name"] = "yolox-huge"
    path = tmp_path / "huge.pt"
    torch.save(content, path)
    _raises(path, "unknown model name 'yolox-huge'")


def test_save_rejects_bad_meta(tmp_path):
    model = build_model("yolox-nano", 2)
    cases = [
        ({"name": "yolox-nano", "input_size": (65, 64), "class_names": CLASSES}, "multiples of 32"),
        ({"name": "nope", "input_size": (64, 64), "class_names": CLASSES}, "unknown model name"),
        ({"name": "yolox-nano", "input_size": (64, 64), "class_names": CLASSES, "bad": object()}, "plain values"),
    ]
    for kwargs, problem in cases:
        with pytest.raises(CheckpointError, match=problem):
            save_checkpoint(tmp_path / "x.pt", model, **kwargs)
    assert not (tmp_path / "x.pt").exists()


def test_checkpoint_meta_reads_meta_without_building(tmp_path):
    import models

    path = tmp_path / "m.pt"
    models.save_checkpoint(path, models.build_model("yolox-nano", num_classes=2), name="yolox-nano",
                           input_size=(256, 320), class_names=["drone", "bird"])
    meta = models.checkpoint_meta(path)
    assert meta["name"] == "yolox-nano" and meta["input_size"] == (256, 320) and meta["class_names"] == ["drone", "bird"]
    (tmp_path / "bad.pt").write_bytes(b"junk")
    with pytest.raises(models.CheckpointError, match="bad.pt"):
        models.checkpoint_meta(tmp_path / "bad.pt")


def test_checkpoint_meta_admits_no_global_that_could_run_code(tmp_path):
    """The torch-free reader is as safe as weights_only: a pickle naming os.system is refused, not run."""
    import os
    import pickle
    import zipfile

    import models

    class Exploit:
        def __reduce__(self):
            return os.system, ("touch " + str(tmp_path / "pwned"),)

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"format": "models.checkpoint/1", "meta": Exploit()}))
    with pytest.raises(models.CheckpointError, match="global posix.system is not allowed"):
        models.checkpoint_meta(path)
    assert not (tmp_path / "pwned").exists()


def test_weights_of_the_baseline_load_into_its_gssam_twin(tmp_path):
    torch.manual_seed(1)
    baseline = build_model("yolox-nano", num_classes=len(CLASSES)).eval()
    path = save_checkpoint(tmp_path / "base.pt", baseline, name="yolox-nano", input_size=(64, 96),
                           class_names=CLASSES)
    twin = build_model("yolox-nano-gssam-sigresid-p1", num_classes=len(CLASSES))
    assert load_weights_into(path, twin, CLASSES)["name"] == "yolox-nano"
    images = torch.rand(1, 3, 64, 96) * 255
    with torch.no_grad():
        assert torch.equal(twin.eval()(images), baseline(images))


@pytest.mark.parametrize("model_name,classes,problem", [
    ("yolox-tiny-gssam-sigresid-p1", CLASSES, "not yolox-tiny-gssam-sigresid-p1 nor its baseline yolox-tiny"),
    ("yolox-nano-gssam-sigresid-p1", ["drone", "plane"], "differ from"),
])
def test_weights_into_an_unrelated_model_are_one_line(saved, model_name, classes, problem):
    _, path = saved
    model = build_model(model_name, num_classes=len(classes))
    with pytest.raises(CheckpointError) as caught:
        load_weights_into(path, model, classes)
    _assert_one_line_naming(caught.value, path, problem)


def _model_pair(tmp_path, name="yolox-nano", classes=("drone", "bird"), half=False):
    torch.manual_seed(1)
    start, tuned = build_model(name, num_classes=len(classes)), build_model(name, num_classes=len(classes))
    with torch.no_grad():
        for parameter in tuned.parameters():
            parameter.add_(1.0)
        for module in tuned.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.fill_(2.0)
                module.num_batches_tracked.fill_(7)
    if half:
        tuned.half()            # as training saves its checkpoints
    tmp_path.mkdir(parents=True, exist_ok=True)
    paths = [save_checkpoint(tmp_path / f"{which}.pt", model, name=name, input_size=(64, 64), class_names=list(classes),
                             **({"note": "tuned", "metrics": {"map50_95": 0.3}} if which == "tuned" else {}))
             for which, model in (("start", start), ("tuned", tuned))]
    return paths, start.float().state_dict(), tuned.float().state_dict()


def test_blend_is_the_weighted_mean_of_every_float_tensor(tmp_path):
    from models import blend_checkpoints

    (start_path, tuned_path), start, tuned = _model_pair(tmp_path)
    for share in (0.0, 0.25, 1.0):
        model, meta = load_checkpoint(blend_checkpoints(start_path, tuned_path, share, tmp_path / f"b{share}.pt"))
        state = model.state_dict()
        for name, value in state.items():
            if value.is_floating_point():
                assert torch.allclose(value, (1 - share) * start[name] + share * tuned[name], atol=1e-6), name
            else:
                assert torch.equal(value, tuned[name]), name          # batch counters: the fine-tune's
        assert meta["blend"] == {"share": share, "start": "start.pt", "tuned": "tuned.pt"}   # names, not paths
        assert meta["note"] == "tuned" and meta["tuned_metrics"] == {"map50_95": 0.3} and "metrics" not in meta


def test_a_blend_keeps_the_fine_tunes_fp16_precision(tmp_path):
    from models import blend_checkpoints

    (start_path, tuned_path), start, tuned = _model_pair(tmp_path, half=True)
    path = blend_checkpoints(start_path, tuned_path, 0.5, tmp_path / "b.pt")
    state = torch.load(path, weights_only=True)["state_dict"]
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    name = next(k for k, v in state.items() if v.is_floating_point())
    assert torch.allclose(state[name].float(), 0.5 * start[name] + 0.5 * tuned[name], atol=1e-2)


def test_blending_different_models_or_a_bad_share_is_refused(tmp_path):
    from models import blend_checkpoints

    (start_path, tuned_path), _, _ = _model_pair(tmp_path)
    (other_classes, _), _, _ = _model_pair(tmp_path / "classes", classes=("drone", "bird", "plane"))
    (other_model, _), _, _ = _model_pair(tmp_path / "model", name="yolox-nano-gssam-sigresid-p1")
    for other in (other_classes, other_model):
        with pytest.raises(CheckpointError, match="different models or classes"):
            blend_checkpoints(other, tuned_path, 0.5, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not in 0..1"):
        blend_checkpoints(start_path, tuned_path, 1.5, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()
