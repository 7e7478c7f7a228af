"""scripts/dataset_stats.py and scripts/tighten_report.py read any label format formats/ reads, and
scripts/make_camera_proxy.py writes a YOLO folder that reads back with the boxes it was given, and
scripts/make_demo_clip.py remakes the embedded demo clip."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.offline.data.dataset import DEFAULT_ROOT, load_split
from tests.pipeline.offline.data.test_formats import write_yolo

REPO = Path(__file__).resolve().parents[2]


def script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / name), *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO)


def test_dataset_stats_counts_a_yolo_folder(tmp_path):
    root = write_yolo(tmp_path / "yolo")
    result = script("dataset_stats.py", "--data", str(root), "--classes", "uav=drone,plane=airplane",
                    "--out", str(tmp_path / "stats"))
    assert result.returncode == 0, result.stderr
    # two clips, 5 frames, 4 drone boxes + 1 airplane box (test_formats.TRUTH)
    assert "unassigned all      all               2        5        5" in result.stdout
    assert (tmp_path / "stats" / "box_sizes.png").is_file()


def test_dataset_stats_names_an_unmapped_class_in_one_line(tmp_path):
    result = script("dataset_stats.py", "--data", str(write_yolo(tmp_path / "yolo")), "--out", str(tmp_path / "s"))
    assert result.returncode == 2 and "class 'uav' is not a model class" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_tighten_report_reads_a_yolo_folder(tmp_path):
    result = script("tighten_report.py", "--clips", "1", "--samples", "2", "--data", str(write_yolo(tmp_path / "y")),
                    "--classes", "uav=drone,plane=airplane", "--grid", str(tmp_path / "grid.png"))
    assert result.returncode == 0, result.stderr
    assert "real visible train labels" in result.stdout


@pytest.mark.skipif(not (REPO.parent / "shared" / "data" / "drone-detection-dataset").is_dir(),
                    reason="needs ../shared/data/drone-detection-dataset (the real clips)")
@pytest.mark.parametrize("modality, size", [("IR", (640, 512)), ("V", (1280, 1024))])
def test_camera_proxy_writes_a_yolo_folder_with_the_clips_boxes_scaled(tmp_path, modality, size):
    from pipeline.offline.data import dataset, formats

    result = script("make_camera_proxy.py", "--modality", modality, "--split", "val", "--max-clips", "1",
                    "--stride", "50", "--out", str(tmp_path / "proxy"))
    assert result.returncode == 0, result.stderr
    clip = formats.read_clips(tmp_path / "proxy", class_map=formats.parse_class_map(
        "uav=drone,plane=airplane,heli=helicopter"))[0]
    source = next(c for c in dataset.load_split("val", modalities=(modality,)) if c.name == clip.name)
    truth = dataset.read_labels(source)
    assert clip.modality == "V" and dataset.video_info(clip)[1:] == size   # a colour camera, twice the pixels
    for index, rows in clip.boxes.items():   # the k-th image is the video's frame named in its file name
        original = truth[int(clip.images[index].stem)]
        assert [r[0] for r in rows] == [t[0] for t in original]
        scaled = tuple(2 * v for v in original[0][1:])
        if modality == "IR":
            assert rows[0][1:] == pytest.approx(scaled, abs=0.01)
        else:   # the visible camera's loose boxes come out tightened: inside the drawn box, never larger
            x, y, w, h = rows[0][1:]
            assert scaled[0] - 0.01 <= x and x + w <= scaled[0] + scaled[2] + 0.01 and w * h <= scaled[2] * scaled[3] + 0.1
            assert scaled[1] - 0.01 <= y and y + h <= scaled[1] + scaled[3] + 0.01


def test_make_demo_clip_without_the_dataset_is_one_line(tmp_path):
    result = script("make_demo_clip.py", "--root", str(tmp_path / "absent"), "--out", str(tmp_path / "assets"))
    assert result.returncode == 2 and result.stderr.startswith("error: dataset path not found"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "assets").exists()


@pytest.mark.skipif(not DEFAULT_ROOT.is_dir(), reason=f"real dataset absent at {DEFAULT_ROOT}")
def test_make_demo_clip_remakes_the_committed_clip_and_refuses_a_training_clip(tmp_path):
    """The embedded demo clip is what the script makes (video and boxes), and only a test-split clip
    may become one: a clip the models trained on would flatter them."""
    result = script("make_demo_clip.py", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    for name in ("V_DRONE_080.mp4", "V_DRONE_080.json"):
        assert (tmp_path / name).read_bytes() == (REPO / "configs" / "assets" / name).read_bytes(), name
    train_clip = load_split("train")[0].name
    refused = script("make_demo_clip.py", "--clip", train_clip, "--out", str(tmp_path / "other"))
    assert refused.returncode == 2 and "is not a clip of the test split" in refused.stderr
    assert not (tmp_path / "other").exists()
