"""Differential (soft-mask) inpainting on builtin:tiny and builtin:tiny-inpaint (random
weights, CPU): a uniform grey mask is SDEdit at that strength, cells at 0 end as the original,
grey levels order how much changes, and every masked method leaves unmasked pixels
bit-exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.algorithms.common import run_to_end
from engine.algorithms.differential import differential, join_counts
from engine.algorithms.sdedit import sdedit
from engine.denoiser import Denoiser
from engine.jobs import JOB_RUNNERS, JobContext
from engine.models import load_model
from engine.schedule import Schedule
from engine.types import EditRequest

PROMPT = "a red house beside two pine trees"


@pytest.fixture(scope="module")
def tiny_inpaint():
    return load_model("builtin:tiny-inpaint", device="cpu")


def picture(h=64, w=64, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, np.full_like(x, 90.0)], -1)
    return (base + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)


def latents(seed=0):
    return torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("level", [0.3, 0.6, 1.0])
def test_join_counts_are_sdedits_step_counts(level):
    change = torch.full((1, 1, 4, 4), level, dtype=torch.float32)
    for steps in (7, 25, 50):
        k = join_counts(change, steps, 1.0)
        assert bool((k == Schedule.steps_for_strength(steps, float(change[0, 0, 0, 0]))).all())
    assert int(join_counts(torch.zeros(1, 1, 2, 2), 25, 1.0).max()) == 0


@pytest.mark.parametrize(("level", "strength", "eta"), [(0.6, 1.0, 0.0), (0.5, 0.8, 1.0)])
@torch.no_grad()
def test_a_uniform_grey_mask_is_sdedit_at_that_strength(tiny, level, strength, eta):
    d = Denoiser(tiny)
    cond = d.condition(PROMPT, "", 4.0)
    x0 = latents(1)
    change = torch.full((1, 1, 8, 8), level)
    ours = run_to_end(
        differential(d, x0, change, cond, 10, strength, 4.0, torch.Generator().manual_seed(5), eta)
    )
    s = float(change[0, 0, 0, 0].double() * strength)
    ref = run_to_end(sdedit(d, x0, cond, 10, s, 4.0, torch.Generator().manual_seed(5), eta=eta))
    assert torch.equal(ours, ref)


@torch.no_grad()
def test_grey_levels_order_how_much_changes_and_zero_keeps_the_original(tiny):
    d = Denoiser(tiny)
    cond = d.condition(PROMPT, "", 1.0)
    x0 = latents(2)
    change = torch.zeros(1, 1, 8, 8)
    change[..., :, 2:4], change[..., :, 4:6], change[..., :, 6:] = 0.2, 0.6, 1.0
    out = run_to_end(differential(d, x0, change, cond, 20, 1.0, 1.0, torch.Generator()))
    diff = (out - x0).abs().mean(dim=(0, 1, 2))  # per column
    assert torch.equal(out[..., :2], x0[..., :2])
    cols = [float(diff[a:b].mean()) for a, b in ((2, 4), (4, 6), (6, 8))]
    assert cols[0] < cols[1] < cols[2]


def _run(bundle, req):
    ctx = JobContext(bundle, Denoiser(bundle))
    with torch.no_grad():
        return run_to_end(JOB_RUNNERS[req.method](ctx, req))


def test_soft_inpainting_job_with_a_uniform_mask_is_the_sdedit_job(tiny):
    image = picture(seed=1)
    grey = np.full(image.shape[:2], 153, np.uint8)  # 0.6
    common = dict(image=image, prompt=PROMPT, steps=10, guidance=3.0, seed=9)
    soft = _run(
        tiny,
        EditRequest("repaint", mask=grey, options={"soft_mask": True, "sampler": "ddim"}, **common),
    )
    plain = _run(tiny, EditRequest("sdedit", strength=0.6, **common))
    assert np.array_equal(soft.image, plain.image)
    assert soft.parameters["unet_calls"] == 6


def ring_mask(h=48, w=80):
    """A soft mask: full in the middle, grey around, 0 at the border."""
    m = np.zeros((h, w), np.uint8)
    m[8:40, 12:68] = 90
    m[16:32, 24:56] = 255
    return m


CASES = [
    ("repaint", {}),
    ("repaint", {"jump_n_sample": 1}),
    ("repaint", {"soft_mask": True}),
    ("repaint", {"soft_mask": True, "sampler": "ddim", "denoise": 0.7}),
    ("repaint", {"denoise": 0.6, "masked_content": "fill"}),
    ("sdedit", {}),
    ("diffedit", {"reference_prompt": "a blue house"}),
]


@pytest.mark.parametrize("model", ["tiny", "tiny_inpaint"])
@pytest.mark.parametrize(("method", "options"), CASES)
def test_unmasked_pixels_are_bit_exact_for_every_method(request, model, method, options):
    bundle = request.getfixturevalue(model)
    image, mask = picture(48, 80, seed=7), ring_mask()
    req = EditRequest(
        method,
        image=image,
        mask=mask,
        prompt=PROMPT,
        steps=4,
        guidance=2.0,
        seed=3,
        options=options,
    )
    out = _run(bundle, req).image
    keep = mask == 0
    assert np.array_equal(out[keep], image[keep])
    assert not np.array_equal(out[~keep], image[~keep])
