"""Issue 4's edit evaluation: its scene choices, its measures, and a run on builtin:tiny."""

import numpy as np
import pytest

from engine.training import evaluate_edits as ev
from engine.training.world import ATTRIBUTE_NAMES


def test_seam_ratio_sees_a_pasted_patch_and_not_a_smooth_image():
    y, x = np.mgrid[0:64, 0:64]
    smooth = np.stack([x * 3, y * 3, (x + y) * 2], -1).astype(np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    assert ev.seam_ratio(smooth, mask) == pytest.approx(1.0, abs=0.1)
    pasted = smooth.copy()
    pasted[mask] = (255, 0, 0)
    assert ev.seam_ratio(pasted, mask) > 10


def test_iou_and_masked_psnr():
    a = np.zeros((8, 8), bool)
    a[:4] = True
    b = np.zeros((8, 8), bool)
    b[2:6] = True
    assert ev.iou(a, b) == pytest.approx(16 / 48)
    img = np.zeros((8, 8, 3), np.uint8)
    other = img.copy()
    other[a] = 255
    assert ev.psnr(img, other, ~a) == float("inf")
    assert ev.psnr(img, other) == pytest.approx(10 * np.log10(2))


EXPECTED_CHANGES = {  # attributes each kind of edit may change
    "object_kind_case": {f"n_{k}" for k in ("pine_tree", "round_tree", "house", "rock")}
    | {"house_wall", "house_roof"},
    "wall_colour_case": {"house_wall"},
    "time_of_day_case": {"time_of_day", "has_sun", "has_moon"},
}


@pytest.mark.parametrize("make", [ev.object_kind_case, ev.wall_colour_case, ev.time_of_day_case])
def test_cases_change_one_thing_with_a_known_region(make):
    spans = 2 if make is ev.time_of_day_case else 1
    for case in ev.find_cases(make, 4, ev.EDIT_SEED, max_spans=spans):
        assert 1 <= ev.changed_spans(case.before.caption, case.after.caption) <= spans
        k = ATTRIBUTE_NAMES.index(case.attribute)
        assert case.after.attribute_vector[k] != case.before.attribute_vector[k]
        changed = {
            name
            for name, a, b in zip(
                ATTRIBUTE_NAMES, case.before.attribute_vector, case.after.attribute_vector
            )
            if a != b
        }
        assert case.attribute in changed <= EXPECTED_CHANGES[make.__name__]
        assert case.region.sum() >= ev.MIN_OBJECT_PIXELS
        if case.attribute != "time_of_day":  # local edits: most of the image is untouched
            assert case.region.mean() < 0.2


@pytest.mark.slow
def test_edit_metrics_run_on_tiny():
    from engine.models import load_model
    from engine.training.probe import load_probe

    r = ev.edit_metrics(
        load_model("builtin:tiny", device="cpu"),
        load_probe(),
        2,
        log=lambda m: None,
        steps=3,
        repaint_steps=6,
    )
    inv = r["inversion"]
    assert set(ev.INVERSION_METHODS) <= set(inv) and np.isfinite(inv["vae_ceiling_db"])
    assert 0 <= r["diffedit"]["mean_iou"] <= 1 and r["diffedit"]["n"] == 2
    for k in ("repaint", "naive"):
        assert r["repaint"][k]["outside_bit_exact"] == 1.0  # even with random weights
    assert 0 < r["repaint"]["seam_ratio_vae_floor"] < float("inf")
    assert 0 <= r["repaint"]["probe_on_true_edit"] <= 1
    assert r["reedit"]["house_wall/masked"]["background_psnr_db"] == float("inf")
    assert "time_of_day/prompt" in r["reedit"]
    assert "DiffEdit mask IoU" in ev.format_edits(r)
