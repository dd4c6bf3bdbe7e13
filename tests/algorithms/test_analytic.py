"""Algorithms against the closed-form denoiser for Gaussian data (see analytic.py)."""

from __future__ import annotations

import math

import pytest
import torch

from engine.algorithms.common import run_to_end
from engine.algorithms.diffedit import diffedit, diffedit_mask
from engine.algorithms.inversion import ddim_decode, ddim_invert, invert, regenerate
from engine.algorithms.null_text import REFERENCE, NullTextSettings
from engine.algorithms.repaint import repaint, repaint_calls, repaint_schedule
from engine.denoiser import Conditioning

from .analytic import AnalyticDenoiser, schedule

SHAPE = (1, 4, 6, 10)  # non-square latents throughout


def make(pred="epsilon", s=0.7, shape=SHAPE, region=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = 0.5 * torch.randn(shape, generator=g)
    d = AnalyticDenoiser(schedule(pred), mu, s, region)
    x0 = mu + s * torch.randn(shape, generator=g)
    return d, x0


def round_trip(d, x0, steps, fixed_point=0):
    ts = d.schedule.timesteps(steps)
    c = d.encode_text("")
    traj = run_to_end(ddim_invert(d, x0, c, ts, fixed_point=fixed_point))
    assert len(traj) == steps + 1 and torch.equal(traj[-1], x0)
    return run_to_end(ddim_decode(d, traj[0], ts, c, 1.0)), traj


# ---- DDIM inversion ----------------------------------------------------------------------


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction"])
def test_ddim_inversion_round_trip_is_exact_with_fixed_point_steps(pred):
    d, x0 = make(pred)
    x, traj = round_trip(d, x0, 50, fixed_point=4)
    assert (x - x0).abs().max() < 1e-4
    # the inverted noise is white: unit variance, like x_T should be
    assert 0.8 < traj[0].std() < 1.3


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction"])
def test_plain_ddim_inversion_round_trip_is_first_order(pred):
    # plain DDIM inversion evaluates ε̂ at x_s instead of x_t: even with the ideal
    # denoiser each round trip shrinks x − √ᾱμ by cos²(Δθ), so the error is O(1/steps)
    d, x0 = make(pred)
    e50 = (round_trip(d, x0, 50)[0] - x0).abs().max().item()
    e200 = (round_trip(d, x0, 200)[0] - x0).abs().max().item()
    assert e50 < 0.3
    assert e200 < 0.35 * e50  # ~4x fewer error for 4x the steps


class TimeOnlyDenoiser(AnalyticDenoiser):
    """ε̂ depends on the timestep only: then ε̂(x_s, t) = ε̂(x_t, t) and each inversion step
    must be the exact inverse of the generation step."""

    def model_output(self, x, t, emb):
        g = torch.Generator().manual_seed(int(t))
        return 0.5 * torch.randn(x.shape[1:], generator=g).expand_as(x)


def test_ddim_inversion_step_inverts_the_generation_step():
    # evaluating ε̂ at the less noisy state's own timestep (the plain Euler step) is off by
    # O(1/steps) here; at the generation step's timestep it is exact up to rounding
    d = TimeOnlyDenoiser(schedule(), torch.zeros(SHAPE), 0.7)
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    x, _ = round_trip(d, x0, 25)
    assert (x - x0).abs().max() < 1e-4


def test_eps_and_v_prediction_give_the_same_inversion():
    (d_e, x0), (d_v, _) = make("epsilon"), make("v_prediction")
    ts = d_e.schedule.timesteps(20)
    c = d_e.encode_text("")
    te = run_to_end(ddim_invert(d_e, x0, c, ts))
    tv = run_to_end(ddim_invert(d_v, x0, c, ts))
    assert (te[0] - tv[0]).abs().max() < 1e-4


def test_guided_reconstruction_needs_negative_prompt_or_null_text():
    # the prompt shifts μ inside a region; guidance 7.5 then extrapolates away from the
    # guidance-1 inversion unless the unconditional branch is fixed
    region = torch.zeros(SHAPE)
    region[..., 2:5, 3:8] = 1
    d, x0 = make(region=region)
    errs = {}
    for method in ("ddim", "negative_prompt", "null_text", "null_text_reference"):
        inv = run_to_end(invert(d, x0, "a red house", 10, 7.5, method, fixed_point=10))
        x = run_to_end(regenerate(d, inv, d.encode_text("a red house")))
        errs[method] = (x - x0).abs().max().item()
        if method.startswith("null_text"):
            assert (inv.reconstruction - x0).abs().max() < 1e-2
    assert errs["ddim"] > 0.5
    assert errs["negative_prompt"] < 1e-4
    assert errs["null_text"] < 1e-2 and errs["null_text_reference"] < 1e-2
    # direct inversion snaps its source branch back onto the trajectory: exact without
    # fixed-point refinement, and an edited prompt still moves the result
    inv = run_to_end(invert(d, x0, "a red house", 10, 7.5, "direct"))
    assert (run_to_end(regenerate(d, inv, d.encode_text("a red house"))) - x0).abs().max() < 1e-5
    edited = run_to_end(regenerate(d, inv, d.encode_text("a blue house")))
    assert (edited - x0)[region.bool()].abs().mean() > 0.1
    assert (edited - x0)[~region.bool()].abs().max() < 1e-5


def test_shallow_reedit_reconstructs_and_changes_less():
    # starting part-way down the trajectory: the source prompt still gives the image back,
    # and an edited prompt moves the region less than from the full depth
    region = torch.zeros(SHAPE)
    region[..., 2:5, 3:8] = 1
    d, x0 = make(region=region)
    inv = run_to_end(invert(d, x0, "a red house", 10, 7.5, "negative_prompt", fixed_point=10))
    src, edit = d.encode_text("a red house"), d.encode_text("a blue house")
    assert (run_to_end(regenerate(d, inv, src, start=6)) - x0).abs().max() < 1e-4
    full = run_to_end(regenerate(d, inv, edit))
    shallow = run_to_end(regenerate(d, inv, edit, start=6))
    inside = region.bool().expand_as(x0)
    moved_full = (full - x0)[inside].abs().mean()
    moved_shallow = (shallow - x0)[inside].abs().mean()
    assert 0 < moved_shallow < moved_full
    with pytest.raises(ValueError, match="start must be in"):
        run_to_end(regenerate(d, inv, edit, start=10))


def test_closing_mid_null_text_restores_grad_mode():
    # the engine closes a cancelled job's generator between yields: no gradient mode or
    # graph may leak from the optimisation into the engine thread
    region = torch.zeros(SHAPE)
    region[..., 1:5, 2:9] = 1
    d, x0 = make(region=region)
    with torch.no_grad():
        gen = invert(d, x0, "a house", 5, 7.5, "null_text_reference")
        for p in gen:
            assert not torch.is_grad_enabled()
            if p.label.startswith("null-text 2"):
                break
        gen.close()
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()


def test_null_text_loss_decreases_on_the_analytic_model():
    region = torch.zeros(SHAPE)
    region[..., 1:5, 2:9] = 1
    d, x0 = make(region=region)
    settings = NullTextSettings(inner_steps=5, early_stop=0.0, early_stop_slope=0.0, lr=0.05)
    inv = run_to_end(invert(d, x0, "a house", 5, 7.5, "null_text", settings=settings))
    assert all(len(step) == 6 for step in inv.losses)
    # the denoiser counts every model call itself: 5 for the inversion, then per step the
    # conditional branch, 5 iterations and the step with the final embedding
    assert d.unet_calls == 5 + 5 * (1 + 5 + 1)
    # the first step starts far from its pivot and descends steadily; later steps start near
    # the floor the scalar embedding can reach, where Adam at this rate jitters around it
    first = inv.losses[0]
    assert all(b < a for a, b in zip(first, first[1:]))
    # what the optimisation is for: the guided reconstruction, here 7x closer than without
    plain = NullTextSettings(inner_steps=1, early_stop=0.0, early_stop_slope=0.0, lr=0.05)
    inv0 = run_to_end(invert(d, x0, "a house", 5, 7.5, "null_text", settings=plain))
    err = (inv.reconstruction - x0).pow(2).mean()
    assert err < 0.3 * (inv0.reconstruction - x0).pow(2).mean()


def test_fast_null_text_rechecks_a_reconstruction_that_fell_behind():
    # a budget too small to optimise at all leaves the guided reconstruction far off; the
    # recheck sees it in the last step's loss and redoes the chain with the paper's budget
    region = torch.zeros(SHAPE)
    region[..., 1:5, 2:9] = 1
    d, x0 = make(region=region)
    starved = NullTextSettings(inner_steps=1, stop_before_step=True)
    checked = NullTextSettings(inner_steps=1, stop_before_step=True, recheck=2.0)

    def run(settings):
        gen, labels = invert(d, x0, "a house", 10, 7.5, "null_text", settings=settings), []
        try:
            while True:
                labels.append(next(gen).label)
        except StopIteration as stop:
            return (stop.value.reconstruction - x0).pow(2).mean(), labels

    err_starved, labels = run(starved)
    err_checked, labels_checked = run(checked)
    err_ref, _ = run(REFERENCE)
    assert not any("second pass" in x for x in labels)
    assert any("second pass" in x for x in labels_checked)
    assert err_checked < 0.05 * err_starved
    assert err_checked <= 1.01 * err_ref


@pytest.mark.parametrize(
    "gaps, second_pass, kept",
    [
        ((0.1,), False, "first"),  # what the user sees is fine: no second pass (latent line or not)
        ((1.0, 2.0), True, "first"),  # the paper's pass did worse: the first chain is kept
        ((1.0, 0.5), True, "second"),  # it did better: it is kept
    ],
)
def test_fast_null_text_recheck_goes_by_the_callers_gap_and_keeps_the_better_chain(
    gaps, second_pass, kept
):
    # the starved budget's latent error is far over the latent line (previous test); with a
    # ``gap`` (dB below the VAE round trip, here scripted) only the gap decides
    d, x0 = make()
    checked = NullTextSettings(inner_steps=1, stop_before_step=True, recheck=2.0)
    told = iter(gaps)
    asked = []

    def gap(reconstruction):
        asked.append(reconstruction)
        return next(told)

    gen, labels = invert(d, x0, "a house", 6, 7.5, "null_text", settings=checked, gap=gap), []
    try:
        while True:
            labels.append(next(gen).label)
    except StopIteration as stop:
        inv = stop.value
    assert any("second pass" in x for x in labels) == second_pass
    assert len(asked) == len(gaps)  # each chain measured once
    expected = asked[0] if kept == "first" else asked[1]
    assert torch.equal(inv.reconstruction, expected)
    # the embeddings and losses come with the chain that was kept
    alone = NullTextSettings(inner_steps=1, stop_before_step=True)  # the first chain, unchecked
    first = run_to_end(invert(d, x0, "a house", 6, 7.5, "null_text", settings=alone))
    same = all(torch.equal(a, b) for a, b in zip(inv.null_embeddings, first.null_embeddings))
    if kept == "first":
        assert same and inv.losses == first.losses
    else:
        ref = run_to_end(invert(d, x0, "a house", 6, 7.5, "null_text", settings=REFERENCE))
        assert inv.losses == ref.losses and torch.equal(inv.reconstruction, ref.reconstruction)


# ---- RePaint -----------------------------------------------------------------------------


def test_repaint_schedule_matches_the_paper_and_formula():
    assert repaint_calls(250, 10, 10) == 2410  # Lugmayr et al. 2022, §4.2
    for n, j, r in [(25, 5, 3), (50, 10, 10), (20, 1, 3), (7, 3, 2), (10, 10, 5), (1, 1, 1)]:
        ts = repaint_schedule(n, j, r)
        assert ts[0] == n - 1 and ts[-1] == -1
        assert all(abs(b - a) == 1 for a, b in zip(ts, ts[1:]))
        assert max(ts) == n - 1 and min(ts) == -1
        expected = n + j * (r - 1) * math.ceil((n - j) / j) if n > j else n
        assert repaint_calls(n, j, r) == expected


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_repaint_counts_model_calls(sampler):
    d, x0 = make()
    mask = torch.zeros(1, 1, *SHAPE[-2:])
    mask[..., :, 5:] = 1
    gen = torch.Generator().manual_seed(0)
    c = Conditioning(d.encode_text(""))
    steps = list(repaint(d, x0, mask, c, 12, 1.0, gen, 3, 3, sampler))
    assert d.unet_calls == len(steps) == repaint_calls(12, 3, 3) == 12 + 3 * 2 * 3
    assert steps[-1].i == steps[-1].n == d.unet_calls


@pytest.mark.parametrize("sampler,pred", [("ddim", "epsilon"), ("ddpm", "v_prediction")])
def test_repaint_keeps_known_latents_on_the_forward_marginal(sampler, pred):
    shape = (1, 4, 32, 48)
    d, x0 = make(pred, shape=shape)
    d.record = True
    mask = torch.zeros(1, 1, *shape[-2:])
    mask[..., :, 24:] = 1  # right half generated, left half known
    gen = torch.Generator().manual_seed(1)
    out = run_to_end(
        repaint(d, x0, mask, Conditioning(d.encode_text("")), 10, 1.0, gen, 2, 3, sampler)
    )
    keep = (mask == 0).expand(shape)
    # every state the model sees: known entries ~ N(√ᾱ_t x_0, (1 − ᾱ_t) I)
    zs = []
    for t, x in d.seen:
        a = d.schedule.alpha(t)
        z = (x - math.sqrt(a) * x0)[keep] / math.sqrt(1 - a)
        n = z.numel()
        assert abs(z.mean().item()) < 5 / math.sqrt(n), t
        assert abs(z.var().item() - 1) < 5 * math.sqrt(2 / n), t
        zs.append(z)
    # ... and they are fresh draws, not a stuck noise (the same t is visited repeatedly)
    assert len(d.seen) == repaint_calls(10, 2, 3)
    assert torch.equal(out[keep], x0[keep])


# ---- DiffEdit ----------------------------------------------------------------------------


def _region():
    r = torch.zeros(SHAPE)
    r[..., 1:4, 2:7] = 1
    return r


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction"])
def test_diffedit_mask_finds_where_prompts_disagree(pred):
    d, x0 = make(pred, region=_region())
    gen = torch.Generator().manual_seed(0)
    q, ref = d.encode_text("a blue house"), d.encode_text("")
    previews = []
    gen_ = diffedit_mask(d, x0, q, ref, 500, gen, n_samples=5, batch_size=2)
    while True:
        try:
            previews.append(next(gen_))
        except StopIteration as stop:
            est = stop.value
            break
    assert len(previews) == 3 and d.unet_calls == 3  # ⌈5/2⌉ batched calls
    assert previews[0].image.shape == (*SHAPE[-2:], 3) and previews[0].image.dtype.name == "uint8"
    truth = _region()[0, 0]
    assert torch.equal(est.mask[0, 0], truth)


def test_diffedit_mask_of_identical_prompts_is_empty():
    d, x0 = make(region=_region())
    gen = torch.Generator().manual_seed(0)
    q = d.encode_text("a blue house")
    est = run_to_end(diffedit_mask(d, x0, q, q, 500, gen, n_samples=4))
    assert est.mask.sum() == 0 and est.map.max() < 1e-3


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction"])
def test_diffedit_edit_changes_only_inside_the_mask(pred):
    d, x0 = make(pred, region=_region())
    mask = _region()[:, :1]
    cond = Conditioning(d.encode_text("a blue house"), d.encode_text(""))
    out = run_to_end(diffedit(d, x0, mask, cond, d.encode_text(""), 10, 0.6, 3.0))
    outside = (mask == 0).expand(SHAPE)
    assert torch.equal(out[outside], x0[outside])
    inside = ~outside
    # inside, the mean moved towards the query's μ (c·region with c ≠ 0)
    c = d.encode_text("a blue house").item()
    moved = (out - x0)[inside].mean().item()
    assert moved * c > 0 and abs(moved) > 0.1 * abs(c)
