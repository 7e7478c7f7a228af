#!/usr/bin/env python
"""Start and stop cost of a replay: `python -m pipeline run configs/demo.yaml` timed phase by phase.

    python scripts/bench_startup.py [--config configs/demo.yaml] [--runs 3]

Each run starts from an empty output folder with warm caches (the ONNX export and OpenVINO blobs
exist; one untimed run first makes them). Phases, from the run's own log lines (record logs
"recording ..." on a stream's first frame and "record: stream ... ended" after its last one):

  stages up     command start -> "started N stage processes" (every stage beat: models loaded)
  first frame   command start -> the first frame recorded (the goal: <= 2 s)
  frames        first frame -> last frame recorded
  exit          last frame recorded -> the command returned (the goal: <= 1 s)

Prints the median of --runs and each run's numbers; also the time to import what each stage
process imports (one process per module, alone), which every process pays at start.
"""
from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\S+) INFO (.*)$")
IMPORTS = {"runtime (every process)": "import pipeline.runtime.config, cv2, zmq, numpy",
           "detect: onnxruntime": "import onnxruntime", "detect: torch + yolox (torch backend, exports)": "import torch, yolox.models",
           "track: supervision + trackers": "import supervision, trackers", "record: PyAV": "import av"}


def _stamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def run_once(config: Path) -> dict:
    """One timed run: the phases in seconds."""
    output = _output_dir(config)
    shutil.rmtree(output, ignore_errors=True)
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "pipeline", "run", str(config), "--no-progress"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    ended = time.time()
    if done.returncode != 0:
        raise SystemExit(f"the run failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    up = first = last = None
    for line in done.stderr.splitlines():
        match = STAMP.match(line)
        if not match:
            continue
        when, who, text = _stamp(match[1]), match[2], match[3]
        if who == "supervisor" and text.startswith("started"):
            up = when
        elif who.startswith("record") and text.startswith("recording") and first is None:
            first = when
        elif who.startswith("record") and text.startswith("record: stream"):
            last = when
    if None in (up, first, last):
        raise SystemExit("the run's log lacks the lines this script reads (started / recording / stream ended)")
    return {"stages up": up - started, "first frame": first - started, "frames": last - first,
            "exit": ended - last, "wall": ended - started}


def _output_dir(config: Path) -> Path:
    from pipeline.runtime.config import load_config

    cfg = load_config(config)
    return Path(cfg.resolve(cfg.output_dir))


def import_seconds(repeats: int = 3) -> dict[str, float]:
    """Median seconds for a fresh interpreter to import each stage's libraries (minus a bare start)."""
    def timed(code: str) -> float:
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
            runs.append(time.perf_counter() - started)
        return statistics.median(runs)

    bare = timed("pass")
    return {"python start": bare, **{name: timed(code) - bare for name, code in IMPORTS.items()}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "demo.yaml")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    config = args.config.resolve()
    run_once(config)  # untimed: makes the caches (ONNX export, compiled blobs) a first run would make
    runs = [run_once(config) for _ in range(args.runs)]
    print(f"{config.relative_to(REPO) if config.is_relative_to(REPO) else config}: {args.runs} runs, warm caches")
    print("| phase | median s | runs |\n|---|---|---|")
    for phase in runs[0]:
        values = [run[phase] for run in runs]
        print(f"| {phase} | {statistics.median(values):.2f} | {' '.join(f'{v:.2f}' for v in values)} |")
    print("\n| import in a fresh process | s |\n|---|---|")
    for name, seconds in import_seconds().items():
        print(f"| {name} | {seconds:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
