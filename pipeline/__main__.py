"""Command line: python -m pipeline {run,stage,eval,train,adapt,quantize} ..."""
from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys

from pipeline.runtime.config import ConfigError, PipelineConfig, load_config
from pipeline.runtime.transport import EndpointError

EXIT_CONFIG, EXIT_BAD_INPUT = 2, 3  # the supervisor stops the run on either, no restarts


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _stop_waiting(signum, frame):
    raise KeyboardInterrupt


def _waited_for_remote_side(cfg: PipelineConfig) -> bool:
    """False when Ctrl-C or SIGTERM ended the wait for the other host (nothing was started)."""
    from pipeline.runtime.supervisor import wait_for_remote_side

    previous = signal.signal(signal.SIGTERM, _stop_waiting)
    try:
        wait_for_remote_side(cfg)
        return True
    except KeyboardInterrupt:
        return False
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline run", description="Run the whole pipeline.")
    parser.add_argument("config", help="YAML config (see configs/)")
    parser.add_argument("--no-progress", action="store_true", help="status lines instead of a progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s supervisor %(levelname)s %(message)s")
    from pipeline.runtime.supervisor import Supervisor

    try:
        cfg = load_config(args.config)
        for name in cfg.run_stages:  # e.g. a wrong weights file stops here, before any stage starts
            cfg.stage_class(name).preflight(cfg)
        if not _waited_for_remote_side(cfg):
            print("stopped while waiting for the other host; no stage was started", file=sys.stderr)
            return 0
        supervisor = Supervisor(cfg, progress=not args.no_progress)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    code = supervisor.run()
    if code == 0:
        print(f"outputs (annotated video, tracks.jsonl per stream): {cfg.resolve(cfg.output_dir)}")
    return code


def cmd_stage(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline stage", description="Run one stage process.")
    parser.add_argument("name", help="a stage of the config's frame_path or consumers")
    parser.add_argument("config")
    parser.add_argument("--source", help="source stages: the source id")
    parser.add_argument("--start-frame", type=int, default=0, help="source stages: skip frames already sent")
    parser.add_argument("--restarts", type=int, default=0, help="how often the supervisor restarted this stage")
    parser.add_argument("--ended", default={}, type=_ended_arg, help="a restarted stage fed from another host: the streams "
                        "its earlier process had finished, as id=frame_count,...")
    parser.add_argument("--session", default="", help="the supervisor run's id (sources stamp it on every frame)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
        if args.name not in cfg.stage_refs():
            raise ConfigError(f"no stage {args.name!r} in this config (stages: {', '.join(cfg.stage_refs())})")
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    return _run_stage(cfg, args)


def _ended_arg(text: str) -> dict[str, int]:
    from pipeline.runtime.remote_ends import parse_ended

    try:
        return parse_ended(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _run_stage(cfg: PipelineConfig, args: argparse.Namespace) -> int:
    from pipeline.runtime.stage import StageFatalError, run_stage

    cls = cfg.stage_class(args.name)
    try:
        if cls.role == "source":
            stage = cls(cfg, args.source, args.start_frame)
            stage.session = args.session
            return run_stage(stage, cfg, instance=f"{args.name}:{args.source}")
        stage = cls(cfg)
        stage.restarts, stage.session = args.restarts, args.session
        stage.ended_before = args.ended
        return stage.run() if cls.role == "consumer" else run_stage(stage, cfg)
    except StageFatalError as exc:  # bad input a restart cannot fix (a source that cannot be read, ...)
        return _fail(f"{args.name}: {exc}", EXIT_BAD_INPUT)
    except (ConfigError, EndpointError) as exc:
        return _fail(f"{args.name}: {exc}", EXIT_CONFIG)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"run": cmd_run, "stage": cmd_stage, "eval": _lazy("pipeline.offline.eval"),
                "train": _lazy("pipeline.offline.train"), "adapt": _lazy("pipeline.offline.adapt"),
                "quantize": _lazy("pipeline.offline.quantize")}
    if not argv or argv[0] not in commands:
        print(f"usage: python -m pipeline {{{','.join(commands)}}} ...", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


def _lazy(module: str):
    def run(argv: list[str]) -> int:
        return importlib.import_module(module).main(argv)

    return run


if __name__ == "__main__":
    sys.exit(main())
