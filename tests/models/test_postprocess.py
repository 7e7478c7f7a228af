"""models/postprocess.py: the NumPy decode and NMS equal the yolox head's decode_outputs and
yolox.utils.postprocess on the shipped model's outputs for real frames."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from yolox.utils import postprocess as yolox_postprocess

from models import DEFAULT_WEIGHTS, Detector, load_checkpoint
from models.postprocess import STRIDES, anchor_grid, decode, select
from pipeline.offline.data.synthetic import render_clip


@pytest.fixture(scope="module")
def shipped():
    detector = Detector(DEFAULT_WEIGHTS, backend="torch")
    frames = [frame for frame, _ in render_clip(seed=3, frames=3, size=(640, 512))]
    frames += [frame for frame, _ in render_clip(seed=4, frames=2, size=(640, 512), modality="IR")]
    batch = np.stack([detector.preprocess(frame)[0] for frame in frames])
    return detector, detector.engine.run(batch)


def test_decode_equals_the_yolox_heads_own_decoder(shipped):
    detector, raw = shipped
    model, _ = load_checkpoint(DEFAULT_WEIGHTS)
    head = model.head
    head.hw = [(detector.input_size[0] // s, detector.input_size[1] // s) for s in head.strides]
    expected = head.decode_outputs(torch.from_numpy(raw.copy()), dtype=torch.float32).numpy()
    assert tuple(head.strides) == STRIDES
    np.testing.assert_allclose(decode(raw, detector.input_size), expected, rtol=1e-5, atol=1e-3)


def test_anchor_grid_is_row_major_per_stride():
    cells, scales = anchor_grid((64, 96))
    assert len(cells) == (8 * 12) + (4 * 6) + (2 * 3)
    assert cells[:13].tolist()[12] == [0, 1]  # the 13th stride-8 cell starts row 1
    assert scales[96, 0] == 16 and scales[-1, 0] == 32


def test_decode_refuses_outputs_of_another_input_size(shipped):
    detector, raw = shipped
    with pytest.raises(ValueError, match="anchors"):
        decode(raw, (256, 256))


@pytest.mark.parametrize("conf, agnostic", [(0.001, False), (0.001, True), (0.25, False), (0.25, True)])
def test_select_equals_yolox_postprocess(shipped, conf, agnostic):
    detector, raw = shipped
    decoded = decode(raw, detector.input_size)
    expected = yolox_postprocess(torch.from_numpy(decoded.copy()), 3, conf, 0.65, class_agnostic=agnostic)
    found = select(decoded, 3, conf, 0.65, agnostic)
    assert any(e is not None for e in expected)
    for want, got in zip(expected, found):
        if want is None:
            assert got is None
            continue
        want = want.numpy()
        want = want[np.argsort(-want[:, 4] * want[:, 5], kind="stable")]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-3)


def test_select_gives_none_where_nothing_is_confident():
    decoded = np.zeros((2, 10, 8), np.float32)
    assert select(decoded, 3, 0.25, 0.45) == [None, None]
