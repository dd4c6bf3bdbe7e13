"""Issue 4's edit evaluation: its scene choices, its measures, and a run on builtin:tiny."""

import numpy as np
import pytest

from engine.evaluation import evaluate_edits as ev
from engine.world.scene import ATTRIBUTE_NAMES


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
    with pytest.raises(ValueError, match="undefined"):
        ev.iou(np.zeros((4, 4), bool), np.zeros((4, 4), bool))  # not a perfect 1.0


def test_intervals_match_known_answers():
    r = ev.rate_ci([True] * 8 + [False] * 2)  # Wilson interval for 8 of 10
    assert r["rate"] == 0.8 and r["k"] == 8
    assert r["ci95"] == pytest.approx([0.490, 0.943], abs=1e-3)
    assert ev.rate_ci([False] * 40)["ci95"][1] == pytest.approx(0.0876, abs=1e-3)
    m = ev.mean_ci([1.0, 2.0, 3.0, 4.0])
    assert m["mean"] == 2.5 and m["worst"] == 1.0 and m["median"] == 2.5
    assert m["ci95"] == pytest.approx([2.5 - 1.96 * 1.2910 / 2, 2.5 + 1.96 * 1.2910 / 2], 1e-3)


def test_evaluation_seeds_must_avoid_the_recorded_training_ranges(tmp_path):
    from engine.evaluation.seed_ranges import SeedRange, SeedRangeError, check_disjoint
    from engine.models import DEMO_MODEL_DIR
    from engine.training.probe import PROBE_DIR

    check_disjoint(SeedRange(ev.EDIT_SEED, ev.EDIT_SEED + ev.SPAN), DEMO_MODEL_DIR, PROBE_DIR)
    with pytest.raises(SeedRangeError, match="99,999"):
        check_disjoint(SeedRange(50_000, 60_000), DEMO_MODEL_DIR, PROBE_DIR)
    with pytest.raises(SeedRangeError, match="probe.json"):  # the probe saw 0–19,999
        check_disjoint(SeedRange(10_000, 11_000), None, PROBE_DIR)
    with pytest.raises(SeedRangeError, match="records no training seeds"):
        check_disjoint(SeedRange(ev.EDIT_SEED, ev.EDIT_SEED + 1), tmp_path, PROBE_DIR)
    # and the command refuses before loading anything
    assert ev.main(["--seeds", "1000", "--n", "1"]) == 2


def test_localised_new_object_test_passes_true_edits_and_not_smudges():
    """The controls of the inpainting figure on a few calibration scenes: the probe's
    localised test must see the new kind in true edits and never in the old object
    blurred in place, nor in the untouched original."""
    from engine.training.probe import load_probe

    probe = load_probe()
    cases = ev.find_cases(ev.object_kind_case, 12, 650_000)
    truth = ev.new_object_tests(probe, cases, [c.after.image for c in cases])
    assert np.mean(truth["localised"]) >= 0.75
    for sigma in (2, 5, 8):
        smudges = [ev.blurred_control(c.before.image, c.mask, sigma) for c in cases]
        assert not any(ev.new_object_tests(probe, cases, smudges)["localised"])
    assert not any(ev.new_object_tests(probe, cases, [c.before.image for c in cases])["localised"])


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
        inpaint_bundle=load_model("builtin:tiny-inpaint", device="cpu"),
        prompt_styles=ev.PROMPT_STYLES,
    )
    inv = r["inversion"]["all"]
    assert set(ev.INVERSION_METHODS) <= set(inv) and np.isfinite(inv["vae_ceiling_db"]["mean"])
    assert inv["n"] == 2
    assert r["inversion"]["seeds"] == [ev.EDIT_SEED + 300_000, ev.EDIT_SEED + 300_001]
    assert r["diffedit"]["n"] == 2
    for k in ev.DIFFEDIT_SETTINGS:  # the paper's setting and ours, both reported
        assert 0 <= r["diffedit"][k]["iou"]["mean"] <= 1 and r["diffedit"][k]["wall_s"] > 0
    for k in ("repaint", "naive", "inpaint_model", "inpaint_model_repaint"):
        for label, style in ((k, "caption"), (f"{k}, object prompt", "object")):
            # a guarantee of the method, checked even with random weights
            assert r["repaint"][label]["outside_bit_exact_guarantee_held"] is True
            assert r["repaint"][label]["wall_s"] > 0 and r["repaint"][label]["prompt"] == style
    assert r["repaint"]["inpaint_model"]["model"] == "builtin:tiny-inpaint"
    # with RePaint on top names its resamples: unnamed, an inpainting model runs without
    assert r["repaint"]["inpaint_model_repaint"]["options"] == {"jump_n_sample": 3}
    assert 0 < r["repaint"]["seam_ratio_vae_floor"]["mean"] < float("inf")
    assert r["repaint"]["controls"]["original"]["new_object"]["k"] == 0
    assert r["reedit"]["house_wall/masked"]["background_bit_exact_guarantee_held"] is True
    assert "time_of_day/prompt" in r["reedit"]
    text = ev.format_edits(r)
    assert "DiffEdit mask IoU (seeds 1,400," in text and "control blurred_old_object_8px" in text
    assert "inpaint_model, object prompt" in text


def test_the_object_prompt_names_the_new_kind_alone():
    case = ev.find_cases(ev.object_kind_case, 1, 500_000)[0]
    assert ev.inpaint_prompt(case, "caption") == case.after.caption
    new = case.attribute.removeprefix("n_")
    words = {"pine_tree": "a pine tree", "round_tree": "a round tree", "house": "a house"}
    assert ev.inpaint_prompt(case, "object") == words.get(new, "a rock")
    assert ev.inpaint_prompt(case, "object").split()[-1] in case.after.caption
