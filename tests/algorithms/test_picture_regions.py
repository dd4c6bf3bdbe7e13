"""The picture's regions (graph-based segmentation) and DiffEdit's mask snapped to them."""

from __future__ import annotations

import numpy as np

from engine import imageops
from engine.jobs.edits import mask_from_map
from engine.segments import felzenszwalb, picture_regions, snap_to_regions


def _scene(h=96, w=96, seed=0):
    """A grassy field (noisy green) with a flat blue square on it, like a demo-world wall."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.float32)
    img[:] = (60, 140, 60)
    img += rng.normal(0, 6, img.shape)  # texture the regions must not split on
    square = np.zeros((h, w), bool)
    square[40:64, 30:54] = True
    img[square] = (40, 60, 200)
    return img.clip(0, 255).astype(np.uint8), square


def dilate(mask, px):
    return imageops.dilate(mask.astype(np.float32), px) > 0


def _within_a_pixel_of(mask, square):
    """All of the square, and of the grass at most the one-pixel rim that the smoothing
    before segmenting blends into the square's edge."""
    assert mask[square].all() and not (mask & ~dilate(square, 1)).any()


def test_regions_do_not_cross_an_objects_edge_nor_split_on_texture():
    img, square = _scene()
    labels = felzenszwalb(img, min_size=16)
    for r in np.unique(labels):
        inside = square[labels == r].mean()
        assert inside < 0.05 or inside > 0.95  # (the smoothed edge is a strip of its own)
    # the square's interior is one region, and the grass is a few, not its grain
    assert len(np.unique(labels[44:60, 34:50])) == 1
    assert len(np.unique(labels)) <= 6


def test_snapping_takes_a_mostly_covered_region_whole_and_drops_a_grazed_one():
    img, square = _scene()
    labels = felzenszwalb(img, min_size=16)
    coarse = np.zeros(square.shape, np.float32)
    coarse[36:56, 26:50] = 1  # most of the square, and a rim of grass around it
    snapped = snap_to_regions(labels, coarse, 0.3)
    _within_a_pixel_of(snapped, square)
    # a mask over under 30 % of the square's inside takes none of it
    edge = np.zeros_like(coarse)
    edge[44:60, 36:40] = 1
    assert not snap_to_regions(labels, edge, 0.3).any()


def test_large_pictures_are_segmented_smaller_and_labelled_at_full_size():
    img, square = _scene(600, 400)
    labels = picture_regions(img)
    assert labels.shape == (600, 400)
    # the shrunken segmentation still holds the square in one region of its own
    core = labels[44:60, 34:50]
    assert len(np.unique(core)) == 1
    assert (labels == core[0, 0]).sum() < 2 * square.sum()


def test_mask_from_map_with_segments_follows_the_object_not_the_blurry_map():
    img, square = _scene()
    # a latent-resolution map (f = 8) that spills a cell beyond the square on every side
    coarse = np.zeros((12, 12), np.float32)
    coarse[4:9, 3:8] = 1
    out = mask_from_map(coarse, img, 8, 0.5, "fixed", "segments")
    assert out.dtype == np.float32 and set(np.unique(out)) <= {0.0, 1.0}
    _within_a_pixel_of(out > 0.5, square)
    guided = mask_from_map(coarse, img, 8, 0.5, "fixed", "guided") > 0.5
    assert (guided & ~dilate(square, 4)).any()  # the guided mask alone keeps grass


def test_a_long_region_is_taken_only_within_a_latent_cell_of_the_map():
    # a horizon-like bar across the picture; the map covers its left 40 %
    img, _ = _scene()
    img[40:44] = (230, 200, 120)
    coarse = np.zeros((12, 12), np.float32)
    coarse[5, :5] = 1
    out = mask_from_map(coarse, img, 8, 0.5, "fixed", "segments") > 0.5
    assert out[41:43, 4:36].all()  # the bar, where the map is ...
    assert not out[:, 56:].any()  # ... and not a cell beyond it


def test_a_find_no_region_is_covered_enough_by_is_kept_as_found():
    # a small find inside one large flat region: snapping would drop it, so it stays as is
    img = np.full((96, 96, 3), (90, 150, 220), np.uint8)
    coarse = np.zeros((12, 12), np.float32)
    coarse[4:8, 4:8] = 1  # 11 % of the picture
    out = mask_from_map(coarse, img, 8, 0.5, "fixed", "segments")
    np.testing.assert_array_equal(out, mask_from_map(coarse, img, 8, 0.5, "fixed", "guided"))
    assert out.any()
