"""Shared fixtures. synthetic_* fixtures come from pipeline.synthetic (owned with the dataset code)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def synthetic_dataset_root(tmp_path_factory):
    """A tiny dataset in the real layout: V_DRONE_900, V_BIRD_901 (640x512), IR_DRONE_902 (320x256), 30 frames."""
    from pipeline import synthetic

    root = tmp_path_factory.mktemp("synthetic_dataset")
    synthetic.make_dataset(root, frames=30)
    return root


@pytest.fixture(scope="session")
def synthetic_clip(tmp_path_factory):
    """One 320x256 visible clip of 30 frames: ClipPaths(video, coco, mot_gt)."""
    from pipeline import synthetic

    return synthetic.make_clip(tmp_path_factory.mktemp("synthetic_clip"), seed=7, frames=30, size=(320, 256))
