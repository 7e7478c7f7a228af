"""Bad configs stop the run at start with a one-line error naming the key, exit code 2."""
import re
import subprocess
import sys
import textwrap

import pytest

from pipeline.runtime.config import ConfigError, load_config
from tests.conftest import REPO_ROOT

GOOD = """
sources:
  - {id: cam0, uri: clip.mp4}
output_dir: out
stages:
  detect: {weights: w.pt}
"""


def _write(tmp_path, text):
    (tmp_path / "clip.mp4").write_bytes(b"")
    (tmp_path / "w.pt").write_bytes(b"")
    path = tmp_path / "cfg.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_good_config_loads_with_defaults_and_resolved_endpoints(tmp_path):
    cfg = load_config(_write(tmp_path, GOOD))
    assert cfg.mode == "replay" and cfg.stream_ids == ["cam0"]
    assert cfg.endpoints["detect_in"].startswith("pull+bind:ipc://")
    assert cfg.resolve(cfg.output_dir) == tmp_path / "out"


def test_source_zones_load_in_source_pixels_and_default_to_none(tmp_path):
    cfg = load_config(_write(tmp_path, GOOD + textwrap.dedent("""
        sources:
          - {id: cam0, uri: clip.mp4}
          - id: cam1
            uri: clip.mp4
            zones:
              - {kind: ignore, polygon: [[0, 0], [640, 0], [640, 120], [0, 120]], name: treetops}
              - {kind: require, polygon: [[100, 200], [500, 200], [300, 500]]}
        """)))
    assert cfg.sources[0].zones == []
    ignore, require = cfg.sources[1].zones
    assert (ignore.kind, ignore.name, ignore.polygon[2]) == ("ignore", "treetops", [640.0, 120.0])
    assert (require.kind, require.name, len(require.polygon)) == ("require", None, 3)


@pytest.mark.parametrize("text, message", [
    (GOOD + "colour: red\n", "unknown config key 'colour'"),
    (GOOD.replace("{weights: w.pt}", "{weights: w.pt, batchsize: 4}"), "unknown config key 'stages.detect.batchsize'"),
    (GOOD.replace("{weights: w.pt}", "{weights: w.pt, batch_size: four}"), "'stages.detect.batch_size' must be int"),
    (GOOD.replace("{weights: w.pt}", "{weights: w.pt, backend: tensorrt}"), "'stages.detect.backend' must be one of"),
    (GOOD.replace("{weights: w.pt}", "{weights: w.pt, workers: 0}"), "'stages.detect.workers' must be >= 1"),
    (GOOD.replace("{weights: w.pt}", "{weights: w.pt, workers: 64}"), "'stages.detect.workers' must be <= 16"),
    (GOOD.replace("{weights: w.pt}", "{weights: w.pt, backend: auto, fp16: true}"), "fp16 needs a cuda device"),
    (GOOD + "mode: realtime\n", "'mode' must be one of"),
    (GOOD.replace("clip.mp4", "missing.mp4"), "'sources[0].uri': missing.mp4 does not exist"),
    (GOOD.replace("w.pt}", "nowhere.pt}"), "'stages.detect.weights': nowhere.pt does not exist"),
    (GOOD + "sources: []\n", "must list at least one source"),
    (GOOD + "sources: [{uri: clip.mp4}]\n", "missing required config key 'sources[0].id'"),
    (GOOD + "sources: [{id: a, uri: clip.mp4}, {id: a, uri: clip.mp4}]\n", "stream ids must be unique"),
    (GOOD + "endpoints: {detect_in: 'pull+bind:tcp://0.0.0.0:5551'}\n", "beyond loopback needs transport.curve"),
    (GOOD + "endpoints: {detect_in: 'pull+bind:tcp://0.0.0.0:5551'}\ntransport: {curve: {server_secret: s}}\n",
     "needs transport.curve.server_secret and transport.curve.client_public"),
    (GOOD.replace("{weights: w.pt}", "{weights: w.pt, fp16: true}"), "'stages.detect.fp16': fp16 needs a cuda device"),
    (GOOD.replace("{weights: w.pt}", "{weights: w.pt, device: cuda}"), "the onnx backend runs on cpu only"),
    (GOOD + "stages: {preprocess: {input_size: [512]}}\n", "'stages.preprocess.input_size' must be [height, width]"),
    (GOOD + "stages: {preprocess: {input_size: [500, 640]}}\n", "positive multiples of 32, got [500, 640]"),
    (GOOD + "sources: [{id: a, uri: clip.mp4, fps: 0}]\n", "'sources[0].fps' must be > 0"),
    (GOOD + "sources: [{id: a, uri: 'webcam:/dev/video0'}]\n", "a webcam is webcam:<index>"),
    (GOOD + "endpoints: {detect_in: 'pull+bind:udp://x'}\n", "'endpoints.detect_in'"),
    (GOOD + "endpoints: {detect_in: 'push+bind:ipc:///tmp/x'}\n", "pattern must be pull"),
    (GOOD + "transport: {remote_wait_s: -1}\n", "'transport.remote_wait_s' must be >= 0"),
    (GOOD + "stages: {view: {enabled: true, host: 0.0.0.0}}\n", "'stages.view.token' is required"),
    (GOOD + "stages: {view: {enabled: true, tls_cert: view.crt}}\n",
     "'stages.view.tls_cert' and 'stages.view.tls_key' go together"),
    (GOOD + "stages: {view: {port: 70000}}\n", "'stages.view.port' must be <= 65535, got 70000"),
    (GOOD + "stages: {view: {jpeg_quality: 0}}\n", "'stages.view.jpeg_quality' must be >= 1, got 0"),
    (GOOD + "supervisor: {prometheus_port: 99999}\n", "'supervisor.prometheus_port' must be <= 65535"),
    (GOOD + "supervisor: {max_restarts: -1}\n", "'supervisor.max_restarts' must be >= 0"),
    (GOOD + "stages: {record: {segment_seconds: .nan}}\n", "'stages.record.segment_seconds' must be a finite number"),
    (GOOD + "sources: [{id: a, uri: clip.mp4, read_timeout_s: -1}]\n", "'sources[0].read_timeout_s' must be > 0"),
    (GOOD + "stages: {track: {minimum_iou_threshold: 1.5}}\n", "'stages.track.minimum_iou_threshold' must be <= 1.0"),
    (GOOD + "frame_path: [capture, nosuch, record]\n", "'frame_path[1]': unknown stage 'nosuch'"),
    (GOOD + "run_stages: [capture, tracker]\n", "'run_stages[1]' must be one of"),
    (GOOD + "sources: [{id: ../../x, uri: clip.mp4}]\n", "'sources[0].id': a stream id names its output folder"),
    (GOOD + "sources: [{id: /tmp/x, uri: clip.mp4}]\n", "not . or .., got '/tmp/x'"),
    (GOOD + "sources: [{id: '..', uri: clip.mp4}]\n", "not . or .., got '..'"),
    (GOOD + "transport: {max_message_mb: 0}\n", "'transport.max_message_mb' must be > 0"),
    (GOOD + "sources: [{id: a, uri: clip.mp4, zones: [{kind: ignore, polygon: [[0, 0], [9, 0], [9, 9]]},"
            " {kind: ignore, polygon: [[0, 0], [10, 0]]}]}]\n",
     "config key 'sources[0].zones[1].polygon' needs at least 3 points [x, y], got [[0.0, 0.0], [10.0, 0.0]]"),
    (GOOD + "sources: [{id: a, uri: clip.mp4, zones: [{kind: ignore, polygon: [[0, 0], [10, 0], [5, 5, 1]]}]}]\n",
     "config key 'sources[0].zones[0].polygon[2]' must be one point [x, y], got [5.0, 5.0, 1.0]"),
    (GOOD + "sources: [{id: a, uri: clip.mp4, zones: [{kind: ignore, polygon: [[0, 0], [10, 0], [5]]}]}]\n",
     "config key 'sources[0].zones[0].polygon[2]' must be one point [x, y], got [5.0]"),
    (GOOD + "sources: [{id: a, uri: clip.mp4, zones: [{kind: ignore, polygon: [[0, 0], [10, -1], [5, 5]]}]}]\n",
     "config key 'sources[0].zones[0].polygon[1][1]' must be >= 0, got -1.0"),
    (GOOD + "sources: [{id: a, uri: clip.mp4, zones: [{kind: ignore, polygon: [[0, 0], [10, .inf], [5, 5]]}]}]\n",
     "config key 'sources[0].zones[0].polygon[1][1]' must be a finite number, got inf"),
    (GOOD + "sources: [{id: a, uri: clip.mp4, zones: [{kind: ignore, polygon: [[0, 0], [x, 1], [5, 5]]}]}]\n",
     "config key 'sources[0].zones[0].polygon[1][0]' must be float, got str 'x'"),
    (GOOD + "sources: [{id: a, uri: clip.mp4, zones: [{kind: ignore, polygon: [[0, 0], [5, 5], [10, 10]]}]}]\n",
     "config key 'sources[0].zones[0].polygon' encloses no area, got [[0.0, 0.0], [5.0, 5.0], [10.0, 10.0]]"),
    (GOOD + "sources: [{id: a, uri: clip.mp4, zones: [{kind: ignore, polygon: [[0, 0], [9, 9], [9, 0], [0, 9]]}]}]\n",
     "config key 'sources[0].zones[0].polygon' encloses no area"),  # a figure eight whose halves cancel
    (GOOD + "sources: [{id: a, uri: clip.mp4, zones: [{kind: mask, polygon: [[0, 0], [9, 0], [9, 9]]}]}]\n",
     "config key 'sources[0].zones[0].kind' must be one of ['ignore', 'require'], got 'mask'"),
    (GOOD + "sources: [{id: a, uri: clip.mp4, zones: [{polygon: [[0, 0], [9, 0], [9, 9]]}]}]\n",
     "missing required config key 'sources[0].zones[0].kind'"),
    (GOOD + "sources: [{id: a, uri: clip.mp4, zones: [{kind: ignore}]}]\n",
     "missing required config key 'sources[0].zones[0].polygon'"),
    (GOOD + "sources: [{id: a, uri: clip.mp4, zones: {kind: ignore}}]\n", "config key 'sources[0].zones' must be a list"),
    ("sources: [oops\n", "malformed YAML at line"),
    ("- just\n- a list\n", "top level must be a mapping"),
])
def test_bad_config_gives_one_line_error(tmp_path, text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(_write(tmp_path, text))


def test_cli_exits_2_with_one_line_naming_the_key(tmp_path):
    path = _write(tmp_path, GOOD + "colour: red\n")
    result = subprocess.run([sys.executable, "-m", "pipeline", "run", str(path)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: unknown config key 'colour' (allowed: base_dir, consumers, "
                                                  "endpoints, frame_path, mode, output_dir, run_stages, sources, stages, "
                                                  "supervisor, transport)"]


def test_a_config_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_bytes(b"sources: [{id: \xff\xfe, uri: x}]\n")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(path)


def test_a_bad_view_port_stops_the_run_before_any_stage_starts(tmp_path):
    path = _write(tmp_path, GOOD + "stages: {detect: {weights: w.pt}, view: {enabled: true, port: 70000}}\n")
    result = subprocess.run([sys.executable, "-m", "pipeline", "run", str(path)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and not (tmp_path / "out").exists()  # nothing started, nothing written
    assert result.stderr.strip().splitlines() == [
        "error: config key 'stages.view.port' must be <= 65535, got 70000"]


def test_cli_missing_config_file(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pipeline", "run", str(tmp_path / "nope.yaml")], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "does not exist" in result.stderr and len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("path", sorted(p.relative_to(REPO_ROOT) for p in (REPO_ROOT / "configs").rglob("*.yaml")),
                         ids=str)
def test_every_shipped_config_loads(path):
    """What README points operators at must load (files they name are checked where they run)."""
    cfg = load_config(REPO_ROOT / path, check_files=False)
    assert cfg.sources
