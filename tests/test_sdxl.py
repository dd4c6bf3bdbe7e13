"""SDXL conditioning and parity with diffusers' SDXL pipelines on builtin:tiny-xl.

Parity: the same components, prompt, seed and steps through our loops and through
``StableDiffusionXLPipeline`` / ``StableDiffusionXLImg2ImgPipeline`` (``sdxl_parity``, shared
with the full-size check in ``test_sdxl_full_size.py``). The VAE-encode convention is matched
explicitly: our SDEdit encodes to the posterior mean, so the img2img pipeline receives those
latents as its image (it takes a 4-channel image as latents) instead of sampling the
posterior itself.
"""

import numpy as np
import pytest
import torch
from sdxl_parity import sdedit_pair, text2img_pipeline, text_to_image_pair

from engine import sdxl
from engine.denoiser import Denoiser

PROMPT = "a red house beside two pine trees under a sunset sky"
STEPS = 5


@pytest.fixture(scope="module")
def xl():
    from engine.models import load_model

    return load_model("builtin:tiny-xl", device="cpu")


def test_tiny_xl_is_an_sdxl_base(xl):
    assert xl.family == sdxl.BASE and xl.native_size == 64
    assert xl.unet.config.addition_embed_type == "text_time"
    assert xl.text_encoder_2.config.projection_dim == 32
    assert xl.tokenizer_2.pad_token == "!" and xl.tokenizer.pad_token != "!"


@pytest.mark.parametrize("negative", ["", "blurry, dark"])
def test_embeddings_match_the_pipelines_encode_prompt(xl, negative):
    """Penultimate hidden states of both encoders concatenated, the second encoder's pooled
    output, and zeros for an empty negative prompt (diffusers: negative_prompt=None)."""
    pipe = text2img_pipeline(xl)
    with torch.no_grad():
        pe, npe, pooled, npooled = pipe.encode_prompt(
            PROMPT, device="cpu", do_classifier_free_guidance=True, negative_prompt=negative or None
        )
    d = Denoiser(xl)
    cond = d.condition(PROMPT, negative, guidance=5.0)
    dim = xl.text_encoder_2.config.projection_dim
    for ours, context, vector in ((cond.cond, pe, pooled), (cond.uncond, npe, npooled)):
        c, p, _ = sdxl.unpack(ours, dim)
        torch.testing.assert_close(c, context, rtol=0, atol=0)
        torch.testing.assert_close(p, vector, rtol=0, atol=0)
    if not negative:
        assert not cond.uncond.any()
    else:
        assert cond.uncond.abs().sum() > 0


def test_time_ids_are_the_pipelines_defaults(xl):
    pipe = text2img_pipeline(xl)
    ids = pipe._get_add_time_ids(
        (64, 96), (0, 0), (64, 96), torch.float32, xl.text_encoder_2.config.projection_dim
    )
    ours = sdxl.time_ids((64, 96), torch.zeros(1), refiner=False)
    torch.testing.assert_close(ours, ids)
    refiner = sdxl.time_ids((64, 96), torch.tensor([6.0, 2.5]), refiner=True)
    assert refiner.tolist() == [[64, 96, 0, 0, 6.0], [64, 96, 0, 0, 2.5]]


@pytest.mark.parametrize("negative", ["", "blurry, dark"])
def test_text_to_image_matches_the_sdxl_pipeline(xl, negative):
    ours, out = text_to_image_pair(xl, PROMPT, negative, STEPS, 6.0, (64, 96), seed=3)
    torch.testing.assert_close(ours, out, rtol=1e-4, atol=1e-5)
    assert not torch.equal(out, torch.zeros_like(out))


def test_sdedit_matches_the_sdxl_img2img_pipeline(xl):
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    ours, out, latents = sdedit_pair(xl, image, PROMPT, 0.6, STEPS, 5.0, seed=7)
    torch.testing.assert_close(ours, out, rtol=1e-4, atol=1e-5)
    assert (ours - latents).abs().mean() > 1e-3  # it did edit


def test_decode_matches_the_pipelines_decode(xl):
    pipe = text2img_pipeline(xl)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    theirs = pipe.vae.decode(z / pipe.vae.config.scaling_factor).sample
    theirs = ((theirs[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0)
    assert np.array_equal(xl.decode(z), theirs.numpy())


def test_long_prompts_get_windows_and_the_first_windows_pooled_vector(xl):
    d = Denoiser(xl)
    long = " ".join(["a red house beside a pine tree"] * 14)  # > 75 tokens
    assert d.chunk_count(long) == 2
    emb = d.encode_text(long)
    assert emb.shape == (1, 2 * 77 + sdxl.EXTRA_ROWS, 64)
    head = " ".join(long.split()[:60])  # the first window's tokens alone
    first = d.encode_text(head)
    dim = xl.text_encoder_2.config.projection_dim
    # the pooled vector comes from the first window, which both prompts share
    ids = xl.tokenizer(long, add_special_tokens=False).input_ids[:75]
    z, pooled = sdxl.encode_window(xl, ids, "cpu")
    torch.testing.assert_close(sdxl.unpack(emb, dim)[1], pooled)
    torch.testing.assert_close(emb[:, :77], z)
    assert not torch.equal(emb[:, 77:154], first[:, :77])


def test_refiner_embeddings_carry_the_aesthetic_scores(xl):
    """The refiner conditions on an aesthetic score: 6 for the prompt, 2.5 for the negative
    prompt (diffusers' defaults); its empty negative prompt is encoded, not zeroed."""
    from dataclasses import replace

    refiner = replace(xl, family=sdxl.REFINER, zero_empty_negative=False)
    d = Denoiser(refiner)
    cond = d.condition(PROMPT, "", 5.0)
    assert float(cond.cond[0, -1, 0]) == sdxl.AESTHETIC_SCORE
    assert float(cond.uncond[0, -1, 0]) == sdxl.NEGATIVE_AESTHETIC_SCORE
    assert cond.uncond[:, :-1].abs().sum() > 0
