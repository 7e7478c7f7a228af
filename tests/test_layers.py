"""The folder layout is the architecture (docs/architecture.md): every import in the project's source,
at module level or inside a function, follows the layers, and a process imports only what it needs."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PROJECT = ("pipeline", "stages", "models")
# layer (a path prefix) -> the project modules it may import (prefixes); first match wins
RULES = [
    ("pipeline/__main__.py", ("pipeline", "stages", "models")),  # the CLI: the one place that joins them
    ("pipeline/__init__.py", ()),
    ("pipeline/runtime/", ("pipeline.runtime",)),
    ("pipeline/offline/", ("pipeline.runtime", "pipeline.offline", "models")),
    ("stages/", ("pipeline.runtime", "models", "stages")),
    ("models/", ("models",)),
]
RULES = [(prefix, tuple(allowed)) for prefix, allowed in RULES]
TORCH_FREE = ("pipeline/runtime/", "stages/", "models/__init__.py", "models/letterbox.py", "models/meta.py",
              "models/backends/__init__.py", "models/backends/onnxruntime_backend.py",
              "models/backends/openvino_backend.py", "models/postprocess.py", "models/detector.py", "models/quantize.py")


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement in the file, relative ones resolved."""
    own = _module_name(path, root)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]  # a module or a name in one
    return found


def stage_modules(root: Path) -> set[str]:
    """Modules of stages/ that register a stage (a class with a ``name``, derived from Stage)."""
    found = set()
    for path in (root / "stages").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(getattr(b, "id", "") == "Stage" for b in node.bases) and any(
                    isinstance(s, ast.Assign) and getattr(s.targets[0], "id", "") == "name" for s in node.body):
                found.add(_module_name(path, root))
    return found


def _problem(relative: str, name: str, allowed, importer_is_stage: bool, stages: set[str]) -> str | None:
    if name.split(".")[0] in PROJECT and not name.startswith(allowed):
        return f"its layer may import {', '.join(allowed)}"
    if importer_is_stage and any(name == s or name.startswith(s + ".") for s in stages):
        return "a stage never imports another stage"
    if relative.startswith(TORCH_FREE) and name.split(".")[0] == "torch":
        return "only the detector's modules and offline work import torch"
    return None


def layer_violations(root: Path = REPO_ROOT) -> list[str]:
    stages = stage_modules(root)
    problems = []
    for top in PROJECT:
        for path in sorted((root / top).rglob("*.py")):
            relative = path.relative_to(root).as_posix()
            allowed = next(rule for prefix, rule in RULES if relative.startswith(prefix))
            own = _module_name(path, root)
            for line, name in imports_of(path, root):
                problem = _problem(relative, name, allowed, own in stages, stages - {own})
                if problem:
                    problems.append(f"{relative}:{line} imports {name} ({problem})")
    return problems


def test_every_import_follows_the_layers():
    assert layer_violations() == []


@pytest.mark.parametrize("path, code, problem", [
    ("pipeline/offline/probe.py", "def f():\n    from stages.record import RecordStage\n",
     "pipeline/offline/probe.py:2 imports stages.record.RecordStage (its layer may import pipeline.runtime, pipeline.offline, models)"),
    ("pipeline/runtime/probe.py", "from ..offline import train\n",
     "pipeline/runtime/probe.py:1 imports pipeline.offline.train (its layer may import pipeline.runtime)"),
    ("stages/probe.py", "from stages import record\nclass P(Stage):\n    name = 'p'\n",
     "stages/probe.py:1 imports stages.record (a stage never imports another stage)"),
    ("stages/helper.py", "import torch\n",
     "stages/helper.py:1 imports torch (only the detector's modules and offline work import torch)"),
])
def test_the_checker_finds_each_kind_of_violation(tmp_path, path, code, problem):
    """A test that cannot fail is a defect: each rule, broken once in a small tree."""
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "record.py").write_text("class RecordStage(Stage):\n    name = 'record'\n")
    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / path).write_text(code)
    assert layer_violations(tmp_path) == [problem]


BLOCK = "import sys\nfor name in ('torch', 'torchvision', 'yolox'):\n    sys.modules[name] = None  # unimportable\n"


@pytest.mark.parametrize("code", [
    # an edge host: capture + preprocess, no torch installed
    "from pipeline.runtime.config import load_config\n"
    "cfg = load_config('configs/demo.yaml', check_files=False)\n"
    "import numpy as np\nfrom stages.capture import CaptureStage\nfrom stages.preprocess import PreprocessStage\n"
    "stage = PreprocessStage(cfg)\n"
    "from pipeline.runtime.messages import FrameMessage\n"
    "out = stage.process(FrameMessage('s', 0, 0.0, 0.0, {'image': np.zeros((512, 640, 3), np.uint8)}))[0]\n"
    "assert out.buffers['input'].shape == (512, 640, 3)\n",
    # the supervisor and the preflight of a run
    "from pipeline.runtime.config import load_config\nimport pipeline.runtime.supervisor\n"
    "cfg = load_config('configs/demo.yaml', check_files=False)\n"
    "[cfg.stage_class(name).preflight(cfg) for name in cfg.run_stages]\n",
])
def test_capture_preprocess_and_the_supervisor_run_without_torch(code):
    result = subprocess.run([sys.executable, "-c", BLOCK + code], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]


def test_loading_a_config_imports_no_tracker_or_annotator():
    """Every process loads the config (and so the modules of its stages): the heavy libraries of one
    stage stay out of the others."""
    code = ("import sys\nfrom pipeline.runtime.config import load_config\n"
            "load_config('configs/demo.yaml', check_files=False)\n"
            "print(sorted(m for m in ('torch', 'supervision', 'trackers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr[-3000:]
