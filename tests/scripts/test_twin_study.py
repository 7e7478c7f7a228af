"""scripts/twin_study.py: both arms from one checkpoint, every epoch scored, a paired summary; resumable."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from models import build_model, save_checkpoint
from pipeline.offline.data import synthetic

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("twin_study", REPO / "scripts" / "twin_study.py")
twin_study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(twin_study)


@pytest.mark.slow
def test_study_trains_both_arms_scores_each_epoch_and_pairs_them(tmp_path):
    root = tmp_path / "data"
    names = synthetic.make_dataset(root, frames=8)
    manifest = root / "splits.json"
    manifest.write_text(json.dumps({"splits": {"train": names, "val": names, "test": names}}))
    torch.manual_seed(0)
    init = save_checkpoint(tmp_path / "base.pt", build_model("yolox-nano", 4).eval(), name="yolox-nano",
                           input_size=(128, 160), class_names=["drone", "bird", "airplane", "helicopter"])
    argv = ["--out", str(tmp_path / "study"), "--init", str(init), "--seeds", "0,1", "--epochs", "2",
            "--epoch-steps", "1", "--jobs", "2", "--score-epochs", "2",
            "--train-args", f"--data {root} --splits {manifest} --stride 4 --batch 2 --crop 64 --input-size 128x160 "
                            "--val-per-clip 1 --warmup-steps 1 --threads 1 --workers 1 --no-progress",
            "--eval-args", f"--data {root} --split all --stride 4 --backend torch --tiling off"]
    assert twin_study.main(argv) == 0
    summary = json.loads((tmp_path / "study" / "summary.json").read_text())
    assert {(r["model"], r["seed"], r["step"]) for r in summary["rows"]} == {
        (model, seed, step) for model in ("yolox-nano", "yolox-nano-gssam-sigresid-p1")
        for seed in (0, 1) for step in (2,)}  # --score-epochs 2: the first epoch is not scored
    text = (tmp_path / "study" / "summary.md").read_text()
    assert "| 2 | mean (" in text and "| 2 | 1 |" in text and "| 1 | 1 |" not in text
    twin_rows = [r for r in summary["rows"] if r["model"] == "yolox-nano-gssam-sigresid-p1"]
    assert all(set(r["gssam"]) >= {"backbone.backbone.stem.attend_output.gate"} for r in twin_rows)
    assert "- seed 1: stem g " in text  # the learned gates, read from the scored weights
    assert twin_study.main(["--out", str(tmp_path / "none"), "--report"]) == 2

    study = tmp_path / "study"
    files = (*study.glob("*/log.json"), *study.glob("*/*/report.json"), study / "test-start" / "report.json")
    kept = {path: path.stat().st_mtime_ns for path in files}
    assert len(kept) == 4 + 4 + 1  # four runs, one scored epoch each, the start
    assert twin_study.main(argv) == 0  # a second call trains and scores nothing again
    assert {path: path.stat().st_mtime_ns for path in kept} == kept
    changed = list(argv)
    changed[changed.index("--epoch-steps") + 1] = "2"
    with pytest.raises(SystemExit, match="was trained with another command"):
        twin_study.main(changed)  # a study never mixes in runs of another recipe


def test_from_scratch_protocol_trains_without_init_and_says_so(tmp_path):
    args = twin_study.parse_args(["--out", str(tmp_path), "--init", "scratch", "--seeds", "0"])
    assert args.init is None
    rows = [{"model": model, "seed": 0, "step": 600, "val_map50_95": 0.1, "test_map50_95": value,
             "test_ap_tiny": 0.1, "test_ap_small": 0.1, "test_map50": 0.3}
            for model, value in ((args.baseline, 0.12), (args.twin, 0.13))]
    text = twin_study.summarise(rows, None, args)
    assert text.startswith("Start: random weights (from scratch)") and "| 600 | 0 | +0.0 | +1.0 |" in text
