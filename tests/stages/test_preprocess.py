import numpy as np
import pytest
from yolox.data.data_augment import preproc

from stages.preprocess import letterbox


@pytest.mark.parametrize("image_hw, input_hw", [((512, 640), (512, 640)), ((256, 320), (512, 640)),
                                                 ((1080, 1920), (512, 640)), ((300, 200), (256, 320))])
def test_letterbox_equals_yolox_preproc_after_cast(image_hw, input_hw):
    image = np.random.default_rng(1).integers(0, 256, (*image_hw, 3), dtype=np.uint8)
    padded, ratio = letterbox(image, input_hw)
    expected, expected_ratio = preproc(image, input_hw)
    assert padded.dtype == np.uint8 and padded.shape == (*input_hw, 3)
    assert ratio == pytest.approx(expected_ratio)
    np.testing.assert_array_equal(padded.transpose(2, 0, 1).astype(np.float32), expected)


def test_a_sliver_of_an_image_still_letterboxes():
    """A valid but absurd frame (100000 x 1) must not crash the stage: each side keeps at least a pixel."""
    from models.letterbox import letterbox

    padded, ratio = letterbox(np.zeros((100_000, 1, 3), np.uint8), (256, 320))
    assert padded.shape == (256, 320, 3) and ratio > 0
