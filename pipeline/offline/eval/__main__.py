"""``python -m pipeline.offline.eval ...``: the same as ``python -m pipeline eval ...``."""
import sys

from pipeline.offline.eval.cli import main

sys.exit(main())
