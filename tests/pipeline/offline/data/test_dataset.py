import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest
from pycocotools.coco import COCO

from pipeline.offline.data import dataset
from pipeline.offline.data.dataset import CLASSES, DEFAULT_ROOT, SPLIT_MANIFEST

requires_real_data = pytest.mark.skipif(not DEFAULT_ROOT.is_dir(), reason=f"real dataset absent at {DEFAULT_ROOT}")


@pytest.fixture
def dataset_copy(synthetic_dataset_root, tmp_path):
    """A writable copy of the synthetic dataset, for tests that damage it."""
    return shutil.copytree(synthetic_dataset_root, tmp_path / "data")


def test_find_clips_reads_layout_and_selects_modality(synthetic_dataset_root):
    clips = dataset.find_clips(synthetic_dataset_root)
    assert [c.name for c in clips] == ["IR_DRONE_902", "V_BIRD_901", "V_DRONE_900"]
    assert [(c.modality, c.label) for c in clips] == [("IR", "drone"), ("V", "bird"), ("V", "drone")]
    assert [c.name for c in dataset.find_clips(synthetic_dataset_root, modalities=["IR"])] == ["IR_DRONE_902"]


def test_clip_without_video_is_skipped_with_warning(dataset_copy, caplog):
    (dataset_copy / "Video_V" / "V_BIRD_901.mp4").unlink()
    with caplog.at_level(logging.WARNING):
        names = [c.name for c in dataset.find_clips(dataset_copy)]
    assert names == ["IR_DRONE_902", "V_DRONE_900"]
    assert "V_BIRD_901: video missing" in caplog.text


def test_missing_root_is_one_clear_error(tmp_path):
    with pytest.raises(dataset.DatasetError, match="dataset path not found"):
        dataset.load_split("all", tmp_path / "nowhere")


def test_read_labels_matches_csv(synthetic_dataset_root):
    clip = next(c for c in dataset.find_clips(synthetic_dataset_root) if c.name == "V_BIRD_901")
    labels = dataset.read_labels(clip)
    first_row = (clip.labels_path.read_text().splitlines()[1]).split(",")
    class_id, x, y, w, h = labels[int(first_row[0])][0]
    assert CLASSES[class_id] == first_row[1].lower() == "bird"
    assert (x, y, w, h) == tuple(float(v) for v in first_row[2:])


def test_unknown_class_name_raises_label_error(dataset_copy):
    clip = next(c for c in dataset.find_clips(dataset_copy) if c.name == "V_DRONE_900")
    clip.labels_path.write_text(clip.labels_path.read_text() + "3,UFO,1,1,5,5\n")
    with pytest.raises(dataset.LabelError, match="V_DRONE_900: unknown class name 'UFO'"):
        dataset.read_labels(clip)


def test_iter_frames_stride_and_cache(synthetic_dataset_root, tmp_path):
    clip = next(c for c in dataset.find_clips(synthetic_dataset_root) if c.name == "IR_DRONE_902")
    decoded = list(dataset.iter_frames(clip, stride=7))
    assert [i for i, _ in decoded] == [0, 7, 14, 21, 28]
    assert decoded[0][1].shape == (256, 320, 3) and decoded[0][1].dtype == np.uint8
    first = list(dataset.iter_frames(clip, stride=7, cache_dir=tmp_path))
    assert (tmp_path / clip.name / "frames.json").is_file()
    # written under a temporary name and renamed: nothing half-written is ever left under a real name
    assert sorted(p.name for p in (tmp_path / clip.name).iterdir()) == \
        [f"{i:06d}.png" for i in (0, 7, 14, 21, 28)] + ["frames.json"]
    cached = list(dataset.iter_frames(clip, stride=14, cache_dir=tmp_path))
    assert [i for i, _ in cached] == [0, 14, 28]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(cached, first[::2]))
    assert [i for i, _ in dataset.iter_frames(clip, stride=3, max_frames=2)] == [0, 3]


def test_corrupt_video_raises_video_error(dataset_copy):
    clip = next(c for c in dataset.find_clips(dataset_copy) if c.name == "V_DRONE_900")
    clip.video_path.write_bytes(b"not a video at all" * 100)
    with pytest.raises(dataset.VideoError, match="V_DRONE_900"):
        dataset.to_coco([clip])


def test_to_coco_is_valid_and_keeps_frame_indices(synthetic_dataset_root):
    clips = dataset.find_clips(synthetic_dataset_root)
    gt = dataset.to_coco(clips, stride=10)
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    assert len(gt["images"]) == 3 * 3  # frames 0, 10, 20 of three 30-frame clips
    assert [c["name"] for c in gt["categories"]] == list(CLASSES)
    image = next(i for i in gt["images"] if i["file_name"] == "V_BIRD_901/000020")
    assert (image["width"], image["height"], image["modality"]) == (640, 480 + 32, "V")
    clip = next(c for c in clips if c.name == "V_BIRD_901")
    expected = sorted([x, y, w, h] for _, x, y, w, h in dataset.read_labels(clip)[20])
    assert sorted(a["bbox"] for a in coco.imgToAnns[image["id"]]) == expected
    assert all(a["id"] > 0 for a in gt["annotations"])  # COCOeval treats id 0 as "unmatched"


def test_label_rows_beyond_last_frame_are_counted_not_shifted(dataset_copy, caplog):
    clip = next(c for c in dataset.find_clips(dataset_copy) if c.name == "V_DRONE_900")
    before = dataset.to_coco([clip])
    clip.labels_path.write_text(clip.labels_path.read_text() + "30,DRONE,1,1,5,5\n31,DRONE,1,1,5,5\n")
    with caplog.at_level(logging.WARNING):
        after = dataset.to_coco([clip])
    assert after["info"]["labels_beyond_video"] == {"V_DRONE_900": 2}
    assert caplog.text.count("beyond the video") == 1
    assert after["annotations"] == before["annotations"]


def test_load_split_uses_manifest_and_reports_empty_split(synthetic_dataset_root, tmp_path):
    manifest = tmp_path / "splits.json"
    manifest.write_text(json.dumps({"splits": {"train": ["V_DRONE_900", "IR_DRONE_902"], "val": ["V_BIRD_901"],
                                               "test": []}}))
    assert [c.name for c in dataset.load_split("train", synthetic_dataset_root, manifest=manifest)] == \
        ["IR_DRONE_902", "V_DRONE_900"]
    assert [c.name for c in dataset.load_split("train", synthetic_dataset_root, ["V"], manifest)] == ["V_DRONE_900"]
    with pytest.raises(dataset.EmptySplitError, match="split 'test' is empty"):
        dataset.load_split("test", synthetic_dataset_root, manifest=manifest)
    assert len(dataset.load_split("all", synthetic_dataset_root)) == 3


def _fake_clips(counts):
    return [dataset.Clip(f"{m}_{label.upper()}_{i:03d}", m, label, None, None)
            for (m, label), n in counts.items() for i in range(n)]


def test_make_split_is_deterministic_stratified_and_by_clip():
    clips = _fake_clips({("IR", "drone"): 40, ("IR", "bird"): 20, ("V", "drone"): 30, ("V", "bird"): 10})
    bins = {c.name: ("close" if c.number % 2 else "distant") for c in clips}
    manifest = dataset.make_split(clips, bins, seed=0)
    assert manifest == dataset.make_split(list(reversed(clips)), bins, seed=0)
    splits = manifest["splits"]
    assert sorted(sum(splits.values(), [])) == sorted(c.name for c in clips)  # disjoint and complete
    assert [len(splits[s]) for s in ("train", "val", "test")] == [80, 10, 10]
    for stratum, counts in manifest["strata"].items():
        size = sum(counts.values())
        assert counts["val"] in (size // 10, size // 10 + 1) and counts["test"] in (size // 10, size // 10 + 1), stratum
    assert manifest["stratify_by"] == ["modality", "class", "distance_bin"]
    assert manifest["splits"] != dataset.make_split(clips, bins, seed=1)["splits"]


def test_committed_manifest_is_disjoint():
    splits = json.loads(SPLIT_MANIFEST.read_text())["splits"]
    names = sum(splits.values(), [])
    assert len(names) == len(set(names)) and all(splits[s] for s in ("train", "val", "test"))


@requires_real_data
def test_committed_manifest_reproduces_from_real_data():
    committed = json.loads(SPLIT_MANIFEST.read_text())
    clips = dataset.find_clips(DEFAULT_ROOT)
    assert dataset.reproduce_split(clips, dataset.read_distance_bins(DEFAULT_ROOT), committed) == committed
    assert {c.name for c in clips} == set(sum(committed["splits"].values(), []))


def test_extend_split_assigns_new_clips_and_moves_none(synthetic_dataset_root):
    clips = dataset.find_clips(synthetic_dataset_root)
    bins = {clip.name: "close" for clip in clips}
    first = dataset.make_split(clips[:2], bins, seed=0)
    extended = dataset.extend_split(first, clips, bins, added_on="2026-12-01")
    for split, members in first["splits"].items():
        assert set(members) <= set(extended["splits"][split])  # nothing moved
    assert sorted(sum(extended["splits"].values(), [])) == sorted(c.name for c in clips)
    assert extended["extensions"] == [{"added_on": "2026-12-01", "clips": sorted(c.name for c in clips[2:])}]
    assert dataset.extend_split(extended, clips, bins, added_on="2027-01-01") == extended  # nothing new
    assert dataset.reproduce_split(clips, bins, extended) == extended


@requires_real_data
def test_real_clip_frames_and_labels_align():
    clip = next(c for c in dataset.load_split("test") if c.modality == "IR")
    frames, width, height = dataset.video_info(clip)
    assert (width, height) == (320, 256)
    assert max(dataset.read_labels(clip)) < frames
    assert [i for i, _ in dataset.iter_frames(clip, stride=100)] == list(range(0, frames, 100))


def test_cli_missing_path_exits_2_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pipeline.offline.data.dataset", "--data", str(tmp_path / "nope")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: dataset path not found: {tmp_path / 'nope'}"
