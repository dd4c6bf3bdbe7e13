"""The guided denoiser on the tiny random model."""

import dataclasses

import pytest
import torch

from engine.denoiser import Denoiser


def test_guidance_is_one_batched_call_mixing_cond_and_uncond(tiny_denoiser):
    d = tiny_denoiser
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = d.condition("a red house", "blurry", guidance=5.0)
    calls = []
    hook = d.bundle.unet.register_forward_hook(lambda m, a, k: calls.append(a[0].shape[0]))
    try:
        guided = d.predict(x, 500, cond, 5.0)
    finally:
        hook.remove()
    assert calls == [2]  # cond and uncond in one batch
    e_c = d.model_output(x, 500, cond.cond)
    e_u = d.model_output(x, 500, cond.uncond)
    torch.testing.assert_close(guided.eps, e_u + 5.0 * (e_c - e_u), rtol=1e-4, atol=1e-5)


def test_guidance_one_skips_the_unconditional_pass(tiny_denoiser):
    d = tiny_denoiser
    cond = d.condition("a tree", "", guidance=1.0)
    assert cond.uncond is None
    calls = []
    hook = d.bundle.unet.register_forward_hook(lambda m, a, k: calls.append(a[0].shape[0]))
    try:
        d.predict(torch.zeros(1, 4, 8, 8), 10, cond, 1.0)
    finally:
        hook.remove()
    assert calls == [1]


def test_prompt_embeddings_are_cached_and_differ(tiny_denoiser):
    d = tiny_denoiser
    a, b = d.encode_text("a boat on a lake"), d.encode_text("snowy mountains")
    assert d.encode_text("a boat on a lake") is a
    assert a.shape == (1, 77, 32) and not torch.allclose(a, b)


def test_x0_is_consistent_with_eps(tiny_denoiser):
    d = tiny_denoiser
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    p = d.predict(x, 700, d.condition("x", "", 3.0), 3.0)
    torch.testing.assert_close(p.x0, d.schedule.x0_from_eps(x, p.eps, 700))


def test_v_prediction_model_output_is_converted(tiny):
    cfg = {**tiny.scheduler_config, "prediction_type": "v_prediction"}
    v_bundle = dataclasses.replace(tiny, scheduler_config=cfg)
    d_v, d_e = Denoiser(v_bundle), Denoiser(tiny)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    emb = d_e.encode_text("a house")
    out = d_e.model_output(x, 300, emb)  # the same network output, read as v
    p = d_v.predict(x, 300, emb, 1.0)
    a = tiny.schedule.alpha(300)
    torch.testing.assert_close(p.x0, a**0.5 * x - (1 - a) ** 0.5 * out)
    assert d_v.schedule.prediction_type == "v_prediction"


@pytest.mark.parametrize("guidance", [1.0, 7.5])
def test_batch_of_latents_broadcasts_one_embedding(tiny_denoiser, guidance):
    d = tiny_denoiser
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    p = d.predict(x, 400, d.condition("a rock", "", guidance), guidance)
    single = d.predict(x[1:2], 400, d.condition("a rock", "", guidance), guidance)
    torch.testing.assert_close(p.eps[1:2], single.eps, rtol=1e-4, atol=1e-5)
