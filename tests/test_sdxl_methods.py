"""Every method on builtin:tiny-xl, so each runs on SDXL's code paths (two encoders, pooled
vector and micro-conditioning, SDXL's attention layers) in CI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from attention_driver import control_for, p2p_over
from job_driver import box_mask as box
from job_driver import gradient_image
from job_driver import run_job as run

from engine import sdxl
from engine.algorithms.common import run_to_end
from engine.algorithms.inversion import Inversion, ddim_invert, invert, regenerate
from engine.algorithms.null_text import NullTextSettings, null_text_optimise
from engine.algorithms.prompt_to_prompt import AttentionControl, align_tokens
from engine.attention import hooked
from engine.denoiser import Denoiser
from engine.prompts import token_weights
from engine.types import EditRequest

H, W = 48, 80  # non-square, not SDXL's native size


def image(h=H, w=W, seed=0):
    return gradient_image(h, w, seed)


def box_mask(h=H, w=W):
    return box(h, w)


PROMPT = "a red house beside two pine trees"


@pytest.fixture(scope="module")
def xl():
    from engine.models import load_model

    return load_model("builtin:tiny-xl", device="cpu")


@pytest.fixture()
def d(xl):
    return Denoiser(xl)


def outside_exact(out, src, mask):
    keep = mask == 0
    return keep.any() and np.array_equal(out[keep], src[keep])


def test_generate_and_sdedit(xl, d):
    res, steps = run(xl, d, EditRequest("generate", prompt=PROMPT, steps=3, width=W, height=H))
    assert res.image.shape == (H, W, 3) and len(steps) == 3
    src, mask = image(), box_mask()
    req = EditRequest("sdedit", prompt=PROMPT, image=src, mask=mask, steps=4, strength=0.6)
    res, steps = run(xl, d, req)
    assert outside_exact(res.image, src, mask) and not np.array_equal(res.image, src)


def test_repaint(xl, d):
    src, mask = image(), box_mask()
    options = {"jump_length": 2, "jump_n_sample": 2}
    req = EditRequest("repaint", prompt=PROMPT, image=src, mask=mask, steps=4, options=options)
    res, steps = run(xl, d, req)
    assert res.parameters["unet_calls"] == 4 + 2 == len(steps)
    assert outside_exact(res.image, src, mask) and not np.array_equal(res.image, src)


def test_diffedit_mask_and_edit(xl, d):
    src = image()
    options = {"reference_prompt": "a house", "n_samples": 2}
    req = EditRequest("diffedit_mask", prompt=PROMPT, image=src, steps=4, options=options)
    res, _ = run(xl, d, req)
    mask = res.extras["mask"]
    assert mask.shape == (H, W) and 0 < (mask > 0).mean() < 1  # some of the image, not all
    req = EditRequest("diffedit", prompt=PROMPT, image=src, steps=4, options=options)
    res, steps = run(xl, d, req)
    assert res.image.shape == (H, W, 3) and steps[0].label == "mask"


@pytest.mark.parametrize(
    "method", ["ddim", "negative_prompt", "null_text", "null_text_reference", "direct"]
)
def test_invert_then_reedit(xl, d, method):
    src, mask = image(), box_mask()
    options = {"inversion": method}
    req = EditRequest("invert", prompt=PROMPT, image=src, steps=2, guidance=5.0, options=options)
    res, steps = run(xl, d, req)
    inv = res.extras["inversion"]
    assert isinstance(inv, Inversion) and inv.method == method
    # SDXL embeddings: 77 context rows, then the pooled and the aesthetic rows
    assert all(e.shape == (1, 77 + sdxl.EXTRA_ROWS, 64) for e in inv.null_embeddings)
    if method == "ddim":  # the base's empty negative prompt is the zero embedding
        assert not any(e.any() for e in inv.null_embeddings)
    if method.startswith("null_text"):
        assert any(s.label.startswith("null-text") for s in steps)
    for control in ("p2p", "none"):
        edit = EditRequest(
            "reedit",
            prompt="a blue house beside two pine trees",
            mask=mask,
            options={"inversion": inv, "control": control},
        )
        out, steps = run(xl, d, edit)
        assert len(steps) == 2 and outside_exact(out.image, src, mask)


def test_null_text_optimises_the_pooled_vector_too(xl, d):
    """Null-text inversion (Mokady et al. 2022, eq. 3) on SDXL optimises the whole
    unconditional embedding: the context rows and the pooled vector (one Adam over one
    tensor); the aesthetic-score row is detached, and the pooled row's zero padding gets no
    gradient, so both stay as they were."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 4, 6, 10, generator=g)
    ts = d.schedule.timesteps(2)
    cond, uncond = d.encode_text(PROMPT), d.encode_negative("")
    traj = run_to_end(ddim_invert(d, x0, cond, ts))
    settings = NullTextSettings(inner_steps=3, early_stop=0.0, early_stop_slope=0.0)
    nulls, losses, _ = run_to_end(null_text_optimise(d, traj, ts, cond, uncond, 5.0, settings))
    for step in losses:
        assert step[-1] < step[0]
    dim = xl.text_encoder_2.config.projection_dim
    for null in nulls:
        context, pooled, score = sdxl.unpack(null, dim)
        assert context.abs().sum() > 0 and pooled.abs().sum() > 0  # moved off zero
        assert not null[:, -2, dim:].any() and not null[:, -1].any()


@pytest.fixture(scope="module")
def inverted(xl):
    d = Denoiser(xl)
    latents = xl.encode(image(64, 64)).float()
    return run_to_end(invert(d, latents, PROMPT, 4, 4.0, method="direct"))


def test_the_controller_sees_every_sdxl_attention_layer(xl, d, inverted):
    """Every attention layer of the SDXL UNet (self and cross, in every transformer layer of
    a block) hands its conditional rows to the controller, with the 77 prompt positions as
    keys; the same prompt under full injection gives the source back bit for bit."""
    seen: dict[str, tuple[bool, int]] = {}

    class Spy(AttentionControl):
        def attend(self, query, key, value, scale, mask, name, cross):
            seen[name] = (cross, key.shape[-2])
            return super().attend(query, key, value, scale, mask, name, cross)

    ids = token_weights(xl.tokenizer, PROMPT).ids
    spy = Spy(align_tokens(ids, ids, 75), steps=1, cross_until=1.0, self_until=1.0)
    out = p2p_over(d, inverted, PROMPT, spy)
    assert torch.equal(out, inverted.trajectory[-1])
    layers = list(xl.unet.attn_processors)
    assert set(seen) == set(layers)
    blocks = [n for n in layers if ".transformer_blocks.1." in n]  # the 2-layer inner block
    assert blocks and all(n in seen for n in blocks)
    assert {k for c, k in seen.values() if c} == {77}
    assert sum(c for c, _ in seen.values()) == len(layers) // 2


def test_the_hooked_path_matches_the_fused_one(xl, d, inverted):
    """With no injection (τ = 0) the controlled target branch is an ordinary re-edit."""
    edit = "a blue house beside two pine trees"
    control = control_for(PROMPT, edit, xl.tokenizer, cross_until=0.0, self_until=0.0)
    ours = p2p_over(d, inverted, edit, control)
    plain = run_to_end(regenerate(d, inverted, d.encode_text(edit)))
    torch.testing.assert_close(ours, plain, rtol=1e-4, atol=1e-4)
    injected = control_for(PROMPT, edit, xl.tokenizer)
    assert not torch.allclose(p2p_over(d, inverted, edit, injected), plain, atol=1e-3)


def test_an_anchored_re_edit_leaves_the_unread_source_row_out(xl, d):
    """After τ_c and τ_s an anchored re-edit runs the target's rows alone (SDXL's added
    conditioning rows included), and the picture is the one the source row left in gives."""
    latents = xl.encode(image(64, 64)).float()
    inv = run_to_end(invert(d, latents, PROMPT, 4, 4.0, method="ddim"))
    edit = "a blue house beside two pine trees"
    kw = {"cross_until": 0.5, "self_until": 0.25}
    always = control_for(PROMPT, edit, xl.tokenizer, **kw)
    always.reads_source = lambda: True
    kept = p2p_over(d, inv, edit, always)
    torch.testing.assert_close(
        p2p_over(d, inv, edit, control_for(PROMPT, edit, xl.tokenizer, **kw)),
        kept,
        rtol=1e-5,
        atol=1e-5,
    )


def test_hook_restored_after_a_job(xl, d):
    before = dict(xl.unet.attn_processors)
    with hooked(xl.unet, control_for(PROMPT, PROMPT, xl.tokenizer)):
        assert dict(xl.unet.attn_processors) != before
    assert {k: type(v) for k, v in xl.unet.attn_processors.items()} == {
        k: type(v) for k, v in before.items()
    }


def test_edit_generated_with_its_own_prompt_gives_it_back(xl, d):
    common = dict(prompt=PROMPT, steps=4, guidance=3.0, seed=3, width=64, height=64)
    plain, _ = run(xl, d, EditRequest("generate", **common))
    req = EditRequest("edit_generated", **common, options={"source_prompt": PROMPT})
    same, _ = run(xl, d, req)
    assert np.abs(same.image.astype(int) - plain.image.astype(int)).max() <= 2
    edited = EditRequest(
        "edit_generated",
        **{**common, "prompt": "a blue house beside two pine trees"},
        options={"source_prompt": PROMPT},
    )
    other, _ = run(xl, d, edited)
    assert not np.array_equal(other.image, plain.image)


def test_which_maps_the_controller_writes_out():
    """Self-attention is injected at maps of at most 32² positions on any model (SD 1.x at
    512²: 32² and 16²; SDXL at 1024²: its 32² level; 64² would take gigabytes); cross-
    attention is recorded down to half the latent side (SDXL's 64² level), and is always
    controlled while τ_c lasts."""
    tokens = align_tokens([1, 2], [1, 2], 75)
    sd = AttentionControl(tokens, steps=10, latent_hw=(64, 64))
    xl = AttentionControl(tokens, steps=10, latent_hw=(128, 128), cross_until=0.0)
    assert sd.wants("a", False, 32 * 32) and not sd.wants("a", False, 64 * 64)
    assert xl.wants("a", False, 32 * 32) and not xl.wants("a", False, 64 * 64)
    assert xl.wants("a", True, 64 * 64) and not xl.wants("a", True, 128 * 128)
    assert not AttentionControl(tokens, steps=10, cross_until=0.0).wants("a", True, 64 * 64)
    assert xl.wants("a", True, 128 * 128) is False and sd.wants("a", True, 128 * 128)


def test_a_batch_is_the_pictures_its_seeds_make_alone(xl, d):
    common = dict(prompt=PROMPT, steps=3, width=64, height=64)
    batch, _ = run(xl, d, EditRequest("generate", seed=5, options={"batch_size": 2}, **common))
    second = batch.extras["batch"][0]["image"]
    alone, _ = run(xl, d, EditRequest("generate", seed=6, **common))
    assert np.abs(alone.image.astype(int) - second.astype(int)).max() <= 2
    assert not np.array_equal(batch.image, second)


def test_the_lcm_sampler_runs_on_sdxl(xl, d):
    """Few-step SDXL models (LCM, Turbo, Lightning, Hyper) sample with the lcm sampler."""
    req = EditRequest("generate", prompt=PROMPT, steps=2, guidance=1.0, options={"sampler": "lcm"})
    res, steps = run(xl, d, req)
    assert res.image.shape == (64, 64, 3) and len(steps) == 2


def test_prompt_weights_act_on_both_encoders_states(xl, d):
    """``(word:1.5)`` scales that token's concatenated hidden states 1.5 times as much as the
    others (AUTOMATIC1111's emphasis, with its mean-restoring rescale over all of them); the
    pooled vector is the plain prompt's."""
    from engine.prompts import word_positions

    plain = d.encode_text(PROMPT)
    assert torch.equal(d.encode_text("a red house beside two (pine:1.0) trees"), plain)
    text = "a red house beside two (pine:1.5) trees"
    weighted = d.encode_text(text)
    ratio = (weighted / plain)[0, :77]  # one factor per token, the same over features
    (k,) = word_positions(xl.tokenizer, text, "pine")
    torch.testing.assert_close(ratio[k] / ratio[0], torch.full_like(ratio[k], 1.5))
    torch.testing.assert_close(ratio[k + 1] / ratio[0], torch.ones_like(ratio[k]))
    dim = xl.text_encoder_2.config.projection_dim
    torch.testing.assert_close(sdxl.unpack(weighted, dim)[1], sdxl.unpack(plain, dim)[1])


def test_an_sdxl_inversion_saves_and_reloads(xl, d, inverted, tmp_path):
    inverted.save(tmp_path / "inv.pt")
    back = Inversion.load(tmp_path / "inv.pt")
    assert all(torch.equal(a, b) for a, b in zip(back.null_embeddings, inverted.null_embeddings))
    assert back.null_embeddings[0].shape == (1, 77 + sdxl.EXTRA_ROWS, 64)
