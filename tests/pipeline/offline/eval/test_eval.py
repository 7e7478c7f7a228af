import json
import shutil

import numpy as np
import pytest
import supervision as sv

from pipeline.offline import eval as evaluate
from pipeline.offline.data import dataset, synthetic
from pipeline.offline.data.dataset import CLASSES

METRIC_KEYS = ("map50_95", "map50", "map75", "ap_small", "ap_medium", "ap_large", "ap_tiny", "ar100")


@pytest.fixture(scope="module")
def ground_truth(synthetic_dataset_root):
    return dataset.to_coco(dataset.find_clips(synthetic_dataset_root), stride=3)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """An untrained yolox-nano with a small input: real model code, cheap on a shared CPU."""
    import models

    path = tmp_path_factory.mktemp("weights") / "nano.pt"
    models.save_checkpoint(path, models.build_model("yolox-nano", len(CLASSES)), name="yolox-nano",
                           input_size=(64, 96), class_names=list(CLASSES))
    return path


def iou_xywh(a, b) -> float:
    return float(sv.box_iou_batch(sv.xywh_to_xyxy(np.array([a])), sv.xywh_to_xyxy(np.array([b])))[0, 0])


def perfect(ground_truth):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 1.0}
            for a in ground_truth["annotations"]]


def flat(metrics):
    values = {key: metrics[key] for key in METRIC_KEYS}
    for group in ("per_class", "per_modality"):
        for name, entry in metrics[group].items():
            values.update({f"{group}.{name}.{k}": v for k, v in entry.items()})
    return values


@pytest.mark.parametrize("seed", [0, 1])
def test_pycocotools_and_faster_coco_eval_agree(ground_truth, seed):
    predictions = synthetic.noisy_predictions(ground_truth, seed)
    faster = flat(evaluate.coco_metrics(ground_truth, predictions, "faster"))
    reference = flat(evaluate.coco_metrics(ground_truth, predictions, "pycocotools"))
    assert faster.keys() == reference.keys()
    assert 0.05 < reference["map50_95"] < 0.95  # a non-trivial score, so agreement means something
    for key, value in reference.items():
        assert (faster[key] is None) == (value is None), key
        if value is not None:
            assert faster[key] == pytest.approx(value, abs=1e-4), key


@pytest.mark.parametrize("library", evaluate.METRIC_LIBRARIES)
def test_perfect_predictions_score_one_and_shifted_boxes_less(ground_truth, library):
    metrics = evaluate.coco_metrics(ground_truth, perfect(ground_truth), library)
    assert metrics["map50_95"] == metrics["map50"] == metrics["ap_tiny"] == 1.0
    assert all(m["map50_95"] == 1.0 for m in metrics["per_modality"].values())
    scores = []
    for shift in (0.1, 0.3, 0.6):
        shifted = perfect(ground_truth)
        for result in shifted:
            result["bbox"][0] += shift * result["bbox"][2]
        scores.append(evaluate.coco_metrics(ground_truth, shifted, library)["map50_95"])
    assert 1.0 > scores[0] > scores[1] > scores[2]


def _single_image_gt(boxes):
    return {"images": [{"id": 1, "width": 640, "height": 512, "modality": "V"}],
            "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
                            for i, b in enumerate(boxes)],
            "categories": dataset.coco_categories()}


def test_tiny_ap_selects_by_longest_side_not_area():
    thin, tiny = [100, 100, 20, 8], [300, 300, 15, 15]  # thin: area 160 but longest side 20 -> not tiny
    gt = _single_image_gt([thin, tiny])
    only_thin = [{"image_id": 1, "category_id": 1, "bbox": thin, "score": 0.9}]
    only_tiny = [{"image_id": 1, "category_id": 1, "bbox": tiny, "score": 0.9}]
    assert evaluate.coco_metrics(gt, only_thin)["ap_tiny"] == 0.0
    assert evaluate.coco_metrics(gt, only_tiny)["ap_tiny"] == 1.0
    assert evaluate.coco_metrics(gt, only_thin)["ap_small"] < 1.0  # both are COCO "small"


def _detections_from_labels(clips, frame_offset=0):
    detections = {}
    for clip in clips:
        for frame, boxes in dataset.read_labels(clip).items():
            detections[(clip.name, frame + frame_offset)] = np.array(
                [[x, y, x + w, y + h, 1.0, class_id] for class_id, x, y, w, h in boxes], np.float32)
    return detections


def test_detections_map_to_the_right_frames(synthetic_dataset_root, ground_truth):
    clips = dataset.find_clips(synthetic_dataset_root)
    categories = evaluate.class_to_category(CLASSES)
    aligned = evaluate.to_coco_results(_detections_from_labels(clips), ground_truth, categories)
    assert evaluate.coco_metrics(ground_truth, aligned)["map50_95"] == pytest.approx(1.0, abs=1e-6)
    late = evaluate.to_coco_results(_detections_from_labels(clips, frame_offset=2), ground_truth, categories)
    assert evaluate.coco_metrics(ground_truth, late)["map50_95"] < 0.99


def test_model_with_no_dataset_class_is_refused():
    with pytest.raises(evaluate.EvalError, match="unknown class names"):
        evaluate.class_to_category(["car", "person"])
    assert evaluate.class_to_category(["person", "Drone"]) == {1: dataset.category_id(0)}


def test_pipeline_jsonl_becomes_detections(tmp_path):
    path = tmp_path / "tracks.jsonl"
    records = [(0, [[1, 2, 11, 12, 0.9, 0]]), (1, []), (3, [[5, 5, 9, 9, 0.5, 1]]), (2, []), (3, [])]
    path.write_text("".join(json.dumps({"stream_id": "V_DRONE_900", "frame_index": i, "detections": d}) + "\n"
                            for i, d in records))
    detections, integrity = evaluate.detections_from_jsonl(path)
    assert sorted(detections) == [("V_DRONE_900", i) for i in range(4)]
    assert detections[("V_DRONE_900", 0)].tolist() == [[1, 2, 11, 12, pytest.approx(0.9), 0]]
    assert detections[("V_DRONE_900", 3)].shape == (1, 6)  # a resent frame does not replace the first
    assert integrity == {"duplicates": 1, "out_of_order": 1, "missing_before_last": 0}
    path.write_text('{"stream_id": "x", "frame_index": 0}\n')
    with pytest.raises(evaluate.EvalError, match="tracks.jsonl:1: malformed pipeline record"):
        evaluate.detections_from_jsonl(path)


def test_missing_dataset_path_exits_2_with_one_line(tmp_path, capsys):
    assert evaluate.main(["--data", str(tmp_path / "absent"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == f"error: dataset path not found: {tmp_path / 'absent'}"


def test_empty_split_exits_2(synthetic_dataset_root, tmp_path, capsys):
    # the synthetic clips are not in the committed manifest, so its test split is empty here
    assert evaluate.main(["--data", str(synthetic_dataset_root), "--split", "test", "--out", str(tmp_path)]) == 2
    assert "split 'test' is empty" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_writes_report_predictions_ground_truth_and_plot(synthetic_dataset_root, tiny_checkpoint, tmp_path):
    out = tmp_path / "eval"
    code = evaluate.main(["--data", str(synthetic_dataset_root), "--split", "all", "--weights", str(tiny_checkpoint),
                          "--stride", "15", "--conf", "1e-9", "--out", str(out), "--tiling", "off"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert 0.0 <= report["map50_95"] <= 1.0 and report["skipped_count"] == 0
    assert set(report["per_class"]) == set(CLASSES) and set(report["per_modality"]) == {"V", "IR"}
    assert report["latency_ms"]["images"] == 3 * 2 - evaluate.LATENCY_WARMUP_IMAGES
    assert all(report["latency_ms"][k] > 0 for k in ("preprocess", "inference", "postprocess"))
    ground_truth = json.loads((out / "ground_truth.json").read_text())
    assert sorted(i["file_name"] for i in ground_truth["images"])[:2] == ["IR_DRONE_902/000000", "IR_DRONE_902/000015"]
    predictions = json.loads((out / "predictions.json").read_text())
    assert predictions and {p["image_id"] for p in predictions} <= {i["id"] for i in ground_truth["images"]}
    assert report["predictions"] == len(predictions)
    assert all(0 <= p["objectness"] <= 1 and p["score"] <= p["objectness"] + 1e-4 for p in predictions)
    assert "objectness_map50" in report["class_agnostic"]
    assert (out / "pr_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_clips_are_skipped_and_counted(synthetic_dataset_root, tiny_checkpoint, tmp_path):
    data = shutil.copytree(synthetic_dataset_root, tmp_path / "data")
    video = data / "Video_V" / "V_BIRD_901.mp4"
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])  # truncated: index (moov) lost
    labels = data / "labels_IR" / "IR_DRONE_902_LABELS.csv"
    labels.write_text(labels.read_text() + "5,UFO,1,1,4,4\n")
    out = tmp_path / "eval"
    assert evaluate.main(["--data", str(data), "--split", "all", "--weights", str(tiny_checkpoint),
                          "--max-frames", "1", "--out", str(out), "--tiling", "off"]) == 0
    report = json.loads((out / "report.json").read_text())
    reasons = {s["clip"]: s["reason"] for s in report["skipped_clips"]}
    assert report["skipped_count"] == 2
    assert "cannot open video" in reasons["V_BIRD_901"]
    assert "unknown class name 'UFO'" in reasons["IR_DRONE_902"]
    assert report["images"] == 1 and report["per_modality"].keys() == {"V"}


@pytest.mark.slow
@pytest.mark.parametrize("tiling,min_scale", [("off", "1"), ("on", "1"), ("on", "0.7")])
def test_through_pipeline_scores_exactly_what_direct_evaluation_scores(tiny_checkpoint, tmp_path, tiling, min_scale):
    """Lossless replay: the same model on the same frames gives the same predictions and mAP, tiled
    (the detect stage and the eval run one tiling rule) or not."""
    data = tmp_path / "data"
    synthetic.make_dataset(data, clips=[("IR", "drone", 910, 3), ("V", "bird", 911, 4)], frames=8)
    common = ["--data", str(data), "--split", "all", "--weights", str(tiny_checkpoint), "--conf", "1e-9",
              "--stride", "2", "--tiling", tiling, "--tile-min-scale", min_scale]
    assert evaluate.main(common + ["--out", str(tmp_path / "direct")]) == 0
    assert evaluate.main(common + ["--out", str(tmp_path / "pipe"), "--through-pipeline",
                                   "--pipeline-timeout", "300"]) == 0
    direct, piped = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("direct", "pipe"))
    assert piped["pipeline"]["frames"] == 16
    assert piped["pipeline"]["duplicates"] == piped["pipeline"]["out_of_order"] == 0
    assert piped["map50_95"] == pytest.approx(direct["map50_95"], abs=1e-6)
    tracking = piped["pipeline"]["tracking"]
    assert set(tracking["sequences"]) == {"IR_DRONE_910", "V_BIRD_911"}
    assert {"MOTA", "IDF1", "HOTA"} <= set(tracking["combined"])

    def ordered(d):
        results = json.loads((tmp_path / d / "predictions.json").read_text())
        return sorted(results, key=lambda r: (r["image_id"], r["category_id"], -r["score"], r["bbox"]))

    direct_results, piped_results = ordered("direct"), ordered("pipe")
    assert len(direct_results) == len(piped_results) > 0
    for a, b in zip(direct_results, piped_results):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["bbox"] + [a["score"]] == pytest.approx(b["bbox"] + [b["score"]], abs=1e-6)


def test_recall_by_size_counts_matches_per_threshold_and_size_bin():
    truth = [np.array([[0, 0, 10, 10], [100, 100, 140, 140]]), np.array([[50, 50, 56, 56]]), np.zeros((0, 4))]
    found = [np.array([[0, 0, 10, 10, 0.9, 0], [100, 100, 140, 165, 0.8, 0]]),  # exact; IoU 40*40/(40*65) = 0.62
             np.zeros((0, 6)),                                                # missed
             np.array([[1, 1, 5, 5, 0.5, 0]])]                                # no truth: ignored
    report = evaluate.recall_by_size(truth, found, ious=(0.5, 0.7))
    assert report["boxes"] == 3
    assert report["recall"] == {"0.5": 2 / 3, "0.7": 1 / 3}
    by_size = {tuple(row["side_px"]): (row["boxes"], row["recall"]) for row in report["by_size"]}
    assert by_size == {(0, 12): (2, {"0.5": 0.5, "0.7": 0.5}), (30, 50): (1, {"0.5": 1.0, "0.7": 0.0})}


def test_clip_recall_scores_a_rendered_clip(tmp_path, tiny_checkpoint):
    import models

    paths = synthetic.make_clip(tmp_path, seed=3, frames=6, size=(160, 128))
    coco = json.loads(paths.coco.read_text())
    drones = sum(a["category_id"] == dataset.category_id(CLASSES.index("drone")) for a in coco["annotations"])
    blind = models.Detector(tiny_checkpoint, conf_threshold=1.01)  # reads every frame, reports nothing
    report = evaluate.clip_recall(blind, paths.video, paths.coco, every=1)
    assert report["boxes"] == drones > 0 and report["recall"] == {"0.5": 0.0, "0.3": 0.0}
    assert evaluate.clip_recall(blind, paths.video, paths.coco, every=2)["boxes"] < drones


def test_visible_boxes_tight_scores_against_the_objects_behind_loose_visible_labels(
        synthetic_dataset_root, loose_visible_dataset_root, tiny_checkpoint, tmp_path):
    def ground_truth_of(root, boxes):
        out = tmp_path / f"{root.name}-{boxes}"
        assert evaluate.main(["--data", str(root), "--split", "all", "--weights", str(tiny_checkpoint), "--stride",
                              "10", "--visible-boxes", boxes, "--out", str(out), "--tiling", "off"]) == 0
        report = json.loads((out / "report.json").read_text())
        truth = json.loads((out / "ground_truth.json").read_text())
        modality = {image["id"]: image["modality"] for image in truth["images"]}
        return report, [(modality[a["image_id"]], a["bbox"]) for a in truth["annotations"]]

    _, truth = ground_truth_of(synthetic_dataset_root, "dataset")
    _, loose = ground_truth_of(loose_visible_dataset_root, "dataset")
    report, tight = ground_truth_of(loose_visible_dataset_root, "tight")
    visible = [i for i, (modality, _) in enumerate(truth) if modality == "V"]
    assert report["visible_boxes_tightened"] == {"changed": report["visible_boxes_tightened"]["changed"],
                                                 "boxes": len(visible)}
    assert report["visible_boxes_tightened"]["changed"] >= 0.8 * len(visible)

    def mean_iou(boxes):
        return np.mean([iou_xywh(boxes[i][1], truth[i][1]) for i in visible])

    assert mean_iou(loose) < 0.35 and mean_iou(tight) > 0.6
    assert [b for m, b in tight if m == "IR"] == [b for m, b in truth if m == "IR"]


def test_eval_tiling_on_scores_the_small_drones_of_a_1080p_clip_that_letterboxing_loses(tmp_path):
    """``--tiling`` runs models.tiling as the detect stage does: on a 1920x1080 sky with 7-13 px drones
    (shipped default model) tiled AP50 is high, the letterboxed frame's low; auto tiles this size."""
    root = tmp_path / "hd"
    synthetic.make_dataset(root, clips=(("V", "drone", 950, 2),), frames=4, size=(1920, 1080), n_drones=4,
                           n_birds=0, background="sky")
    scores = {}
    for tiling in ("off", "on", "auto"):
        out = tmp_path / tiling
        assert evaluate.main(["--data", str(root), "--split", "all", "--backend", "onnx", "--tiling", tiling,
                              "--out", str(out)]) == 0
        scores[tiling] = json.loads((out / "report.json").read_text())["map50"]
    assert scores["on"] >= 0.8 and scores["off"] <= 0.3 and scores["auto"] == scores["on"], scores


@pytest.mark.parametrize("bad", ["0", "1.5", "nan", "-1"])
def test_a_tile_scale_outside_0_to_1_is_one_usage_error(bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--tile-min-scale", bad])
    assert exit_info.value.code == 2 and "--tile-min-scale must be in (0, 1]" in capsys.readouterr().err


def test_class_agnostic_ap_forgives_a_wrong_class_but_not_a_missed_object(ground_truth):
    wrong_class = [{**p, "category_id": dataset.category_id((CLASSES.index("drone") + 1) % len(CLASSES))
                    if p["category_id"] == dataset.category_id(CLASSES.index("drone")) else p["category_id"]}
                   for p in perfect(ground_truth)]
    metrics = evaluate.coco_metrics(ground_truth, wrong_class)
    assert metrics["class_agnostic"]["map50_95"] == pytest.approx(1.0)  # every object found, in the sky
    assert metrics["per_class"]["drone"]["map50_95"] < 0.01  # though never called a drone
    # the same object said twice (class-aware NMS keeps one per class) counts once, not as a false positive
    ranked = [{**p, "score": 1 - i / len(ground_truth["annotations"])} for i, p in enumerate(perfect(ground_truth))]
    doubled = ranked + [{**p, "category_id": dataset.category_id(1), "score": p["score"] - 1e-6} for p in ranked]
    assert evaluate.coco_metrics(ground_truth, doubled)["class_agnostic"]["map50_95"] == pytest.approx(1.0)
    half = perfect(ground_truth)[::2]
    assert evaluate.coco_metrics(ground_truth, half)["class_agnostic"]["map50"] < 0.7


def test_class_agnostic_ap_ranked_by_objectness_when_the_predictions_carry_it(ground_truth):
    """Each true box found with a low detection score (its class guesses split) but a high objectness,
    each false box the other way round: ranked by score the false ones come first, by objectness the
    true ones; without objectness on every prediction no such line is reported."""
    found = [{**p, "score": 0.3, "objectness": 0.9} for p in perfect(ground_truth)]
    false = [{**p, "bbox": [p["bbox"][0] + 200, p["bbox"][1] + 200, *p["bbox"][2:]], "score": 0.6, "objectness": 0.2}
             for p in perfect(ground_truth)]
    agnostic = evaluate.coco_metrics(ground_truth, found + false)["class_agnostic"]
    assert agnostic["objectness_map50"] == pytest.approx(1.0) and agnostic["map50"] < 0.8
    assert "objectness_map50" not in evaluate.coco_metrics(ground_truth, perfect(ground_truth))["class_agnostic"]


@pytest.mark.slow
def test_through_pipeline_replays_image_sequences_of_other_formats(tiny_checkpoint, tmp_path):
    """A YOLO folder (image sequences, one per clip) replayed through the pipeline's image-folder source
    scores what direct evaluation scores on the same files, frame for frame."""
    import cv2

    folder = tmp_path / "yolo"
    (folder / "data.yaml").parent.mkdir()
    (folder / "data.yaml").write_text("names: [uav, gull]\n")
    for clip, seed in (("north", 41), ("south", 42)):
        for kind in ("images", "labels"):
            (folder / kind / clip).mkdir(parents=True)
        (folder / "images" / clip / "notes.txt").write_text("not an image: the sequence must skip it\n")
        for index, (image, boxes) in enumerate(synthetic.render_clip(seed, 6, (320, 256), "V")):
            cv2.imwrite(str(folder / "images" / clip / f"f{index:02d}.png"), image)
            (folder / "labels" / clip / f"f{index:02d}.txt").write_text("".join(
                f"{b.class_id} {(b.x + b.w / 2) / 320} {(b.y + b.h / 2) / 256} {b.w / 320} {b.h / 256}\n" for b in boxes))
    common = ["--data", str(folder), "--classes", "uav=drone,gull=bird", "--weights", str(tiny_checkpoint),
              "--conf", "1e-9", "--stride", "2"]
    assert evaluate.main(common + ["--out", str(tmp_path / "direct")]) == 0
    assert evaluate.main(common + ["--out", str(tmp_path / "pipe"), "--through-pipeline",
                                   "--pipeline-timeout", "300"]) == 0
    direct, piped = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("direct", "pipe"))
    assert piped["pipeline"]["frames"] == 12 and not piped["pipeline"]["streams_without_output"]
    assert piped["map50_95"] == pytest.approx(direct["map50_95"], abs=1e-6)
    assert set(piped["pipeline"]["tracking"]["sequences"]) == {"north", "south"}
