"""The one config schema, validated at start.

The schema is the dataclasses below; `load_config` walks the YAML against them and raises
ConfigError with a one-line message naming the offending key (unknown key, wrong type, bad value,
missing file, unreachable endpoint). The CLI turns that into exit code 2.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.runtime.transport import Endpoint, EndpointError

REPO_ROOT = Path(__file__).resolve().parents[2]
STAGE_ORDER = ("capture", "preprocess", "detect", "track", "record")  # the frame path
OPTIONAL_STAGES = ("view",)  # consumers beside the frame path, started when enabled


class ConfigError(ValueError):
    """One line naming the key and the problem."""


@dataclass
class SourceConfig:
    id: str
    uri: str  # video file, image folder, rtsp://..., or webcam:<index>
    pace: bool = False  # replay: emit at the file's fps, acting as a camera
    fps: float = 30.0  # for image folders, and when a file does not say
    loop: bool = False  # restart a file at its end (a test camera); never in replay
    open_timeout_s: float = 5.0
    read_timeout_s: float = 5.0
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 10.0
    max_reconnects: int = -1  # -1: keep trying forever (live cameras)


@dataclass
class CurveConfig:
    server_public: str | None = None
    server_secret: str | None = None
    client_public: str | None = None
    client_secret: str | None = None


@dataclass
class TransportConfig:
    kind: str = "ipc"  # ipc | tcp: how default endpoints are made
    ipc_dir: str | None = None  # default: a fresh folder under /tmp per run
    host: str = "127.0.0.1"
    base_port: int = 5550
    hwm: int = 4  # messages queued per socket side (replay); live mode uses 1
    curve: CurveConfig | None = None


@dataclass
class PreprocessConfig:
    input_size: list[int] | None = None  # [h, w]; default: the model checkpoint's


@dataclass
class DetectConfig:
    weights: str = "default"  # a checkpoint path, or "default": the shipped default model
    backend: str = "onnx"  # onnx (CPU) | torch
    device: str = "cpu"
    fp16: bool = False
    batch_size: int = 4
    conf_threshold: float = 0.25
    nms_threshold: float = 0.45
    # one box per object for the operator and the tracker: a drone that also scores as a bird at the same
    # place is kept once, as its best class (offline mAP keeps COCO's class-aware NMS)
    class_agnostic_nms: bool = True


@dataclass
class AnnotateConfig:
    """What the track stage draws for the operator. Pixel sizes are for a 512-px-high frame and scale
    with the frame, so the picture reads the same at 640x512 and 1920x1080."""
    boxes: bool = True
    labels: bool = True  # "#<track> <voted class> <confidence>"
    trace_length: int = 30  # frames of trajectory drawn per track; 0: none
    insets: bool = True  # magnified picture-in-picture of each confirmed alert-class track
    inset_scale: float = 4.0  # magnification (nearest neighbour: the target's pixels stay sharp)
    inset_context_px: int = 32  # side of the source square around the target shown in an inset
    max_insets: int = 4
    hud: bool = True  # stream, wall time, fps, latency, dropped frames
    box_padding_px: int = 3  # boxes drawn this far outside the target so lines do not cover it

    def __post_init__(self):
        _non_negative(self, "stages.track.annotation", ("trace_length", "max_insets", "box_padding_px"))
        _at_least(self.inset_scale, 1.0, "stages.track.annotation.inset_scale")
        _at_least(self.inset_context_px, 4, "stages.track.annotation.inset_context_px")


@dataclass
class TrackConfig:
    # trackers.ByteTrackTracker (ByteTrack of the supervision ecosystem), tuned for 30 fps small targets
    track_activation_threshold: float = 0.3  # min score that starts a track (trackers' default: 0.7)
    high_conf_det_threshold: float = 0.5  # first association pass; lower scores join in the second
    minimum_iou_threshold: float = 0.1  # tiny boxes overlap little from frame to frame
    lost_track_buffer: int = 30  # frames (at frame_rate) a lost track waits to be matched again
    minimum_consecutive_frames: int = 3  # frames before a track gets an id: one-frame clutter gets none
    frame_rate: float = 30.0  # nominal rate; a gap in frame_index is passed on as elapsed frames
    vote_min_frames: int = 5  # observations before a track's class vote may raise an alert
    alert_classes: list[str] = field(default_factory=lambda: ["drone"])  # voted classes that alert
    thumbnail_px: int = 96  # side of the JPEG thumbnail in track_confirmed events
    publish_frames: bool = True  # annotated frames on the events PUB socket (topic frame/<stream>)
    events_hwm: int = 8  # PUB queue per subscriber: a slow subscriber loses messages, never slows us
    annotate: bool = True
    annotation: AnnotateConfig = field(default_factory=AnnotateConfig)

    def __post_init__(self):
        for name in ("track_activation_threshold", "high_conf_det_threshold", "minimum_iou_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"config key 'stages.track.{name}' must be in [0, 1], got {getattr(self, name)!r}")
        _non_negative(self, "stages.track", ("lost_track_buffer", "vote_min_frames"))
        _at_least(self.minimum_consecutive_frames, 1, "stages.track.minimum_consecutive_frames")
        _at_least(self.frame_rate, 1e-3, "stages.track.frame_rate")
        _at_least(self.thumbnail_px, 8, "stages.track.thumbnail_px")
        _at_least(self.events_hwm, 1, "stages.track.events_hwm")


@dataclass
class RecordConfig:
    segment_seconds: float = 60.0
    container: str = "mp4"  # fragmented mp4 (a fragment per frame: playable after a crash) | mkv | ts
    codec: str = "libx264"
    preset: str = "ultrafast"
    crf: int = 23
    gop_frames: int = 30  # keyframe interval (seek granularity)
    video: bool = True  # false: only tracks.jsonl / tracks_mot.txt (e.g. offline scoring)
    annotated: bool = True  # segment_NNNNN.* holds the annotated frames (else the raw ones)
    also_raw: bool = False  # with annotated: the raw frames too, in raw_segment_NNNNN.*
    mode: str = "continuous"  # continuous | event: only around triggers, with pre- and post-roll
    trigger: str = "alert"  # event mode: alert (a confirmed alert-class track in view) | detection
    pre_roll_s: float = 3.0  # event mode: source seconds kept before a trigger (ring buffer, yuv420p)
    post_roll_s: float = 5.0  # event mode: source seconds recorded after the last trigger
    retention_max_age_s: float | None = None  # closed segments older than this are deleted
    retention_max_total_mb: float | None = None  # oldest closed segments deleted beyond this total
    mot_txt: bool = True  # <stream>/tracks_mot.txt (MOTChallenge) beside tracks.jsonl

    def __post_init__(self):
        for name, allowed in (("mode", ("continuous", "event")), ("trigger", ("alert", "detection"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"config key 'stages.record.{name}' must be one of {list(allowed)}, "
                                  f"got {getattr(self, name)!r}")
        _non_negative(self, "stages.record", ("pre_roll_s", "post_roll_s", "crf"))
        _at_least(self.gop_frames, 1, "stages.record.gop_frames")
        for name in ("retention_max_age_s", "retention_max_total_mb"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"config key 'stages.record.{name}' must be > 0 or null, got {getattr(self, name)!r}")


def _non_negative(section, where: str, names) -> None:
    for name in names:
        if getattr(section, name) < 0:
            raise ConfigError(f"config key '{where}.{name}' must be >= 0, got {getattr(section, name)!r}")


def _at_least(value, minimum, where: str) -> None:
    if value < minimum:
        raise ConfigError(f"config key '{where}' must be >= {minimum}, got {value!r}")


@dataclass
class ViewConfig:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None  # required when host is not loopback
    tls_cert: str | None = None  # PEM certificate (chain) and its key: serve HTTPS, so the token never
    tls_key: str | None = None   # crosses the network in clear text
    jpeg_quality: int = 80  # 1..100; each frame is encoded once, shared by every browser
    stale_after_s: float = 2.0  # a stream without a new frame this long shows DOWN, not a frozen frame
    max_clients: int = 32  # open video connections; more get HTTP 503
    max_events: int = 200  # tracks/events kept for the page


@dataclass
class StagesConfig:
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    view: ViewConfig = field(default_factory=ViewConfig)


@dataclass
class SupervisorConfig:
    heartbeat_interval_s: float = 1.0
    heartbeat_timeout_s: float = 20.0  # a stage silent this long is killed and restarted
    max_restarts: int = 3
    drain_timeout_s: float = 30.0
    status_interval_s: float = 2.0
    prometheus_port: int | None = None  # served on 127.0.0.1


@dataclass
class PipelineConfig:
    sources: list[SourceConfig]
    mode: str = "replay"  # replay: lossless | live: bounded latency, stale frames dropped
    output_dir: str = "out/run"
    transport: TransportConfig = field(default_factory=TransportConfig)
    endpoints: dict[str, str] = field(default_factory=dict)  # overrides; see default_endpoints()
    stages: StagesConfig = field(default_factory=StagesConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    run_stages: list[str] = field(default_factory=lambda: list(STAGE_ORDER))  # which run on this host
    base_dir: str = "."  # relative paths resolve against the config file's folder

    @property
    def stream_ids(self) -> list[str]:
        return [s.id for s in self.sources]

    @property
    def live(self) -> bool:
        return self.mode == "live"

    def resolve(self, path: str) -> Path:
        p = Path(os.path.expanduser(path))
        return Path(os.path.normpath(p if p.is_absolute() else Path(self.base_dir) / p))

    def endpoint(self, key: str) -> str:
        return self.endpoints[key]


# ---------------------------------------------------------------- endpoints
ENDPOINT_KEYS = ("preprocess_in", "detect_in", "track_in", "record_in", "control", "events", "status")
_LINKS = {  # key -> (bind side pattern, connect side pattern)
    "preprocess_in": ("pull", "push"), "detect_in": ("pull", "push"), "track_in": ("pull", "push"),
    "record_in": ("pull", "push"), "control": ("pull", "push"), "events": ("pub", "sub"), "status": ("pub", "sub"),
}


def default_endpoints(cfg: PipelineConfig) -> dict[str, str]:
    """Bound side of every link, from the transport settings (the receiver binds)."""
    t = cfg.transport
    out = {}
    for i, key in enumerate(ENDPOINT_KEYS):
        if t.kind == "ipc":
            address = f"ipc://{t.ipc_dir}/{key}"
        else:
            address = f"tcp://{t.host}:{t.base_port + i}"
        out[key] = f"{_LINKS[key][0]}+bind:{address}"
    return out


def connect_side(bound_spec: str) -> str:
    """The peer of a bound endpoint: same address, connect, matching pattern."""
    ep = Endpoint.parse(bound_spec)
    peer = {"pull": "push", "push": "pull", "pub": "sub", "sub": "pub"}[ep.pattern]
    address = ep.address.replace("tcp://0.0.0.0:", "tcp://127.0.0.1:").replace("tcp://*:", "tcp://127.0.0.1:")
    return f"{peer}+connect:{address}"


# ---------------------------------------------------------------- loading
def load_config(path: str | Path, check_files: bool = True, check_network: bool = True) -> PipelineConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: malformed YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys")
    raw.setdefault("base_dir", str(path.resolve().parent))
    return config_from_dict(raw, check_files=check_files, check_network=check_network)


def config_from_dict(raw: dict, check_files: bool = True, check_network: bool = True) -> PipelineConfig:
    cfg = _build(PipelineConfig, raw, "")
    _validate(cfg, check_files, check_network)
    return cfg


def _build(cls, raw: Any, where: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise ConfigError(f"unknown config key '{_join(where, key)}' (allowed: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            kwargs[f.name] = _coerce(hints[f.name], raw[f.name], _join(where, f.name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required config key '{_join(where, f.name)}'")
    return cls(**kwargs)


def _coerce(hint, value, where: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{where}' must be a list, got {type(value).__name__}")
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{where}' must be a mapping, got {type(value).__name__}")
        return {str(k): _coerce(args[1], v, _join(where, k)) for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # ids like 0 or 1 read from YAML
    if not isinstance(value, hint) or (hint in (int, float) and isinstance(value, bool)):
        raise ConfigError(f"config key '{where}' must be {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def _join(where: str, key) -> str:
    return f"{where}.{key}" if where else str(key)


# ---------------------------------------------------------------- semantic checks
def _choice(value, allowed, where):
    if value not in allowed:
        raise ConfigError(f"config key '{where}' must be one of {list(allowed)}, got {value!r}")


def _positive(value, where):
    if value <= 0:
        raise ConfigError(f"config key '{where}' must be > 0, got {value!r}")


def _validate(cfg: PipelineConfig, check_files: bool, check_network: bool) -> None:
    _choice(cfg.mode, ("replay", "live"), "mode")
    _choice(cfg.transport.kind, ("ipc", "tcp"), "transport.kind")
    _choice(cfg.stages.detect.backend, ("onnx", "torch"), "stages.detect.backend")
    _choice(cfg.stages.record.container, ("mp4", "mkv", "ts"), "stages.record.container")
    _positive(cfg.stages.detect.batch_size, "stages.detect.batch_size")
    _positive(cfg.transport.hwm, "transport.hwm")
    _positive(cfg.stages.record.segment_seconds, "stages.record.segment_seconds")
    _check_detector(cfg.stages.detect, cfg.stages.preprocess)
    for name in cfg.run_stages:
        _choice(name, STAGE_ORDER + OPTIONAL_STAGES, "run_stages[]")
    view = cfg.stages.view
    if view.enabled and not is_loopback(view.host) and not view.token:
        raise ConfigError(f"config key 'stages.view.token' is required to serve the view on {view.host}")
    if bool(view.tls_cert) != bool(view.tls_key):
        raise ConfigError("config keys 'stages.view.tls_cert' and 'stages.view.tls_key' go together: "
                          "give both or neither")
    if not cfg.sources:
        raise ConfigError("config key 'sources' must list at least one source")
    for i, src in enumerate(cfg.sources):
        _positive(src.fps, f"sources[{i}].fps")
        if src.uri.startswith("webcam:") and not src.uri[len("webcam:"):].isdigit():
            raise ConfigError(f"config key 'sources[{i}].uri': a webcam is webcam:<index> (e.g. webcam:0), "
                              f"got {src.uri!r}")
    ids = [s.id for s in cfg.sources]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"config key 'sources': stream ids must be unique, got {ids}")
    if cfg.transport.ipc_dir is None:
        cfg.transport.ipc_dir = f"/tmp/lss-{os.getpid()}-{os.urandom(3).hex()}"
    endpoints = default_endpoints(cfg)
    for key, spec in cfg.endpoints.items():
        if key not in endpoints:
            raise ConfigError(f"unknown config key 'endpoints.{key}' (allowed: {', '.join(ENDPOINT_KEYS)})")
        endpoints[key] = spec
    cfg.endpoints = endpoints
    for key, spec in endpoints.items():
        _check_endpoint(cfg, key, spec, check_network)
    if check_files:
        _check_files(cfg)


def _check_detector(detect: DetectConfig, preprocess: PreprocessConfig) -> None:
    """What the detector would refuse only after loading the weights (and restarting) is refused here."""
    if not detect.device.startswith(("cpu", "cuda")):
        raise ConfigError(f"config key 'stages.detect.device' must be cpu or cuda[:N], got {detect.device!r}")
    if detect.backend == "onnx" and detect.device != "cpu":
        raise ConfigError(f"config key 'stages.detect.device': the onnx backend runs on cpu only, got {detect.device!r}")
    if detect.fp16 and not detect.device.startswith("cuda"):
        raise ConfigError(f"config key 'stages.detect.fp16' needs a cuda device, got {detect.device!r}")
    size = preprocess.input_size
    if size is not None and (len(size) != 2 or any(not isinstance(v, int) or v <= 0 or v % 32 for v in size)):
        raise ConfigError(f"config key 'stages.preprocess.input_size' must be [height, width], positive multiples "
                          f"of 32, got {size!r}")


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_endpoint(cfg: PipelineConfig, key: str, spec: str, check_network: bool) -> None:
    where = f"endpoints.{key}"
    try:
        ep = Endpoint.parse(spec)
    except EndpointError as exc:
        raise ConfigError(f"config key '{where}': {exc}") from None
    if ep.pattern != _LINKS[key][0]:  # the key names the receiving (or publishing) side of the link
        raise ConfigError(f"config key '{where}': pattern must be {_LINKS[key][0]}, got {ep.pattern}")
    if ep.binds_beyond_loopback and cfg.transport.curve is None:
        raise ConfigError(f"config key '{where}': binding {ep.address} beyond loopback needs transport.curve keys")
    if ep.binds_beyond_loopback and None in (cfg.transport.curve.server_secret, cfg.transport.curve.client_public):
        raise ConfigError(f"config key '{where}': binding {ep.address} beyond loopback needs transport.curve."
                          "server_secret and transport.curve.client_public (the one client key admitted)")
    if check_network and ep.is_tcp and ep.action == "connect":
        _check_reachable(ep, where)


def _check_reachable(ep: Endpoint, where: str) -> None:
    host, port = ep.host_port
    try:
        socket.create_connection((host, port), timeout=2.0).close()
    except OSError as exc:
        raise ConfigError(f"config key '{where}': {ep.address} is unreachable ({exc.strerror or exc})") from None


def _check_files(cfg: PipelineConfig) -> None:
    for i, src in enumerate(cfg.sources):
        if "://" in src.uri or src.uri.startswith("webcam:"):
            continue
        if not cfg.resolve(src.uri).exists():
            raise ConfigError(f"config key 'sources[{i}].uri': {src.uri} does not exist")
    weights = cfg.stages.detect.weights
    if weights != "default" and not cfg.resolve(weights).is_file():
        raise ConfigError(f"config key 'stages.detect.weights': {weights} does not exist")
    curve = cfg.transport.curve
    if curve is not None:
        for name in ("server_public", "server_secret", "client_public", "client_secret"):
            value = getattr(curve, name)
            if value is not None and not cfg.resolve(value).is_file():
                raise ConfigError(f"config key 'transport.curve.{name}': {value} does not exist")
    view = cfg.stages.view
    for name in ("tls_cert", "tls_key"):
        value = getattr(view, name)
        if view.enabled and value is not None and not cfg.resolve(value).is_file():
            raise ConfigError(f"config key 'stages.view.{name}': {value} does not exist")
