"""The one config schema, validated at start.

The run's own sections are the dataclasses below; each stage brings the section of its
``stages.<name>`` key (``Stage.section``) and its checks across sections (``Stage.check_config``).
``load_config`` walks the YAML against all of them (``pipeline.runtime.schema``) and raises
ConfigError with a one-line message naming the offending key (unknown key, wrong type, bad value,
missing file). The CLI turns that into exit code 2.

The frame path is a list of stage references (``frame_path``, default capture -> preprocess ->
detect -> track -> record); consumers beside it (``consumers``, default the view) follow the
events and status PUB sockets. Links and their endpoints derive from the stages named there
(``pipeline.runtime.links``).
"""
from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.runtime import links
from pipeline.runtime.messages import valid_stream_id
from pipeline.runtime.registry import stage_class, stage_name
from pipeline.runtime.schema import ConfigError, build, setting
from pipeline.runtime.transport import Endpoint, EndpointError

__all__ = ["ConfigError", "PipelineConfig", "load_config", "config_from_dict", "connect_side", "is_loopback"]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_FRAME_PATH = ("capture", "preprocess", "detect", "track", "record")
DEFAULT_CONSUMERS = ("view", "alerts")


@dataclass
class ZoneConfig:
    """A polygon of one source's picture (pipeline.runtime.zones): ``ignore`` drops the detections whose box
    centre lies in it, ``require`` keeps alerts to tracks inside (with any require zone, none outside)."""
    kind: str = setting(choices=("ignore", "require"))
    polygon: list[list[float]] = setting(ge=0)  # [[x, y], ...] in source pixels, at least 3 points
    name: str | None = None  # drawn beside the zone in the annotated picture

    def validate(self, where: str) -> None:
        key = f"{where}.polygon"
        if len(self.polygon) < 3:
            raise ConfigError(f"config key '{key}' needs at least 3 points [x, y], got {_short(self.polygon)}")
        for i, point in enumerate(self.polygon):
            if len(point) != 2:
                raise ConfigError(f"config key '{key}[{i}]' must be one point [x, y], got {_short(point)}")
        if polygon_area(self.polygon) <= 0:
            raise ConfigError(f"config key '{key}' encloses no area, got {_short(self.polygon)}")


def polygon_area(points: list[list[float]]) -> float:
    """The shoelace area (absolute) of a closed polygon."""
    twice = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]))
    return abs(twice) / 2


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclass
class SourceConfig:
    id: str
    uri: str  # video file, image folder, rtsp://..., or webcam:<index> (see stages/sources/)
    pace: bool = False  # replay: emit at the file's fps, acting as a camera
    fps: float = setting(30.0, gt=0)  # for image folders, and when a file does not say
    loop: bool = False  # restart a file at its end (a test camera); never in replay
    open_timeout_s: float = setting(5.0, gt=0)
    read_timeout_s: float = setting(5.0, gt=0)
    reconnect_initial_s: float = setting(0.5, ge=0)
    reconnect_max_s: float = setting(10.0, ge=0)
    max_reconnects: int = setting(-1, ge=-1)  # -1: keep trying forever (live cameras)
    zones: list[ZoneConfig] = setting(factory=list)  # ignore / require polygons (pipeline.runtime.zones)


@dataclass
class CurveConfig:
    server_public: str | None = None
    server_secret: str | None = None
    client_public: str | None = None
    client_secret: str | None = None


@dataclass
class TransportConfig:
    kind: str = setting("ipc", choices=("ipc", "tcp"))  # how default endpoints are made
    ipc_dir: str | None = None  # default: a fresh folder under /tmp per run
    host: str = "127.0.0.1"
    base_port: int = setting(5550, ge=1, le=65535)  # a link's tcp port: base_port + its own offset
    hwm: int = setting(4, gt=0)  # messages queued per socket side (replay); live mode uses 1
    # the largest message part a stage takes in: a 3840x2160 BGR frame is 24.9 MB; larger ones are refused
    max_message_mb: float = setting(64.0, gt=0)
    # live mode, stages of one host (ipc): frames go through /dev/shm, each stage reads a slot instead of
    # a socket copy (pipeline.runtime.frame_store); a slot is reused this many frames later, so a frame
    # older than that when the next stage reads it is dropped as stale. A stage reads the newest frame
    # of its queue at once (it is never more than a frame or two old: measured, 2 slots lose nothing
    # more than 8), so 8 is room to spare. Memory: slots x frame size per stream, buffer and sending
    # stage (1080p: 8 x 6 MB = 50 MB each, ~5 per stream); where /dev/shm is too small (Docker's
    # default is 64 MB) frames go through the sockets
    shared_memory: bool = True
    shared_memory_slots: int = setting(8, ge=2, le=1024)
    # a link to a stage on another host that is not up yet: how long the run waits for it (0: fail at once)
    remote_wait_s: float = setting(60.0, ge=0)
    curve: CurveConfig | None = None


@dataclass
class SupervisorConfig:
    heartbeat_interval_s: float = setting(1.0, gt=0)
    heartbeat_timeout_s: float = setting(20.0, gt=0)  # a stage silent this long is killed and restarted
    max_restarts: int = setting(3, ge=0)
    drain_timeout_s: float = setting(30.0, gt=0)
    status_interval_s: float = setting(2.0, gt=0)
    prometheus_port: int | None = setting(None, ge=1, le=65535)  # served on 127.0.0.1


class StageSections(dict):
    """stage name -> its section (``cfg.stages.detect`` or ``cfg.stages["detect"]``)."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no config section for stage {name!r}") from None


@dataclass
class PipelineConfig:
    sources: list[SourceConfig]
    mode: str = setting("replay", choices=("replay", "live"))  # replay: lossless | live: stale frames dropped
    output_dir: str = "out/run"
    frame_path: list[str] = setting(factory=lambda: list(DEFAULT_FRAME_PATH))  # stage references, in order
    consumers: list[str] = setting(factory=lambda: list(DEFAULT_CONSUMERS))  # beside the frame path
    transport: TransportConfig = setting(factory=TransportConfig)
    endpoints: dict[str, str] = setting(factory=dict)  # overrides; see pipeline.runtime.links
    stages: dict[str, Any] = setting(factory=dict)  # per stage, its section (built from the stage's class)
    supervisor: SupervisorConfig = setting(factory=SupervisorConfig)
    run_stages: list[str] | None = None  # which stages run on this host; default: the frame path
    base_dir: str = "."  # relative paths resolve against the config file's folder

    @property
    def stream_ids(self) -> list[str]:
        return [s.id for s in self.sources]

    @property
    def live(self) -> bool:
        return self.mode == "live"

    @property
    def path_names(self) -> list[str]:
        """The frame path's stage names, in order."""
        return [stage_name(ref) for ref in self.frame_path]

    def stage_refs(self) -> dict[str, str]:
        """name -> reference of every stage of this config: the frame path's, then the consumers'."""
        return {stage_name(ref): ref for ref in [*self.frame_path, *self.consumers]}

    def stage_class(self, name: str) -> type:
        return stage_class(self.stage_refs()[name])

    def downstream(self, name: str) -> str | None:
        """The frame path's next stage after ``name`` (None for the last, and for consumers)."""
        names = self.path_names
        return names[names.index(name) + 1] if name in names[:-1] else None

    def upstream(self, name: str) -> str | None:
        names = self.path_names
        return names[names.index(name) - 1] if name in names[1:] else None

    def runs_elsewhere(self, name: str | None) -> bool:
        """A frame-path stage this host does not run (the other side of a multi-host split)."""
        return name is not None and name not in self.run_stages

    def remote_links(self) -> list[str]:
        """Endpoint keys of the frame links this host sends to a stage run elsewhere."""
        return [links.input_key(d) for name in self.run_stages
                if self.runs_elsewhere(d := self.downstream(name)) and name in self.path_names]

    def resolve(self, path: str) -> Path:
        p = Path(os.path.expanduser(path))
        return Path(os.path.normpath(p if p.is_absolute() else Path(self.base_dir) / p))

    def endpoint(self, key: str) -> str:
        return self.endpoints[key]

    @property
    def max_message_bytes(self) -> int:
        return int(self.transport.max_message_mb * (1 << 20))


def connect_side(bound_spec: str) -> str:
    """The peer of a bound endpoint: same address, connect, matching pattern."""
    ep = Endpoint.parse(bound_spec)
    address = ep.address.replace("tcp://0.0.0.0:", "tcp://127.0.0.1:").replace("tcp://*:", "tcp://127.0.0.1:")
    return f"{links.PEER[ep.pattern]}+connect:{address}"


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------- loading
def load_config(path: str | Path, check_files: bool = True) -> PipelineConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: malformed YAML{where}: {getattr(exc, 'problem', exc)}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys")
    raw.setdefault("base_dir", str(path.resolve().parent))
    return config_from_dict(raw, check_files=check_files)


def config_from_dict(raw: dict, check_files: bool = True) -> PipelineConfig:
    cfg = build(PipelineConfig, raw, "")
    _check_stages(cfg)
    cfg.stages = _build_sections(cfg, cfg.stages)
    _check_sources(cfg)
    if cfg.transport.ipc_dir is None:
        cfg.transport.ipc_dir = f"/tmp/lss-{os.getpid()}-{os.urandom(3).hex()}"
    cfg.endpoints = _endpoints(cfg)
    if check_files:
        _check_files(cfg)
    for name in cfg.stage_refs():
        cfg.stage_class(name).check_config(cfg, check_files)
    return cfg


def _check_stages(cfg: PipelineConfig) -> None:
    """The frame path starts at a source and runs through frame stages; consumers are consumers."""
    if len(cfg.frame_path) < 2:
        raise ConfigError(f"config key 'frame_path' needs a source and at least one more stage, got {cfg.frame_path}")
    for i, ref in enumerate(cfg.frame_path):
        role = _class_of(ref, f"frame_path[{i}]").role
        wanted = "source" if i == 0 else "filter"
        if role != wanted:
            raise ConfigError(f"config key 'frame_path[{i}]': {ref!r} is a {role} stage; "
                              f"{'the first' if i == 0 else 'every later'} stage must be a {wanted}")
    for i, ref in enumerate(cfg.consumers):
        if _class_of(ref, f"consumers[{i}]").role != "consumer":
            raise ConfigError(f"config key 'consumers[{i}]': {ref!r} is not a consumer stage")
    names = [stage_name(ref) for ref in [*cfg.frame_path, *cfg.consumers]]
    if len(set(names)) != len(names):
        raise ConfigError(f"config keys 'frame_path'/'consumers': a stage may appear once, got {names}")
    if cfg.run_stages is None:
        cfg.run_stages = cfg.path_names
    for i, name in enumerate(cfg.run_stages):
        if name not in names:
            raise ConfigError(f"config key 'run_stages[{i}]' must be one of {names}, got {name!r}")


def _class_of(ref: str, where: str) -> type:
    try:
        return stage_class(ref)
    except ConfigError as exc:
        raise ConfigError(f"config key '{where}': {exc}") from None


def _build_sections(cfg: PipelineConfig, raw: dict) -> StageSections:
    classes = {name: cfg.stage_class(name) for name in cfg.stage_refs()}
    with_sections = sorted(name for name, cls in classes.items() if cls.section is not None)
    for key in raw:
        if key not in with_sections:
            raise ConfigError(f"unknown config key 'stages.{key}' (allowed: {', '.join(with_sections)})")
    return StageSections({name: build(classes[name].section, raw.get(name) or {}, f"stages.{name}")
                          for name in with_sections})


def _check_sources(cfg: PipelineConfig) -> None:
    if not cfg.sources:
        raise ConfigError("config key 'sources' must list at least one source")
    for i, src in enumerate(cfg.sources):
        if not valid_stream_id(src.id):
            raise ConfigError(f"config key 'sources[{i}].id': a stream id names its output folder: "
                              f"[A-Za-z0-9_.-], 1 to 64 characters, not . or .., got {src.id!r}")
    ids = [s.id for s in cfg.sources]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"config key 'sources': stream ids must be unique, got {ids}")


def _endpoints(cfg: PipelineConfig) -> dict[str, str]:
    table = links.link_table(cfg)
    endpoints = links.default_endpoints(cfg, table)
    for key, spec in cfg.endpoints.items():
        if key not in endpoints:
            raise ConfigError(f"unknown config key 'endpoints.{key}' (allowed: {', '.join(endpoints)})")
        endpoints[key] = spec
    for key, spec in endpoints.items():
        _check_endpoint(cfg, key, spec, table[key].pattern)
    return endpoints


def _check_endpoint(cfg: PipelineConfig, key: str, spec: str, pattern: str) -> None:
    where = f"endpoints.{key}"
    try:
        ep = Endpoint.parse(spec)
    except EndpointError as exc:
        raise ConfigError(f"config key '{where}': {exc}") from None
    if ep.pattern != pattern:  # the key names the receiving (or publishing) side of the link
        raise ConfigError(f"config key '{where}': pattern must be {pattern}, got {ep.pattern}")
    curve = cfg.transport.curve
    if ep.binds_beyond_loopback and (curve is None or None in (curve.server_secret, curve.client_public)):
        raise ConfigError(f"config key '{where}': binding {ep.address} beyond loopback needs transport.curve."
                          "server_secret and transport.curve.client_public (the one client key admitted)")


def check_file(cfg: PipelineConfig, value: str | None, where: str) -> None:
    """A configured file must exist (relative paths against the config's folder)."""
    if value is not None and not cfg.resolve(value).is_file():
        raise ConfigError(f"config key '{where}': {value} does not exist")


def _check_files(cfg: PipelineConfig) -> None:
    curve = cfg.transport.curve
    if curve is not None:
        for name in ("server_public", "server_secret", "client_public", "client_secret"):
            check_file(cfg, getattr(curve, name), f"transport.curve.{name}")
