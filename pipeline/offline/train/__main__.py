"""``python -m pipeline.offline.train ...``: the same as ``python -m pipeline train ...``."""
import sys

from pipeline.offline.train.cli import main

sys.exit(main())
