"""DiffEdit's mask levers: Otsu's cut, the guided upsampling, and the job's options."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.algorithms.common import run_to_end
from engine.algorithms.diffedit import guided_filter, otsu_threshold
from engine.denoiser import Denoiser
from engine.jobs import JOB_RUNNERS, JobContext
from engine.jobs.edits import mask_from_map
from engine.types import EditRequest


def test_otsu_splits_two_clusters_between_them():
    rng = np.random.default_rng(0)
    low, high = rng.normal(0.15, 0.03, 900), rng.normal(0.7, 0.05, 100)
    values = np.concatenate([low, high])
    cut = otsu_threshold(values.clip(0, 1))
    assert (low > cut).mean() < 0.02 and (high > cut).all()
    # it moves with the map, where a fixed 0.5 would not
    assert otsu_threshold((values * 0.5).clip(0, 1)) < cut


def test_guided_filter_moves_a_blurry_edge_onto_the_guides_edge():
    guide = np.zeros((32, 32), np.float32)
    guide[:, 20:] = 1.0  # the picture's edge at column 20
    blurry = np.clip((np.arange(32, dtype=np.float32) - 12) / 10, 0, 1)[None].repeat(32, 0)
    out = guided_filter(guide, blurry, 4, 1e-3)
    # the filtered map jumps where the guide does, not along the blurry ramp
    assert out[:, 19].mean() < 0.55 < out[:, 20].mean()
    assert out[:, 21].mean() - out[:, 18].mean() > blurry[:, 21].mean() - blurry[:, 18].mean()
    flat = guided_filter(np.full_like(guide, 0.5), blurry, 4, 1e-3)  # no edges: a smoothing
    assert np.abs(flat - blurry).max() < 0.2


def test_a_colour_guide_keeps_an_edge_that_grey_levels_lose():
    # a blue wall beside a grey roof of the same brightness: one grey level, two colours
    guide = np.empty((32, 32, 3), np.float32)
    guide[:, :20] = (0.2, 0.3, 0.7)
    guide[:, 20:] = (0.4, 0.4, 0.4)
    blurry = np.clip((np.arange(32, dtype=np.float32) - 12) / 10, 0, 1)[None].repeat(32, 0)
    colour = guided_filter(guide, blurry, 4, 1e-3)
    grey = guided_filter(guide.mean(axis=2), blurry, 4, 1e-3)
    step = colour[:, 20].mean() - colour[:, 19].mean()
    assert step > 0.3  # the colour edge is found
    assert grey[:, 20].mean() - grey[:, 19].mean() < 0.15  # the grey guide smooths across it
    # a grey guide is the one-channel case of the same filter
    np.testing.assert_allclose(
        guided_filter(guide.mean(axis=2), blurry, 4, 1e-3),
        guided_filter(guide.mean(axis=2, keepdims=True), blurry, 4, 1e-3),
        atol=1e-6,
    )


@pytest.mark.parametrize("mode", ["fixed", "otsu"])
@pytest.mark.parametrize("upsampling", ["bilinear", "guided"])
def test_mask_from_map_is_binary_at_working_size(mode, upsampling):
    rng = np.random.default_rng(1)
    m = np.zeros((8, 8), np.float32)
    m[2:5, 3:6] = 1
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out = mask_from_map(m, image, 8, 0.5, mode, upsampling)
    assert out.shape == (64, 64) and set(np.unique(out)) <= {0.0, 1.0}
    assert out[20:36, 28:44].mean() > 0.9 and out[:8].mean() == 0


@pytest.mark.parametrize("options", [{}, {"mask_threshold": "otsu", "mask_upsampling": "guided"}])
def test_diffedit_mask_job_takes_the_levers(tiny, options):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    req = EditRequest(
        "diffedit_mask",
        image=image,
        prompt="a red house",
        steps=10,
        seed=1,
        options={"reference_prompt": "a blue house", "n_samples": 4, **options},
    )
    with torch.no_grad():
        res = run_to_end(JOB_RUNNERS["diffedit_mask"](JobContext(tiny, Denoiser(tiny)), req))
    assert res.extras["mask"].shape == (64, 64) and res.extras["mask"].dtype == np.uint8
    assert 0 < (res.extras["mask"] >= 128).mean() < 1


def test_the_levers_script_measures_every_variant_and_its_grey_guide_is_the_grey_filter(tiny):
    from engine.evaluation.diffedit_levers import _grey_guide, diffedit_cases, measure

    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    src = rng.random((24, 24)).astype(np.float32)
    three, eps = _grey_guide(image, 1e-3)
    np.testing.assert_allclose(
        guided_filter(three / 255, src, 3, eps),
        guided_filter(image.astype(np.float32).mean(axis=2) / 255, src, 3, 1e-3),
        atol=1e-5,
    )
    ups = (("bilinear", None), ("guided", 1e-3), ("guided-grey", 1e-3))
    res = measure(
        tiny,
        diffedit_cases(1, 560_000),
        samples=(2,),
        cuts=(("fixed", 0.5),),
        upsampling=ups,
        strengths=(0.5, 0.3),
        log=lambda m: None,
    )
    assert len(res) == 6 and "n2 s0.3 fixed 0.5 guided-grey eps 0.001" in res
    assert all(0 <= v["iou"]["mean"] <= 1 and v["iou"]["n"] == 1 for v in res.values())
