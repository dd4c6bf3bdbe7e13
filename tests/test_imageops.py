"""Pixel-space helpers at the engine boundary."""

import numpy as np

from engine import imageops


def test_feather_stays_inside_the_mask_and_ramps_up_from_its_border():
    mask = np.zeros((40, 60), np.float32)
    mask[10:30, 0:40] = 1  # touches the image's left border
    soft = imageops.feather(mask, 6)
    assert np.all(soft[mask == 0] == 0)  # compositing keeps every unmasked pixel
    assert soft[20, 20] == 1  # far inside: the edit at full strength
    row = soft[20, 25:40]  # towards the right border of the mask
    assert np.all(np.diff(row) <= 1e-6) and row[-1] < 0.35 and row[0] == 1
    assert soft[20, 0] == 1  # the image border is not a mask border
    assert np.array_equal(imageops.feather(mask, 0), mask)


def test_composite_keeps_unmasked_pixels_bit_exact():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    mask = np.zeros((16, 16), np.float32)
    mask[4:12, 4:12] = 1
    out = imageops.composite(a, b, imageops.feather(mask, 2))
    assert np.array_equal(out[mask == 0], a[mask == 0])
    assert np.array_equal(out[7:9, 7:9], b[7:9, 7:9])
