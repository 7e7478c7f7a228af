"""Offline tracking metrics on labeled clips (one clip = one sequence): MOTA, IDF1 and HOTA.

The numbers come from ``trackers.eval`` (Roboflow's trackers package, the same one that provides the
ByteTrack we run; its matching and metric code is written for parity with TrackEval). motmetrics was
considered: 1.4.0 has no HOTA and pulls pandas; TrackEval itself is not on PyPI (the ``trackeval``
name there is a third-party fork).

Rows are MOTChallenge rows ``(frame (1-based), track_id, x, y, w, h[, score, ...])``. Evaluation is
class-agnostic (every ground-truth box is an object to track); for one class, filter both sides with
``read_mot(..., category_ids=...)`` and ``rows_from_tracks_jsonl(..., class_ids=...)``.

    evaluate_mot(gt_path_or_rows, pred_rows) -> dict  # MOTA, IDF1, HOTA, DetA, AssA, IDSW, ...
    evaluate_mot_sequences({name: (gt, pred)}) -> {"sequences": {name: dict}, "combined": dict}
    gt_rows_from_labels(dataset.read_labels(clip)) -> MOT gt rows (the dataset's labels have no ids)
    rows_from_tracks_jsonl(<output_dir>/<clip>/tracks.jsonl) -> predicted rows of a pipeline run
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

Row = Sequence[float]
SOURCE = "trackers.eval (TrackEval parity)"
REPORTED = {  # our key -> (metric family, the library's key)
    "MOTA": ("CLEAR", "MOTA"), "MOTP": ("CLEAR", "MOTP"), "IDSW": ("CLEAR", "IDSW"), "TP": ("CLEAR", "CLR_TP"),
    "FN": ("CLEAR", "CLR_FN"), "FP": ("CLEAR", "CLR_FP"), "MT": ("CLEAR", "MT"), "ML": ("CLEAR", "ML"),
    "Frag": ("CLEAR", "Frag"), "IDF1": ("Identity", "IDF1"), "IDP": ("Identity", "IDP"),
    "IDR": ("Identity", "IDR"), "HOTA": ("HOTA", "HOTA"), "DetA": ("HOTA", "DetA"), "AssA": ("HOTA", "AssA"),
    "LocA": ("HOTA", "LocA"),
}


class TrackMetricsError(ValueError):
    """One line naming the problem with the ground truth or the predictions."""


def read_mot(path: str | Path, category_ids: Iterable[int] | None = None) -> list[tuple]:
    """MOTChallenge rows of a file; with category_ids, only gt rows whose 8th column is one of them."""
    keep = None if category_ids is None else {int(c) for c in category_ids}
    rows = []
    path = Path(path)
    if not path.is_file():
        raise TrackMetricsError(f"MOT file {path} does not exist")
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values = [float(v) for v in line.split(",")]
        except ValueError:
            raise TrackMetricsError(f"{path}:{line_number}: not a MOTChallenge row: {line[:60]!r}") from None
        if len(values) < 6:
            raise TrackMetricsError(f"{path}:{line_number}: a MOTChallenge row needs at least 6 columns")
        if keep is None or (len(values) > 7 and int(values[7]) in keep):
            rows.append(tuple(values))
    return rows


def rows_from_tracks_jsonl(path: str | Path, class_ids: Iterable[int] | None = None) -> list[tuple]:
    """MOT rows of the tracked boxes in a record stage tracks.jsonl; with class_ids, only tracks whose
    voted class is one of them."""
    keep = None if class_ids is None else {int(c) for c in class_ids}
    from pipeline.runtime.records import read_frame_records

    rows = []
    try:
        for line_number, record in read_frame_records(path):
            try:
                voted = record.get("track_class_ids") or [-1] * len(record["track_ids"])
                for det, track_id, class_id in zip(record["detections"], record["track_ids"], voted):
                    if track_id >= 0 and (keep is None or class_id in keep):
                        x1, y1, x2, y2, score = det[:5]
                        rows.append((record["frame_index"] + 1, track_id, x1, y1, x2 - x1, y2 - y1, score))
            except (KeyError, TypeError, ValueError) as exc:
                raise TrackMetricsError(f"{path}:{line_number}: malformed tracks record ({exc})") from None
    except TrackMetricsError:
        raise
    except ValueError as exc:  # a line that is not JSON
        raise TrackMetricsError(str(exc)) from None
    return rows


def gt_rows_from_labels(labels: dict[int, list[tuple]], min_iou: float = 0.1) -> list[tuple]:
    """MOT ground truth for a dataset clip, whose labels carry no identities (``dataset.read_labels``:
    frame -> [(class_id, x, y, w, h)]). Identities link boxes of the same class in consecutive labeled
    frames by IoU (optimal assignment): exact for the usual one-object-per-class clip, an approximation
    where same-class objects cross."""
    from scipy.optimize import linear_sum_assignment

    rows, previous, next_id, last_frame = [], [], 1, None
    for frame in sorted(labels):
        boxes = [tuple(float(v) for v in b[1:5]) for b in labels[frame]]
        classes = [int(b[0]) for b in labels[frame]]
        ids = [0] * len(boxes)
        if previous and last_frame == frame - 1:
            iou = _iou_matrix([p[2] for p in previous], boxes)
            iou[np.array([p[1] for p in previous])[:, None] != np.array(classes)[None, :]] = 0.0
            for r, c in zip(*linear_sum_assignment(iou, maximize=True)):
                if iou[r, c] >= min_iou:
                    ids[c] = previous[r][0]
        for c in range(len(boxes)):
            if not ids[c]:
                ids[c], next_id = next_id, next_id + 1
        rows += [(frame + 1, ids[c], *boxes[c]) for c in range(len(boxes))]
        previous, last_frame = [(ids[c], classes[c], boxes[c]) for c in range(len(boxes))], frame
    return rows


def _iou_matrix(a: list[tuple], b: list[tuple]) -> np.ndarray:
    """IoU of xywh boxes, len(a) x len(b)."""
    import supervision as sv

    return sv.box_iou_batch(sv.xywh_to_xyxy(np.array(a, float).reshape(-1, 4)),
                            sv.xywh_to_xyxy(np.array(b, float).reshape(-1, 4))).astype(float)


def evaluate_mot(gt: str | Path | Iterable[Row], pred: str | Path | Iterable[Row],
                 iou_threshold: float = 0.5) -> dict:
    """MOTA, IDF1, HOTA (and their parts) of one sequence. gt: a MOTChallenge file or rows."""
    return _evaluate(_rows(gt), _rows(pred), iou_threshold)


def evaluate_mot_sequences(sequences: dict[str, tuple], iou_threshold: float = 0.5) -> dict:
    """Per sequence, and combined as TrackEval combines them (the sums behind each metric)."""
    loaded = {name: (_rows(gt), _rows(pred)) for name, (gt, pred) in sequences.items()}
    if not loaded:
        raise TrackMetricsError("no sequences to evaluate")
    per_sequence = {name: _evaluate(gt, pred, iou_threshold) for name, (gt, pred) in loaded.items()}
    # One long sequence with disjoint frames and ids gives exactly the combined sums (CLEAR, Identity,
    # and HOTA's per-threshold TP/FN/FP and TP-weighted AssA).
    all_gt, all_pred, frame_offset, id_offset = [], [], 0, 0
    for gt, pred in loaded.values():
        all_gt += [_shift(r, frame_offset, id_offset) for r in gt]
        all_pred += [_shift(r, frame_offset, id_offset) for r in pred]
        frame_offset += int(max(r[0] for r in gt + pred)) + 1
        id_offset += int(max(r[1] for r in gt + pred)) + 1
    return {"sequences": per_sequence, "combined": _evaluate(all_gt, all_pred, iou_threshold)}


def _rows(source) -> list[tuple]:
    if isinstance(source, (str, Path)):
        return read_mot(source)
    rows = [tuple(float(v) for v in r) for r in source]
    if any(len(r) < 6 for r in rows):
        raise TrackMetricsError("a MOT row needs at least 6 values: frame, id, x, y, w, h")
    return rows


def _shift(row: tuple, frames: int, ids: int) -> tuple:
    return (row[0] + frames, row[1] + ids, *row[2:])


def _evaluate(gt: list[tuple], pred: list[tuple], iou_threshold: float) -> dict:
    if not gt:
        raise TrackMetricsError("the ground truth holds no boxes")
    if not pred:
        return _no_predictions(gt) | {"iou_threshold": iou_threshold}
    from trackers.eval import evaluate_mot_sequence

    with tempfile.TemporaryDirectory(prefix="track_metrics_") as tmp:
        gt_path, pred_path = Path(tmp) / "gt.txt", Path(tmp) / "pred.txt"
        # class 1 and visibility 1 on every gt row: all of it is scored (class 1 is MOTChallenge's
        # scored class; the library treats 2, 7, 8 and 12 as distractors)
        gt_path.write_text("".join(f"{int(r[0])},{int(r[1])},{r[2]},{r[3]},{r[4]},{r[5]},1,1,1\n" for r in gt))
        pred_path.write_text("".join(f"{int(r[0])},{int(r[1])},{r[2]},{r[3]},{r[4]},{r[5]},"
                                     f"{r[6] if len(r) > 6 else 1.0},-1,-1,-1\n" for r in pred))
        result = evaluate_mot_sequence(gt_path, pred_path, metrics=["CLEAR", "Identity", "HOTA"],
                                       threshold=iou_threshold).to_dict()
    out = {key: result[family][name] for key, (family, name) in REPORTED.items()}
    return out | _counts(gt, pred) | {"iou_threshold": iou_threshold, "source": SOURCE}


def _no_predictions(gt: list[tuple]) -> dict:
    """Every metric's value with nothing predicted (the library refuses an empty file)."""
    zero = {key: 0 for key in REPORTED} | {"MOTP": None, "LocA": None, "IDP": None}
    ids = {int(r[1]) for r in gt}
    return zero | {"FN": len(gt), "ML": len(ids)} | _counts(gt, []) | {"source": SOURCE}


def _counts(gt: list[tuple], pred: list[tuple]) -> dict:
    return {"gt_boxes": len(gt), "gt_tracks": len({int(r[1]) for r in gt}), "pred_boxes": len(pred),
            "pred_tracks": len({int(r[1]) for r in pred})}


def format_table(results: dict) -> str:
    """A small text table of evaluate_mot_sequences' result (for reports)."""
    columns = ("MOTA", "IDF1", "HOTA", "DetA", "AssA", "IDSW")
    lines = [f"{'sequence':<24}" + "".join(f"{c:>8}" for c in columns)]
    for name, metrics in [*results["sequences"].items(), ("COMBINED", results["combined"])]:
        cells = [f"{metrics[c]:8d}" if c == "IDSW" else f"{100 * metrics[c]:8.1f}" for c in columns]
        lines.append(f"{name:<24}" + "".join(cells))
    return "\n".join(lines)
