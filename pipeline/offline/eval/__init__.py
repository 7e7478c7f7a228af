"""Offline mode: ``python -m pipeline eval`` scores a detector on a labeled split with COCO metrics.

It runs the detector over every ``--stride``-th frame of the split's clips (or replays them through
the ZeroMQ pipeline with ``--through-pipeline``) and writes into ``--out``:
``report.json`` (map50_95, map50, ap_small/medium/large, ap_tiny, per_class, per_modality,
latency_ms, skipped clips), ``predictions.json`` (COCO results), ``ground_truth.json`` (the COCO file
scored against) and ``pr_curve.png``.

Metrics come from faster-coco-eval (default) or pycocotools; ``ap_tiny`` is COCO AP where the area
range test is applied to the squared longest box side, i.e. objects whose longest side is < 16 px.

Where things are:
  settings.py          EvalSettings (the options, checked when built) and EvalError
  cli.py               argv -> EvalSettings (parse_args), main(argv)
  report.py            evaluate(settings) -> report and the files in --out; summary(report)
  coco.py              run_cocoeval, coco_metrics, plot_pr_curve, class_to_category, to_coco_results
  direct.py            run_detector (the detector in this process), latency_summary
  through_pipeline.py  evaluate_through_pipeline (the ZeroMQ pipeline as processes), detections_from_jsonl
  track_metrics.py     MOTA / IDF1 / HOTA of tracks (trackers.eval)
  recall.py            recall_by_size, clip_recall
"""
from pipeline.offline.eval.cli import main, parse_args
from pipeline.offline.eval.coco import (TINY_SIDE_PX, Detections, class_to_category, coco_metrics, plot_pr_curve,
                                        run_cocoeval, to_coco_results)
from pipeline.offline.eval.direct import LATENCY_WARMUP_IMAGES, DirectRun, latency_summary, run_detector
from pipeline.offline.eval.recall import RECALL_SIZE_BINS_PX, clip_recall, recall_by_size
from pipeline.offline.eval.report import evaluate, summary, usable_clips
from pipeline.offline.eval.settings import METRIC_LIBRARIES, EvalError, EvalSettings
from pipeline.offline.eval.through_pipeline import detections_from_jsonl, evaluate_through_pipeline, tracking_metrics

__all__ = ["Detections", "DirectRun", "EvalError", "EvalSettings", "LATENCY_WARMUP_IMAGES", "METRIC_LIBRARIES",
           "RECALL_SIZE_BINS_PX", "TINY_SIDE_PX", "class_to_category", "clip_recall", "coco_metrics",
           "detections_from_jsonl", "evaluate", "evaluate_through_pipeline", "latency_summary", "main",
           "parse_args", "plot_pr_curve", "recall_by_size", "run_cocoeval", "run_detector", "summary",
           "to_coco_results", "tracking_metrics", "usable_clips"]
