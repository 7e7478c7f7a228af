"""Offline tracking metrics (pipeline/offline/eval/track_metrics.py) through the trackers.eval library."""
from __future__ import annotations

import json

import pytest

from pipeline.offline.eval.track_metrics import (TrackMetricsError, evaluate_mot, evaluate_mot_sequences, format_table,
                                    gt_rows_from_labels, read_mot, rows_from_tracks_jsonl)

# two ground-truth tracks over three frames
GT = [(1, 1, 10, 10, 20, 20), (2, 1, 12, 10, 20, 20), (3, 1, 14, 10, 20, 20),
      (1, 2, 100, 100, 10, 10), (2, 2, 100, 102, 10, 10), (3, 2, 100, 104, 10, 10)]
# track 1 switches id in frame 3 (5 -> 6); track 2 is missed in frame 3
PRED = [(1, 5, 10, 10, 20, 20, 0.9), (2, 5, 12, 10, 20, 20, 0.9), (3, 6, 14, 10, 20, 20, 0.9),
        (1, 7, 100, 100, 10, 10, 1.0), (2, 7, 100, 102, 10, 10, 1.0)]


def test_ground_truth_against_itself_is_a_perfect_score(synthetic_clip):
    metrics = evaluate_mot(synthetic_clip.mot_gt, read_mot(synthetic_clip.mot_gt))
    assert metrics["MOTA"] == 1.0 and metrics["IDF1"] == 1.0 and metrics["HOTA"] == pytest.approx(1.0)
    assert metrics["IDSW"] == 0 and metrics["FP"] == 0 and metrics["FN"] == 0


def test_known_errors_give_the_hand_computed_scores():
    metrics = evaluate_mot(GT, PRED)
    # MOTA = 1 - (FN 1 + FP 0 + IDSW 1) / 6 ; IDF1 = 2 IDTP / (gt + pred) with IDTP 4 (5<->1, 7<->2)
    assert metrics["MOTA"] == pytest.approx(1 - 2 / 6)
    assert metrics["IDF1"] == pytest.approx(2 * 4 / (6 + 5))
    assert (metrics["IDSW"], metrics["FN"], metrics["FP"]) == (1, 1, 0)
    assert 0 < metrics["HOTA"] < 1 and metrics["DetA"] == pytest.approx(5 / 6)


def test_sequences_combine_as_sums_and_empty_predictions_score_zero():
    results = evaluate_mot_sequences({"a": (GT, PRED), "b": (GT, GT), "c": (GT, [])})
    assert results["sequences"]["b"]["MOTA"] == 1.0
    assert results["sequences"]["c"]["MOTA"] == 0 and results["sequences"]["c"]["FN"] == 6
    assert results["combined"]["MOTA"] == pytest.approx(1 - (1 + 1 + 6) / 18)  # misses + switch over 18 boxes
    assert "COMBINED" in format_table(results)


def test_rows_from_tracks_jsonl_keep_tracked_boxes_and_filter_by_voted_class(tmp_path):
    path = tmp_path / "tracks.jsonl"
    path.write_text(json.dumps({"frame_index": 0, "detections": [[10, 10, 30, 30, 0.9, 0], [5, 5, 9, 9, 0.4, 1]],
                                "track_ids": [3, -1], "track_class_ids": [0, -1]}) + "\n")
    assert rows_from_tracks_jsonl(path) == [(1, 3, 10, 10, 20, 20, 0.9)]
    assert rows_from_tracks_jsonl(path, class_ids=[1]) == []


def test_bad_inputs_raise_one_line_errors(tmp_path):
    with pytest.raises(TrackMetricsError, match="no boxes"):
        evaluate_mot([], PRED)
    bad = tmp_path / "bad.txt"
    bad.write_text("1,2,3\n")
    with pytest.raises(TrackMetricsError, match="bad.txt:1"):
        read_mot(bad)
    with pytest.raises(TrackMetricsError, match="does not exist"):
        evaluate_mot(tmp_path / "missing.txt", PRED)



def test_identities_linked_from_id_free_labels_match_the_true_ones(synthetic_clip):
    """The dataset's CSV labels carry no track ids (frame -> [(class, x, y, w, h)]); the ids linked from
    them must score perfectly against the generator's true identities (its MOT gt)."""
    truth = read_mot(synthetic_clip.mot_gt)
    labels: dict[int, list[tuple]] = {}
    for frame, _, x, y, w, h, _, category, _ in truth:
        labels.setdefault(int(frame) - 1, []).append((int(category) - 1, x, y, w, h))
    linked = gt_rows_from_labels(labels)
    assert len({r[1] for r in linked}) == len({r[1] for r in truth}) > 1
    metrics = evaluate_mot(truth, linked)
    assert metrics["IDF1"] == 1.0 and metrics["IDSW"] == 0 and metrics["MOTA"] == 1.0
