"""pipeline/runtime/registry.py and the stage declarations: the config, the links and the supervisor
follow from the stages a config names, so a stage is one file plus one YAML line."""
import json
import subprocess
import sys

import pytest
import yaml

from pipeline.runtime import links
from pipeline.runtime.config import ConfigError, config_from_dict
from pipeline.runtime.registry import stage_class
from pipeline.runtime.stage import Stage
from tests.conftest import REPO_ROOT

CLIP_FRAMES = 30  # tests.conftest.synthetic_clip
EXAMPLE = "tests.pipeline.runtime.example_stage:frame_log"


def _config(tmp_path, **keys):
    return config_from_dict({"sources": [{"id": "a", "uri": "a.mp4"}], "output_dir": str(tmp_path), **keys},
                            check_files=False)


def test_a_stage_is_found_by_name_in_its_module():
    assert stage_class("detect").__module__ == "stages.detect"
    assert stage_class(EXAMPLE).__name__ == "FrameLogStage"


@pytest.mark.parametrize("ref, message", [
    ("nosuchstage", "unknown stage 'nosuchstage': no module stages.nosuchstage"),
    ("tests.pipeline.runtime.example_stage:other", "registers no stage named 'other'"),
    ("not a name", "a stage is <name> or <package.module>:<name>"),
])
def test_an_unknown_stage_is_a_one_line_config_error(tmp_path, ref, message):
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, frame_path=["capture", ref, "record"])


def test_the_frame_path_starts_at_a_source_and_consumers_are_consumers(tmp_path):
    with pytest.raises(ConfigError, match=r"'frame_path\[0\]': 'detect' is a filter stage"):
        _config(tmp_path, frame_path=["detect", "record"])
    with pytest.raises(ConfigError, match=r"'frame_path\[2\]': 'view' is a consumer stage"):
        _config(tmp_path, frame_path=["capture", "detect", "view"], consumers=[])
    with pytest.raises(ConfigError, match=r"'consumers\[0\]': 'track' is not a consumer"):
        _config(tmp_path, consumers=["track"])
    with pytest.raises(ConfigError, match="a stage may appear once"):
        _config(tmp_path, frame_path=["capture", "detect", "detect"])


def test_an_inserted_stage_gets_its_section_links_and_neighbours(tmp_path):
    cfg = _config(tmp_path, frame_path=["capture", "preprocess", "detect", "track", EXAMPLE, "record"],
                  stages={"frame_log": {"every": 2}})
    assert cfg.stages.frame_log.every == 2
    assert cfg.downstream("track") == "frame_log" and cfg.downstream("frame_log") == "record"
    assert cfg.run_stages == ["capture", "preprocess", "detect", "track", "frame_log", "record"]
    assert "frame_log_in" in cfg.endpoints
    with pytest.raises(ConfigError, match="'stages.frame_log.every' must be >= 1"):
        _config(tmp_path, frame_path=["capture", EXAMPLE, "record"], stages={"frame_log": {"every": 0}})
    with pytest.raises(ConfigError, match="unknown config key 'stages.frame_log'"):
        _config(tmp_path, stages={"frame_log": {}})  # not in this frame path


def test_links_keep_their_ports_when_a_stage_is_added(tmp_path):
    transport = {"kind": "tcp", "base_port": 6000}
    plain = _config(tmp_path, transport=transport)
    extended = _config(tmp_path, transport=transport,
                       frame_path=["capture", "preprocess", "detect", "track", EXAMPLE, "record"])
    assert {k: v for k, v in extended.endpoints.items() if k in plain.endpoints} == plain.endpoints
    assert plain.endpoints["detect_in"] == "pull+bind:tcp://127.0.0.1:6001"  # the offsets users already have
    assert plain.endpoints["events"] == "pub+bind:tcp://127.0.0.1:6005"
    offset = links.derived_offset("frame_log_in")
    assert extended.endpoints["frame_log_in"] == f"pull+bind:tcp://127.0.0.1:{6000 + offset}"


def test_two_links_on_one_port_offset_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(stage_class(EXAMPLE), "port_offset", 1)  # detect_in's
    with pytest.raises(ConfigError, match="share tcp port offset 1"):
        _config(tmp_path, frame_path=["capture", "preprocess", "detect", EXAMPLE, "record"])


def test_a_stage_can_be_left_out_of_the_frame_path(tmp_path):
    cfg = _config(tmp_path, frame_path=["capture", "detect", "record"])
    assert cfg.downstream("capture") == "detect" and "preprocess_in" not in cfg.endpoints
    assert "preprocess" not in cfg.stages and "track" not in cfg.stages


def test_a_consumer_needs_the_links_it_follows(tmp_path):
    with pytest.raises(ConfigError, match="stage 'view' follows link 'events', which no stage of this config binds"):
        _config(tmp_path, frame_path=["capture", "detect", "record"], stages={"view": {"enabled": True}})
    assert _config(tmp_path, frame_path=["capture", "detect", "record"]).stages.view.enabled is False  # not started


def test_two_stage_classes_may_not_share_a_name():
    with pytest.raises(ValueError, match="two stages are named 'detect'"):
        type("Impostor", (Stage,), {"name": "detect"})


@pytest.mark.slow
def test_a_stage_added_from_a_test_module_runs_end_to_end_in_a_replay(tmp_path, synthetic_clip, random_weights):
    """No project file edited: the stage's module and one line of frame_path."""
    cfg = {"sources": [{"id": "cam0", "uri": str(synthetic_clip.video)}], "output_dir": str(tmp_path / "out"),
           "frame_path": ["capture", "preprocess", "detect", "track", EXAMPLE, "record"],
           "stages": {"detect": {"weights": str(random_weights), "backend": "torch"}, "record": {"video": False}}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = subprocess.run([sys.executable, "-m", "pipeline", "run", str(path), "--no-progress"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    logged = (tmp_path / "out" / "cam0" / "frame_log.txt").read_text().splitlines()
    recorded = (tmp_path / "out" / "cam0" / "tracks.jsonl").read_text().splitlines()
    assert [int(line.split()[0]) for line in logged] == list(range(CLIP_FRAMES))
    assert len(recorded) == CLIP_FRAMES  # it passed every frame on, in order, to the recorder
    final = json.loads((tmp_path / "out" / "status.json").read_text())
    assert final["frame_log"]["frames_logged"] == CLIP_FRAMES and final["frame_log"]["exit_code"] == 0
