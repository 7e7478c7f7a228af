"""Labeled footage in other tools' formats (pipeline/offline/data/formats/): each format read from a
small folder the test writes (real image files, real label files), the same boxes out of every format,
clips, class maps, and one-line errors naming file and line; then `python -m pipeline eval` on them."""
from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from pipeline.offline.data import dataset
from pipeline.offline.data.formats import FormatError, detect_format, load_clips, parse_class_map, read_clips
from tests.conftest import REPO_ROOT

W, H = 160, 128
# per clip, per frame: (class name, x, y, w, h) in pixels
TRUTH = {"north": [[("uav", 20, 30, 8, 6)], [("uav", 24, 31, 8, 6), ("plane", 100, 10, 30, 12)], []],
         "south": [[("uav", 60, 60, 10, 10)], [("uav", 62, 61, 10, 10)]]}
EXPECTED = {name: {i: [(dataset.CLASSES.index("drone" if c == "uav" else "airplane"), x, y, w, h)
                       for c, x, y, w, h in boxes] for i, boxes in enumerate(frames) if boxes}
            for name, frames in TRUTH.items()}
NAMES = ["uav", "plane"]
MAP = parse_class_map("uav=drone,plane=airplane")


def picture(boxes, grey: bool = False) -> np.ndarray:
    image = np.full((H, W, 3), (200, 180, 150), np.uint8)
    for _, x, y, w, h in boxes:
        image[y:y + h, x:x + w] = (40, 40, 40)
    return cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR) if grey else image


def write_yolo(root, flat: bool = False):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "data.yaml").write_text("names: [uav, plane]\n")
    for clip, frames in TRUTH.items():
        for i, boxes in enumerate(frames):
            rel = f"{clip}_{i:04d}" if flat else f"{clip}/{i:04d}"
            (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / "labels" / rel).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "images" / f"{rel}.png"), picture(boxes))
            (root / "labels" / f"{rel}.txt").write_text("".join(
                f"{NAMES.index(c)} {(x + w / 2) / W:.6f} {(y + h / 2) / H:.6f} {w / W:.6f} {h / H:.6f}\n"
                for c, x, y, w, h in boxes))
    return root


def write_coco(root, video_ids: bool = False):
    (root / "images").mkdir(parents=True)
    images, annotations = [], []
    for v, (clip, frames) in enumerate(TRUTH.items()):
        for i, boxes in enumerate(frames):
            name = f"{clip}_{i:04d}.png" if video_ids else f"{clip}/{i:04d}.png"
            (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "images" / name), picture(boxes))
            image = {"id": len(images) + 1, "file_name": name, "width": W, "height": H}
            if video_ids:
                image.update(video_id=v + 1, frame_id=i)
            images.append(image)
            annotations += [{"id": len(annotations) + 1, "image_id": image["id"], "category_id": NAMES.index(c) + 1,
                             "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0} for c, x, y, w, h in boxes]
    (root / "annotations").mkdir()
    (root / "annotations" / "instances.json").write_text(json.dumps({
        "images": images, "annotations": annotations,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(NAMES)]}))
    return root


def write_mot(root):
    for clip, frames in TRUTH.items():
        (root / clip / "img1").mkdir(parents=True)
        (root / clip / "gt").mkdir()
        lines = []
        for i, boxes in enumerate(frames):
            cv2.imwrite(str(root / clip / "img1" / f"{i + 1:06d}.jpg"), picture(boxes, grey=True), [cv2.IMWRITE_JPEG_QUALITY, 95])
            lines += [f"{i + 1},{k + 1},{x},{y},{w},{h},1,{NAMES.index(c) + 1},1" for k, (c, x, y, w, h) in enumerate(boxes)]
        (root / clip / "gt" / "gt.txt").write_text("\n".join(lines) + "\n")
    return root


def write_cvat_images(root):
    images = []
    for clip, frames in TRUTH.items():
        for i, boxes in enumerate(frames):
            (root / "images" / clip).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "images" / clip / f"{i:04d}.png"), picture(boxes))
            shapes = "".join(f'<box label="{c}" occluded="0" xtl="{x}" ytl="{y}" xbr="{x + w}" ybr="{y + h}"/>'
                             for c, x, y, w, h in boxes)
            images.append(f'<image id="{len(images)}" name="{clip}/{i:04d}.png" width="{W}" height="{H}">{shapes}</image>')
    (root / "annotations.xml").write_text(f"<annotations><version>1.1</version>{''.join(images)}</annotations>")
    return root


def write_cvat_video(root, clip: str = "north", as_video: bool = False):
    """A CVAT-for-video task of one clip: one <track> per object (ids by order in the frame), an
    outside box where it left the view; frames as images/frame_NNNNNN.png or one video."""
    root.mkdir(parents=True)
    frames = TRUTH[clip]
    if as_video:
        writer = cv2.VideoWriter(str(root / "task.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (W, H))
        for boxes in frames:
            writer.write(picture(boxes))
        writer.release()
    else:
        (root / "images").mkdir()
        for i, boxes in enumerate(frames):
            cv2.imwrite(str(root / "images" / f"frame_{i:06d}.png"), picture(boxes))
    tracks = {}
    for i, boxes in enumerate(frames):
        for k, (c, x, y, w, h) in enumerate(boxes):
            tracks.setdefault((k, c), []).append(f'<box frame="{i}" outside="0" occluded="0" keyframe="1" '
                                                 f'xtl="{x}" ytl="{y}" xbr="{x + w}" ybr="{y + h}"/>')
    tracks[(0, "uav")].append('<box frame="2" outside="1" occluded="0" keyframe="1" xtl="1" ytl="1" xbr="5" ybr="5"/>')
    xml = "".join(f'<track id="{n}" label="{c}">{"".join(b)}</track>' for n, ((_, c), b) in enumerate(tracks.items()))
    (root / "annotations.xml").write_text(f"<annotations><version>1.1</version>{xml}</annotations>")
    return root


def as_truth(clips) -> dict:
    return {clip.name: {f: [tuple(round(v, 3) for v in row) for row in rows]
                        for f, rows in dataset.read_labels(clip).items()} for clip in clips}


@pytest.mark.parametrize("writer, fmt, classes", [
    (write_yolo, "yolo", "uav=drone,plane=airplane"), (lambda r: write_yolo(r, flat=True), "yolo", "uav=drone,plane=airplane"),
    (write_coco, "coco", "uav=drone,plane=airplane"), (lambda r: write_coco(r, video_ids=True), "coco", "uav=drone,plane=airplane"),
    (write_mot, "mot", "1=drone,2=airplane"), (write_cvat_images, "cvat", "uav=drone,plane=airplane")])
def test_every_format_gives_the_same_clips_and_boxes(tmp_path, writer, fmt, classes):
    root = writer(tmp_path / fmt)
    assert detect_format(root) == fmt
    clips = read_clips(root, "auto", parse_class_map(classes))
    truth = as_truth(clips)
    if fmt == "coco" and "video_1" in truth:  # COCO-VID: clips named by video id
        truth = {"north": truth["video_1"], "south": truth["video_2"]}
    assert truth == EXPECTED
    north = next(c for c in clips if c.name in ("north", "video_1"))
    assert dataset.video_info(north) == (3, W, H)
    frames = list(dataset.iter_frames(north, stride=2))
    assert [i for i, _ in frames] == [0, 2] and frames[0][1].shape == (H, W, 3)
    assert north.modality == ("IR" if fmt == "mot" else "V") and north.label == "drone"


def test_dataset_clips_and_coco_ground_truth_from_another_format(tmp_path):
    clips = load_clips(None, write_yolo(tmp_path / "y"), class_map=MAP)
    truth = dataset.to_coco(clips)
    assert len(truth["images"]) == 5 and len(truth["annotations"]) == 5
    assert {a["category_id"] for a in truth["annotations"]} == {dataset.category_id(0), dataset.category_id(2)}
    with pytest.raises(FormatError, match="--split all"):
        load_clips("test", tmp_path / "y", class_map=MAP)


def test_an_unmapped_class_names_itself_and_the_fix(tmp_path):
    root = write_yolo(tmp_path / "y")
    with pytest.raises(FormatError, match=r"class 'uav' is not a model class.*--classes uav=drone"):
        read_clips(root)
    clips = read_clips(root, class_map=parse_class_map("uav=drone,plane=-"))  # planes left out
    assert all(row[0] == 0 for clip in clips for rows in dataset.read_labels(clip).values() for row in rows)
    for bad in ("uav", "uav=tank", "=drone"):
        with pytest.raises(FormatError, match="class map entry"):
            parse_class_map(bad)


@pytest.mark.parametrize("fmt, damage, message", [
    ("yolo", lambda r: (r / "labels/north/0001.txt").write_text("0 0.5 0.5 0.1\n"), r"0001.txt:1: expected 'class cx cy w h'"),
    ("yolo", lambda r: (r / "labels/north/0001.txt").write_text("0 0.5 0.5 0.1 0.1\n0 1.5 0.5 0.1 0.1\n"), r"0001.txt:2: .*normalised"),
    ("yolo", lambda r: (r / "labels/north/0001.txt").write_text("7 0.5 0.5 0.1 0.1\n"), r"0001.txt:1: class 7 is not in"),
    ("yolo", lambda r: (r / "data.yaml").write_text("names: 5\n"), r"data.yaml: 'names' must be"),
    ("coco", lambda r: (r / "annotations/instances.json").write_text("{"), r"instances.json: not JSON"),
    ("coco", lambda r: _edit_coco(r, lambda d: d["annotations"][0].update(bbox=[1, 2, 3])), r"annotations\[0\]: bbox must be"),
    ("coco", lambda r: _edit_coco(r, lambda d: d["annotations"][1].update(image_id=999)), r"annotations\[1\]: image_id '999'"),
    ("coco", lambda r: _edit_coco(r, lambda d: d["images"][0].update(file_name="../../etc/passwd")), r"images\[0\] has no usable file_name"),
    ("coco", lambda r: _edit_coco(r, lambda d: d["annotations"][0].update(bbox=[1, 2, 0, 5])), r"annotations\[0\]: box .* is not a box"),
    ("mot", lambda r: (r / "north/gt/gt.txt").write_text("1,1,2,3\n"), r"gt.txt:1: expected 'frame, id"),
    ("mot", lambda r: (r / "north/gt/gt.txt").write_text("0,1,2,3,4,5,1,1,1\n"), r"gt.txt:1: MOT frames count from 1"),
])
def test_a_malformed_file_is_one_line_naming_file_and_line(tmp_path, fmt, damage, message):
    root = {"yolo": write_yolo, "coco": write_coco, "mot": write_mot}[fmt](tmp_path / fmt)
    damage(root)
    with pytest.raises(FormatError, match=message) as caught:
        read_clips(root, fmt, parse_class_map("uav=drone,plane=airplane,1=drone,2=airplane"))
    assert "\n" not in str(caught.value)


def _edit_coco(root, change) -> None:
    path = root / "annotations" / "instances.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_a_folder_of_no_known_format_says_what_it_looked_for(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(FormatError, match="no known label format"):
        detect_format(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("writer", [write_yolo, write_coco])
def test_eval_scores_a_yolo_or_coco_folder_from_the_command_line(tmp_path, writer):
    root = writer(tmp_path / "data")
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "pipeline", "eval", "--data", str(root), "--classes",
                             "uav=drone,plane=airplane", "--backend", "onnx", "--out", str(out),
                             "--export-yolo", str(tmp_path / "export"), "--export-cvat", str(tmp_path / "cvat"),
                             "--export-conf", "0.0"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["clips"] == 2 and report["split"] == "all" and report["skipped_count"] == 0
    truth = json.loads((out / "ground_truth.json").read_text())
    assert len(truth["images"]) == 5 and len(truth["annotations"]) == 5
    assert len(list((tmp_path / "export" / "labels").rglob("*.txt"))) == 5
    assert report["exported_boxes"] == sum(1 for p in json.loads((out / "predictions.json").read_text()))
    assert sum(len(rows) for clip in read_clips(tmp_path / "cvat") for rows in clip.boxes.values()) == \
        report["exported_boxes"]
    bad = subprocess.run([sys.executable, "-m", "pipeline", "eval", "--data", str(root), "--out", str(out)],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--classes uav=drone" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_predictions_exported_as_yolo_come_back_as_the_same_boxes(tmp_path):
    from pipeline.offline.data.formats.export import write_yolo

    clips = read_clips(write_coco(tmp_path / "coco"), class_map=MAP)
    truth = dataset.to_coco(clips)
    predictions = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
                   for a in truth["annotations"]] + [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.1}]
    assert write_yolo(predictions, truth, tmp_path / "export", conf=0.25) == len(truth["annotations"])
    back = read_clips(tmp_path / "export")  # model class names: no map needed
    assert detect_format(tmp_path / "export") == "yolo"
    assert {name: {f: [(c, round(x), round(y), round(w), round(h)) for c, x, y, w, h in rows]
                   for f, rows in boxes.items()} for name, boxes in as_truth(back).items()} == EXPECTED


@pytest.mark.parametrize("as_video", [False, True])
def test_a_cvat_video_task_is_one_clip_and_outside_boxes_are_not_objects(tmp_path, as_video):
    root = write_cvat_video(tmp_path / "task", as_video=as_video)
    assert detect_format(root) == "cvat"
    [clip] = read_clips(root, class_map=MAP)
    assert as_truth([clip])["task"] == EXPECTED["north"]
    assert dataset.video_info(clip)[0] == 3 and bool(clip.images) is not as_video


@pytest.mark.parametrize("xml, message", [("<annotations><image", "not XML"), ("<root/>", "root element is <annotations>"),
                                          ('<annotations><image name="../x.png"/></annotations>', "no usable name"),
                                          ('<annotations><track label="uav"><box frame="x"/></track></annotations>', "needs a frame"),
                                          ('<annotations><track label="uav"><box frame="0" xtl="5" ytl="1" xbr="2" ybr="4"/></track></annotations>', "is not a box")])
def test_a_bad_cvat_file_is_one_line(tmp_path, xml, message):
    root = write_cvat_video(tmp_path / "task")
    (root / "annotations.xml").write_text(xml)
    with pytest.raises(FormatError, match=message):
        read_clips(root, "cvat", MAP)


def test_predictions_exported_as_cvat_come_back_as_the_same_boxes(tmp_path):
    """CVAT for images 1.1 out (annotations.xml + image links) and read back by formats.cvat: the same clips,
    frames and boxes; predictions under the confidence bar are left out."""
    from pipeline.offline.data.formats.export import write_cvat

    clips = read_clips(write_yolo(tmp_path / "yolo"), class_map=MAP)
    truth = dataset.to_coco(clips)
    predictions = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
                   for a in truth["annotations"]] + [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.1}]
    assert write_cvat(predictions, truth, tmp_path / "export", conf=0.25) == len(truth["annotations"])
    assert detect_format(tmp_path / "export") == "cvat"
    back = read_clips(tmp_path / "export")
    assert sorted(clip.name for clip in back) == sorted(TRUTH)
    assert {name: {f: [(c, round(x), round(y), round(w), round(h)) for c, x, y, w, h in rows]
                   for f, rows in boxes.items()} for name, boxes in as_truth(back).items()} == EXPECTED
