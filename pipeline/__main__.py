"""Command line: python -m pipeline {run,stage,eval,train} ..."""
from __future__ import annotations

import argparse
import logging
import sys

from pipeline.runtime.config import ConfigError, load_config
from pipeline.runtime.transport import EndpointError

STAGE_NAMES = ("capture", "preprocess", "detect", "track", "record", "view")


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def cmd_run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline run", description="Run the whole pipeline.")
    parser.add_argument("config", help="YAML config (see configs/)")
    parser.add_argument("--no-progress", action="store_true", help="status lines instead of a progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s supervisor %(levelname)s %(message)s")
    try:
        cfg = load_config(args.config)
        if "detect" in cfg.run_stages or ("preprocess" in cfg.run_stages and not cfg.stages.preprocess.input_size):
            from stages.detect import check_weights

            check_weights(cfg)  # a wrong weights file stops here, before any stage starts
    except ConfigError as exc:
        return _fail(str(exc), 2)
    from pipeline.runtime.supervisor import Supervisor

    try:
        supervisor = Supervisor(cfg, progress=not args.no_progress)
    except ConfigError as exc:
        return _fail(str(exc), 2)
    code = supervisor.run()
    if code == 0:
        print(f"outputs (annotated video, tracks.jsonl per stream): {cfg.resolve(cfg.output_dir)}")
    return code


def cmd_stage(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline stage", description="Run one stage process.")
    parser.add_argument("name", choices=STAGE_NAMES)
    parser.add_argument("config")
    parser.add_argument("--source", help="capture only: the source id")
    parser.add_argument("--start-frame", type=int, default=0, help="capture only: skip frames already sent")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, check_network=False)
    except ConfigError as exc:
        return _fail(str(exc), 2)
    from pipeline.runtime.stage import StageFatalError, run_stage
    from stages import build_stage
    from stages.capture import SourceError

    try:
        stage = build_stage(args.name, cfg, source_id=args.source, start_frame=args.start_frame)
        if hasattr(stage, "run"):  # consumers beside the frame path (the view) run their own loop
            return stage.run()
        return run_stage(stage, cfg, instance=f"capture:{args.source}" if args.name == "capture" else None)
    except (SourceError, StageFatalError) as exc:  # exit 3: the supervisor stops the run, no restarts
        return _fail(f"{args.name}: {exc}", 3)
    except (ConfigError, EndpointError) as exc:  # exit 2: the supervisor stops the run, no restarts
        return _fail(f"{args.name}: {exc}", 2)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"run": cmd_run, "stage": cmd_stage, "eval": _lazy("pipeline.offline.eval"), "train": _lazy("pipeline.offline.train")}
    if not argv or argv[0] not in commands:
        print(f"usage: python -m pipeline {{{','.join(commands)}}} ...", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


def _lazy(module: str):
    def run(argv: list[str]) -> int:
        import importlib

        return importlib.import_module(module).main(argv)

    return run


if __name__ == "__main__":
    sys.exit(main())
