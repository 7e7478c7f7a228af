"""Evaluation through the ZeroMQ pipeline: ``python -m pipeline run`` in lossless replay mode as a process
group, then its ``tracks.jsonl`` per clip read back into detections (``detections_from_jsonl``), plus the
stream-integrity counts and the tracking metrics (MOTA / IDF1 / HOTA) of what it emitted.

Every frame is replayed; the stride is applied when scoring, so the scored frames are the ones direct
evaluation scores.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.offline.data import dataset
from pipeline.offline.data.tighten import LabelTightener
from pipeline.offline.eval.coco import Detections
from pipeline.offline.eval.settings import EvalError, EvalSettings

# SIGTERM first: the supervisor drains its stages (within 30 s); SIGKILL if it does not end in time
STOP_SIGNALS = ((signal.SIGTERM, 45), (signal.SIGKILL, 5))


def detections_from_jsonl(path: Path, stream_id: str | None = None) -> tuple[Detections, dict]:
    """Read a pipeline tracks.jsonl into detections; also counts of duplicate / out-of-order / missing frames."""
    from pipeline.runtime.records import read_frame_records

    detections: Detections = {}
    order_errors = duplicates = 0
    last: dict[str, int] = {}
    try:
        for line_number, record in read_frame_records(path):
            try:
                key = (record["stream_id"] if stream_id is None else stream_id, int(record["frame_index"]))
                boxes = np.asarray(record["detections"], dtype=np.float32).reshape(-1, 6)
            except (KeyError, TypeError, ValueError) as exc:
                raise EvalError(f"{path}:{line_number}: malformed pipeline record ({exc})") from None
            if key in detections:  # keep the first, as the record stage does with a resent frame
                duplicates += 1
                continue
            order_errors += key[1] < last.get(key[0], -1)
            last[key[0]] = max(key[1], last.get(key[0], -1))
            detections[key] = boxes
    except ValueError as exc:  # a line that is not JSON
        raise EvalError(str(exc)) from None
    missing = sum(last_index + 1 - sum(1 for k in detections if k[0] == stream) for stream, last_index in last.items())
    return detections, {"duplicates": duplicates, "out_of_order": order_errors, "missing_before_last": missing}


def checkpoint_class_names(weights: Path | None) -> list[str]:
    """The class names of ``weights`` (None: the shipped default), read without torch."""
    from models import DEFAULT_WEIGHTS, CheckpointError, checkpoint_meta

    try:
        return list(checkpoint_meta(weights or DEFAULT_WEIGHTS)["class_names"])
    except (CheckpointError, FileNotFoundError) as exc:
        raise EvalError(f"cannot load model: {exc}") from None


def _sequence_folder(clip, folder: Path) -> Path:
    """An image sequence as the pipeline's image-folder source reads it: one folder holding exactly the
    clip's frames, named so that name order is frame order (links to the user's files; copies where
    links cannot be made). A clip's images may share their folder with other clips' or sort otherwise."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(clip.images):
        link = folder / f"{index:06d}{image.suffix.lower()}"
        if link.is_symlink() or link.exists():
            link.unlink()
        try:
            link.symlink_to(image.resolve())
        except OSError:
            shutil.copyfile(image, link)
    return folder


def _source_uri(clip, number: int, out_dir: Path) -> str:
    if clip.images:   # numbered, not named: a clip's name comes from the user's files
        return str(_sequence_folder(clip, out_dir / "sequences" / f"{number:05d}"))
    return str(clip.video_path)


def _pipeline_config(clips, settings: EvalSettings, output_dir: Path) -> dict:
    return {"sources": [{"id": clip.name, "uri": _source_uri(clip, number, output_dir.parent)}
                        for number, clip in enumerate(clips)],
            "mode": "replay", "output_dir": str(output_dir),
            # an absolute path: the run's config lives in output_dir, which a relative --weights is not relative to
            "stages": {"detect": {"weights": str(Path(settings.weights).resolve()) if settings.weights else "default",
                                  "backend": settings.backend, "device": settings.device, "batch_size": 1,
                                  "conf_threshold": settings.conf, "nms_threshold": settings.nms,
                                  "class_agnostic_nms": False,   # COCO scoring: what direct evaluation runs
                                  "tiling": {"mode": settings.tiling, "min_scale": settings.tile_min_scale}},
                       "track": {"annotate": False}, "record": {"annotated": False}}}


def _run_process_group(command: list[str], timeout_s: float) -> tuple[int | None, str]:
    """Run command in its own process group; on timeout (returncode None) or interrupt stop the whole
    group, so no stage process outlives the evaluation."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout_s)
        return process.returncode, output
    except subprocess.TimeoutExpired:
        return None, _stop_group(process)
    except BaseException:
        _stop_group(process)
        raise


def _stop_group(process: subprocess.Popen) -> str:
    for sig, grace_s in STOP_SIGNALS:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            return process.communicate(timeout=grace_s)[0] or ""
        except subprocess.TimeoutExpired:
            continue
    return ""


def _run_pipeline(clips, settings: EvalSettings, out_dir: Path, output_dir: Path) -> None:
    """Write the replay config (out_dir/pipeline.yaml; the pipeline writes into ``output_dir``), run the
    pipeline on it with its log in out_dir/pipeline.log; EvalError unless it exits 0."""
    import importlib.util

    import yaml

    if importlib.util.find_spec("pipeline.runtime.supervisor") is None:
        raise EvalError("--through-pipeline needs the ZeroMQ pipeline (pipeline.runtime.supervisor), absent in this checkout")
    config_path = out_dir / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump(_pipeline_config(clips, settings, output_dir)))
    command = [sys.executable, "-m", "pipeline", "run", str(config_path), "--no-progress"]
    returncode, output = _run_process_group(command, settings.pipeline_timeout)
    (out_dir / "pipeline.log").write_text(output)
    if returncode is None:
        raise EvalError(f"the pipeline did not finish within {settings.pipeline_timeout:g} s "
                        f"(stopped; log: {out_dir / 'pipeline.log'})")
    if returncode != 0:
        last_line = (output.strip().splitlines() or ["no output"])[-1]
        raise EvalError(f"the pipeline exited {returncode}: {last_line} (log: {out_dir / 'pipeline.log'})")


def _read_outputs(clips, output_dir: Path) -> tuple[Detections, dict]:
    """Every clip's tracks.jsonl as detections, with the integrity counts summed over the clips."""
    detections: Detections = {}
    integrity = {"duplicates": 0, "out_of_order": 0, "missing_before_last": 0, "streams_without_output": []}
    for clip in clips:
        path = output_dir / clip.name / "tracks.jsonl"
        if not path.is_file():
            integrity["streams_without_output"].append(clip.name)
            continue
        clip_detections, counts = detections_from_jsonl(path, clip.name)
        detections.update(clip_detections)
        for key, value in counts.items():
            integrity[key] += value
    return detections, integrity


def evaluate_through_pipeline(clips, settings: EvalSettings, out_dir: Path) -> tuple[Detections, dict]:
    """Replay the clips through the ZeroMQ pipeline (lossless replay mode) and read what it emitted:
    (detections, integrity counts with seconds, frames and the tracking metrics)."""
    output_dir = out_dir / "pipeline"
    started = time.perf_counter()
    _run_pipeline(clips, settings, out_dir, output_dir)
    detections, integrity = _read_outputs(clips, output_dir)
    integrity["seconds"] = time.perf_counter() - started
    integrity["frames"] = len(detections)
    # tracks are scored on every frame, so the tightener reads every frame (stride 1)
    labels_of = LabelTightener(1, settings.cache_dir) if settings.tight_visible_boxes else dataset.read_labels
    integrity["tracking"] = tracking_metrics(clips, output_dir, labels_of)
    return detections, integrity


def tracking_metrics(clips, output_dir: Path, labels_of=dataset.read_labels) -> dict:
    """MOTA / IDF1 / HOTA of the pipeline's tracks against the labels, each clip a sequence."""
    from pipeline.offline.eval.track_metrics import evaluate_mot_sequences, gt_rows_from_labels, rows_from_tracks_jsonl

    sequences = {clip.name: (gt_rows_from_labels(labels_of(clip)),
                             rows_from_tracks_jsonl(output_dir / clip.name / "tracks.jsonl"))
                 for clip in clips if (output_dir / clip.name / "tracks.jsonl").is_file()}
    return evaluate_mot_sequences(sequences) if sequences else {}
