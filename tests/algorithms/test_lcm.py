"""The LCM sampler (Luo et al. 2023, Alg. 3) against closed forms on Gaussian data.

For x_0 ~ N(μ, s² I) the probability-flow ODE keeps (x_t/√ᾱ_t − μ)/√(s² + σ_t²) constant
(σ_t² = (1−ᾱ_t)/ᾱ_t), so the exact consistency function is

    f(x_t) = μ + s (x_t − √ᾱ_t μ) / √v_t,   v_t = ᾱ_t s² + 1 − ᾱ_t,

which is not the posterior mean x̂₀ = μ + √ᾱ_t s² (x_t − √ᾱ_t μ) / v_t that an ε-model gives.
``ConsistencyAnalytic`` is the ideal distilled model: its x̂₀ output is f.
"""

from __future__ import annotations

import math

import pytest
import torch

from engine.algorithms.common import run_to_end
from engine.algorithms.lcm import (
    boundary_scalings,
    embedded_guidance,
    guidance_embedding,
    lcm_sample,
    lcm_timesteps,
)
from engine.algorithms.sampling import ddim_sample

from .analytic import AnalyticDenoiser, schedule

SHAPE = (1, 4, 6, 10)


class ConsistencyAnalytic(AnalyticDenoiser):
    """A perfectly distilled LCM for Gaussian data: x̂₀ = the ODE's endpoint f(x_t)."""

    def model_output(self, x, t, emb):
        a = self.schedule.alpha(t)
        f = exact_f(x, t, self.schedule, self.mu, self.s)
        return (x - math.sqrt(a) * f) / math.sqrt(1 - a)  # the ε that gives x̂₀ = f


def exact_f(x, t, sched, mu, s):
    a = sched.alpha(t)
    return mu + s * (x - math.sqrt(a) * mu) / math.sqrt(a * s**2 + 1 - a)


def make(cls=ConsistencyAnalytic, s=0.7, shape=SHAPE, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = 0.5 * torch.randn(shape, generator=g)
    return cls(schedule(), mu, s)


def test_timesteps_follow_the_lcm_skipping_grid():
    sched = schedule()
    # diffusers' LCMScheduler.set_timesteps gives these
    assert lcm_timesteps(sched, 4) == [999, 759, 499, 259]
    assert lcm_timesteps(sched, 6) == [999, 839, 679, 499, 339, 179]
    assert lcm_timesteps(sched, 4, strength=0.6) == [599, 459, 299, 159]
    assert lcm_timesteps(sched, 1) == [999]
    assert lcm_timesteps(sched, 100) == list(range(999, 0, -20))  # capped at the grid
    assert lcm_timesteps(sched, 4, strength=0.0) == []
    assert lcm_timesteps(sched, 4, strength=0.01) == [19]


def test_boundary_condition_makes_f_the_identity_at_zero():
    c_skip, c_out = boundary_scalings(0.0)
    assert c_skip == 1.0 and c_out == 0.0
    c_skip, c_out = boundary_scalings(259.0)
    assert c_skip < 1e-6 and abs(c_out - 1.0) < 1e-6


def test_one_step_lands_on_the_ode_endpoint_that_many_ddim_steps_approach():
    d = make()
    c = d.encode_text("")
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    one = run_to_end(lcm_sample(d, x_T, [999], c, 1.0, torch.Generator()))
    assert torch.allclose(one, exact_f(x_T, 999, d.schedule, d.mu, d.s), atol=1e-5)
    # the same ODE solved by 500 DDIM steps of the ideal ε-model
    ddim = AnalyticDenoiser(d.schedule, d.mu, d.s)
    ts = [999] + ddim.schedule.timesteps(500)[1:]
    ode = run_to_end(ddim_sample(ddim, x_T, ts, c, 1.0, torch.Generator()))
    assert (ode - one).abs().max() < 0.02


def test_multistep_matches_algorithm_3_step_by_step():
    d = make()
    c = d.encode_text("")
    ts = lcm_timesteps(d.schedule, 4)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    gen = lcm_sample(d, x, ts, c, 1.0, torch.Generator().manual_seed(3))
    previews = []
    try:
        while True:
            previews.append(next(gen).x0)
    except StopIteration as stop:
        out = stop.value
    # Algorithm 3 written out: x̂₀ = f(x_τ), then x_τ' = √ᾱ x̂₀ + √(1−ᾱ) z
    g = torch.Generator().manual_seed(3)
    for i, t in enumerate(ts):
        x0 = exact_f(x, t, d.schedule, d.mu, d.s)
        assert torch.allclose(previews[i], x0, atol=1e-5)
        if i + 1 < len(ts):
            x = d.schedule.q_sample(x0, ts[i + 1], torch.randn(SHAPE, generator=g))
    assert torch.allclose(out, x0, atol=1e-5) and len(previews) == 4


def test_samples_have_the_data_distribution_only_with_the_consistency_function():
    # the exact f maps the marginal q(x_τ) onto N(μ, s²): each re-noised step is again
    # exactly distributed, so 4-step samples have the data's spread; the posterior mean x̂₀
    # of a plain ε-model in its place shrinks it (to ~√ᾱ s² / √v of it)
    shape, s = (1, 4, 64, 64), 0.7
    ts = lcm_timesteps(schedule(), 4)
    spread = {}
    for cls in (ConsistencyAnalytic, AnalyticDenoiser):
        d = make(cls, s=s, shape=shape)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(4))
        out = run_to_end(lcm_sample(d, x, ts, d.encode_text(""), 1.0, torch.Generator()))
        spread[cls] = (out - d.mu).std().item()
    assert spread[ConsistencyAnalytic] == pytest.approx(s, rel=0.03)
    assert spread[AnalyticDenoiser] < 0.8 * s


def test_masked_steps_keep_the_known_latents_outside_the_mask():
    d = make()
    c = d.encode_text("")
    known = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    mask = torch.zeros(1, 1, *SHAPE[2:])
    mask[..., :3] = 1
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(6))
    ts = lcm_timesteps(d.schedule, 3, strength=0.5)
    x = d.schedule.q_sample(known, ts[0], noise)
    out = run_to_end(lcm_sample(d, x, ts, c, 1.0, torch.Generator(), (known, mask, noise)))
    assert torch.equal(out[..., 3:], known[..., 3:])
    assert not torch.allclose(out[..., :3], known[..., :3])


def test_guidance_embedding_reaches_the_unet_of_an_lcm(tiny):
    from diffusers import UNet2DConditionModel

    config = {k: v for k, v in tiny.unet.config.items() if not k.startswith("_")}
    unet = UNet2DConditionModel(**{**config, "time_cond_proj_dim": 16}).eval()
    torch.nn.init.normal_(unet.time_embedding.cond_proj.weight)
    x, emb = torch.randn(2, 4, 8, 8), torch.randn(1, 77, 32).expand(2, -1, -1)
    with torch.no_grad():
        plain = unet(x, 500, encoder_hidden_states=emb).sample
        with embedded_guidance(unet, 8.0):
            w8 = unet(x, 500, encoder_hidden_states=emb).sample
        with embedded_guidance(unet, 2.0):
            w2 = unet(x, 500, encoder_hidden_states=emb).sample
        after = unet(x, 500, encoder_hidden_states=emb).sample
        explicit = unet(
            x, 500, encoder_hidden_states=emb, timestep_cond=guidance_embedding([7.0] * 2, 16)
        ).sample
    assert not torch.allclose(plain, w8) and not torch.allclose(w8, w2)
    assert torch.equal(w8, explicit)  # ω = guidance − 1
    assert torch.equal(plain, after)  # the hook is gone after the block
