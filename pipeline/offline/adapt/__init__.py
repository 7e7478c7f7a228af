"""``python -m pipeline adapt``: fine-tune the shipped detector on a user's own labeled clips.

  settings.py  AdaptSettings (the options, checked when built)
  cli.py       argv -> AdaptSettings, main(argv)
  run.py       adapt(settings): hold out by clip, mix in base data, fine-tune, score before/after
  card.py      adapted.md and report.json
"""
from pipeline.offline.adapt.cli import main

__all__ = ["main"]
