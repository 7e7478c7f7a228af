"""Offline work on recorded data, beside the real-time pipeline (pipeline.runtime), never inside it:

  data/   the labeled dataset (dataset), synthetic clips (synthetic), visible-box tightening (tighten),
          the one COCO ground-truth builder (coco)
  eval/   ``python -m pipeline eval``: COCO metrics of a detector, direct or through the pipeline
  train/  ``python -m pipeline train``: the training loop

It may import pipeline.runtime, models and third-party libraries, never the stages.
"""
