"""Prompt-to-Prompt attention control: the token map, the exactness cases the paper implies
(same prompt, re-weight 1, empty blend mask), and that the hook never outlives its job.

On builtin:tiny (real attention layers, random weights): the analytic denoiser has no
attention to control."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from attention_driver import control_for, p2p_over

from engine.algorithms.common import drive, run_to_end
from engine.algorithms.inversion import invert
from engine.algorithms.prompt_to_prompt import (
    align_tokens,
    prompt_to_prompt,
    token_positions,
)
from engine.attention import is_hooked
from engine.errors import InputError
from engine.jobs import JOB_RUNNERS, JobContext
from engine.types import EditRequest

PROMPT = "a red house beside two pine trees"


# ---- the token map -------------------------------------------------------------------------


def test_the_same_prompt_maps_every_position_to_itself():
    ids = [5, 6, 7, 8]
    t = align_tokens(ids, ids, window=10)
    assert torch.equal(t.mapper, torch.eye(12)) and not t.own.any()
    assert t.changed_source == t.changed_target == ()


def test_a_swap_of_equal_token_counts_maps_one_to_one():
    t = align_tokens([5, 6, 7], [5, 9, 7], window=10)
    assert t.mapper[2, 2] == 1 and t.mapper[:, 2].sum() == 1  # "9" reads "6"'s column
    assert t.changed_source == (2,) and t.changed_target == (2,)
    assert torch.equal(t.mapper, torch.eye(12))  # positions line up: the identity


def test_a_swap_to_more_tokens_reads_the_mean_of_the_old_word():
    t = align_tokens([5, 6, 7], [5, 8, 9, 7], window=10)  # "6" → "8 9"
    assert t.mapper[2, 2] == 1 and t.mapper[2, 3] == 1  # each new token reads all of "6"
    assert t.mapper[3, 4] == 1  # "7" moved one place right
    assert t.mapper[4, 5] == 1 and t.mapper[11, 11] == 0  # EOS from EOS; padding shifts
    t = align_tokens([5, 6, 7, 8], [5, 9, 8], window=10)  # "6 7" → "9"
    assert t.mapper[2, 2] == 0.5 and t.mapper[3, 2] == 0.5


def test_a_refinement_keeps_the_added_words_own_attention():
    t = align_tokens([5, 6, 7], [5, 6, 10, 11, 7], window=10)  # two words added
    assert t.own[3] == 1 and t.own[4] == 1 and t.mapper[:, 3:5].sum() == 0
    assert t.mapper[3, 5] == 1  # "7" follows its old column
    assert t.changed_source == () and t.changed_target == (3, 4)
    d = align_tokens([5, 6, 10, 7], [5, 6, 7], window=10)  # a word removed
    assert d.mapper[4, 3] == 1 and d.mapper[3].sum() == 0 and d.changed_source == (3,)


def test_long_prompts_align_across_windows():
    src = list(range(100, 180))  # 80 tokens: two windows of 75
    tgt = src[:78] + [999] + src[79:]
    t = align_tokens(src, tgt, window=75, windows=2)
    pos = token_positions(80, 75)
    assert pos[75] == 78  # the second window's first token, after EOS+BOS
    assert t.changed_target == (pos[78],)
    assert torch.equal(t.mapper, torch.eye(154))


# ---- exactness on builtin:tiny -------------------------------------------------------------


@pytest.fixture(scope="module")
def inverted(tiny, tiny_denoiser):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    latents = tiny.encode(image).float()
    invs = {
        m: run_to_end(invert(tiny_denoiser, latents, PROMPT, 6, 3.0, method=m))
        for m in ("direct", "negative_prompt")
    }
    return latents, invs


def test_same_prompt_with_full_injection_reproduces_the_source_exactly(
    tiny, tiny_denoiser, inverted
):
    _, invs = inverted
    inv = invs["direct"]
    control = control_for(PROMPT, PROMPT, tiny.tokenizer, cross_until=1.0, self_until=1.0)
    out = p2p_over(tiny_denoiser, inv, PROMPT, control)
    assert torch.equal(out, inv.trajectory[-1])  # the direct inversion's source, bit for bit


def test_an_empty_blend_mask_returns_the_source(tiny, tiny_denoiser, inverted):
    _, invs = inverted
    inv = invs["direct"]
    edit = "a blue house beside two pine trees"
    control = control_for(PROMPT, edit, tiny.tokenizer, blend=((), ()), blend_from=0.0)
    assert torch.equal(p2p_over(tiny_denoiser, inv, edit, control), inv.trajectory[-1])
    free = control_for(PROMPT, edit, tiny.tokenizer)  # the same edit without blending changes
    assert not torch.allclose(p2p_over(tiny_denoiser, inv, edit, free), inv.trajectory[-1])


def test_the_hooked_path_matches_the_fused_one(tiny, tiny_denoiser, inverted):
    """Attention written out (controlled layers) computes what SDPA computes: with no
    injection (τ = 0) the target branch is an ordinary re-edit."""
    from engine.algorithms.inversion import regenerate

    _, invs = inverted
    inv = invs["negative_prompt"]
    edit = "a blue house beside two pine trees"
    control = control_for(PROMPT, edit, tiny.tokenizer, cross_until=0.0, self_until=0.0)
    out = p2p_over(tiny_denoiser, inv, edit, control)
    plain = run_to_end(regenerate(tiny_denoiser, inv, tiny_denoiser.encode_text(edit)))
    assert torch.allclose(out, plain, atol=1e-4)


def test_the_source_row_is_left_out_once_its_attention_is_not_read(
    tiny, tiny_denoiser, inverted, monkeypatch
):
    """An anchored re-edit inside a painted mask (the DiffEdit blend's path) with τ_c 0.5 and
    τ_s 0.34 of 6 steps runs source and target for 3 steps, then the target alone; the
    picture is the one the source row left in would give (it is not read), and the target's
    heat maps still cover every step."""
    _, invs = inverted
    inv, d = invs["negative_prompt"], tiny_denoiser
    edit = "a blue house beside two pine trees"
    painted = torch.zeros(1, 1, *inv.trajectory[0].shape[-2:])
    painted[..., : painted.shape[-1] // 2] = 1
    rows, outputs = [], d.outputs

    def counted(x, *a, **kw):
        rows.append(len(x))
        return outputs(x, *a, **kw)

    monkeypatch.setattr(d, "outputs", counted)

    def run(read_always):
        control = control_for(PROMPT, edit, tiny.tokenizer, cross_until=0.5, self_until=0.34)
        if read_always:
            control.reads_source = lambda: True
        gen = prompt_to_prompt(
            d, inv.trajectory[0], inv.timesteps, d.encode_text(PROMPT), d.encode_text(edit),
            inv.guidance, inv.null_embeddings, control, anchor=inv.trajectory, mask=painted,
        )  # fmt: skip
        return run_to_end(gen), control

    kept, with_source = run(True)
    assert rows == [3] * 6
    rows.clear()
    out, control = run(False)
    assert rows == [3, 3, 3, 2, 2, 2]
    assert torch.allclose(out, kept, atol=1e-5)
    assert torch.allclose(control.maps[1], with_source.maps[1], atol=1e-5)
    assert not torch.allclose(control.maps[0], with_source.maps[0])  # 3 steps of 6


def _run(tiny, d, req, cancel_after=None):
    ctx = JobContext(tiny, d)
    seen = {"n": 0}

    def check():
        if cancel_after is not None and seen["n"] >= cancel_after:
            raise KeyboardInterrupt

    def progress(p):
        seen["n"] += 1

    return drive(JOB_RUNNERS[req.method](ctx, req), progress, check)


def _edit_generated(prompt: str, steps: int, seed: int) -> EditRequest:
    """Re-edit of the 64² image builtin:tiny generates for PROMPT at guidance 3."""
    return EditRequest(
        "edit_generated",
        prompt=prompt,
        steps=steps,
        guidance=3.0,
        seed=seed,
        width=64,
        height=64,
        options={"source_prompt": PROMPT},
    )


def test_a_weight_of_one_is_the_identity(tiny, tiny_denoiser):
    def edit(prompt):
        return _run(tiny, tiny_denoiser, _edit_generated(prompt, 4, 1)).image

    plain = edit("a blue house beside two pine trees")
    assert np.array_equal(edit("a (blue:1.0) house beside two pine trees"), plain)
    assert not np.array_equal(edit("a (blue:2.0) house beside two pine trees"), plain)


def test_a_weight_of_zero_is_the_word_left_out(tiny, tiny_denoiser):
    def edit(prompt):
        return _run(tiny, tiny_denoiser, _edit_generated(prompt, 4, 1))

    weighted = edit("a (blue:0) house beside two (pine:1.5) trees")
    left_out = edit("a house beside two (pine:1.5) trees")
    assert np.array_equal(weighted.image, left_out.image)
    assert "blue" not in weighted.extras["attention_maps"]  # no map for a word not there


def test_words_the_edit_leaves_out_keep_their_map_before_the_edit(tiny, tiny_denoiser):
    """For the heat map of a word weighted 0 (or swapped out): the source branch's map of
    each source word the edit lacks, the same whatever the edit is."""

    def edit(prompt):
        return _run(tiny, tiny_denoiser, _edit_generated(prompt, 4, 1)).extras

    silenced = edit("a (red:0) house beside two pine trees")
    swapped = edit("a green house beside two fir trees")
    assert set(silenced["source_attention_maps"]) == {"red"}
    assert set(swapped["source_attention_maps"]) == {"red", "pine"}
    red = silenced["source_attention_maps"]["red"]
    assert red.dtype == np.float32 and red.max() == 1.0 and red.min() >= 0
    assert red.std() > 0  # a map, not a constant
    # the source branch does not depend on the edit: the same map from either edit
    np.testing.assert_allclose(swapped["source_attention_maps"]["red"], red, atol=1e-5)
    assert "red" not in silenced["attention_maps"] and "green" in swapped["attention_maps"]


def test_the_hook_is_gone_after_a_job_and_after_a_cancel(tiny, tiny_denoiser):
    def generate():
        req = EditRequest("generate", prompt=PROMPT, steps=3, seed=2, width=64, height=64)
        return _run(tiny, tiny_denoiser, req).image

    before = generate()
    edit = _edit_generated("a blue house beside two pine trees", 5, 2)
    result = _run(tiny, tiny_denoiser, edit)
    assert "blue" in result.extras["attention_maps"]
    assert not is_hooked(tiny.unet)
    assert np.array_equal(generate(), before)  # a plain generate is bit-identical after
    with pytest.raises(KeyboardInterrupt):
        _run(tiny, tiny_denoiser, edit, cancel_after=2)
    assert not is_hooked(tiny.unet)
    assert np.array_equal(generate(), before)


def test_editing_a_generated_image_with_its_own_prompt_gives_it_back(tiny, tiny_denoiser):
    common = dict(prompt=PROMPT, steps=4, guidance=3.0, seed=3, width=64, height=64)
    plain = _run(tiny, tiny_denoiser, EditRequest("generate", **common)).image
    req = EditRequest("edit_generated", **common, options={"source_prompt": PROMPT})
    same = _run(tiny, tiny_denoiser, req).image
    assert np.abs(same.astype(int) - plain.astype(int)).max() <= 2  # 8-bit rounding only


def _steps_and_result(tiny, d, req):
    steps = []
    result = drive(JOB_RUNNERS[req.method](JobContext(tiny, d), req), steps.append)
    return steps, result


def test_edit_prompt_blends_inside_diffedits_region_of_the_picture(
    tiny, tiny_denoiser, guided_mask_edge
):
    """Blend region diffedit (the default): DiffEdit's map of the two prompts on the given
    picture comes first, shown as the blend mask while the edit runs; outside its soft edge
    the result is the picture, bit for bit. Without the picture the generation is replayed
    first, and the result is the same."""
    from engine.imageops import dilate

    common = dict(steps=4, guidance=3.0, seed=3, width=64, height=64)
    picture = _run(tiny, tiny_denoiser, EditRequest("generate", prompt=PROMPT, **common)).image
    # the random model's map is broad: whole_picture 1 keeps the blend local
    local = {"source_prompt": PROMPT, "whole_picture": 1.0}
    edit = "a blue house beside two pine trees"
    req = EditRequest("edit_generated", prompt=edit, image=picture, options=local, **common)
    steps, out = _steps_and_result(tiny, tiny_denoiser, req)
    labels = [s.label for s in steps]
    assert labels[0] == "mask" and labels.count("re-edit") == 4
    assert all(s.mask is not None for s in steps if s.label == "re-edit")
    blend = out.extras["blend_mask"]
    assert blend.shape == (64, 64) and 0 < (blend > 0).mean() < 1
    far = dilate(blend.astype(np.float32) / 255, 7) == 0
    assert far.any() and np.array_equal(out.image[far], picture[far])
    assert not np.array_equal(out.image, picture)
    replayed = EditRequest("edit_generated", prompt=edit, options=local, **common)
    steps, again = _steps_and_result(tiny, tiny_denoiser, replayed)
    assert [s.label for s in steps].count("source") == 4
    assert np.array_equal(again.image, out.image)
    assert np.array_equal(again.extras["blend_mask"], blend)
    # attention's blend: no map first, the words' attention decides
    words = EditRequest(
        "edit_generated",
        prompt=edit,
        image=picture,
        options={**local, "blend_mask": "attention"},
        **common,
    )
    steps, att = _steps_and_result(tiny, tiny_denoiser, words)
    assert "mask" not in [s.label for s in steps] and "blend_mask" in att.extras


@pytest.mark.parametrize("method", ["edit_generated", "reedit"])
def test_an_empty_diffedit_region_is_an_error_not_an_unchanged_picture(
    tiny, tiny_denoiser, monkeypatch, method
):
    """When DiffEdit finds nowhere the prompts disagree, the blend would keep every pixel:
    the user is told so (and what to do) instead of getting their picture back as an edit."""
    import engine.jobs.attention_edits as attention_edits
    import engine.jobs.edits as edits

    def nothing_found(ctx, image, *args):
        yield from ()
        return np.zeros(image.shape[:2], np.float32), 0.0, True

    monkeypatch.setattr(attention_edits, "diffedit_blend", nothing_found)
    monkeypatch.setattr(edits, "diffedit_blend", nothing_found)
    common = dict(steps=4, guidance=3.0, seed=3, width=64, height=64)
    picture = _run(tiny, tiny_denoiser, EditRequest("generate", prompt=PROMPT, **common)).image
    if method == "edit_generated":
        req = EditRequest(
            method,
            prompt="a blue house",
            image=picture,
            options={"source_prompt": PROMPT},
            **common,
        )
    else:
        inv_req = EditRequest("invert", prompt=PROMPT, image=picture, steps=4, guidance=3.0)
        inv = _run(tiny, tiny_denoiser, inv_req).extras["inversion"]
        req = EditRequest(method, prompt="a blue house", options={"inversion": inv})
    with pytest.raises(InputError, match="found nowhere that the new prompt changes"):
        _run(tiny, tiny_denoiser, req)


def test_edit_prompt_of_the_whole_picture_runs_without_blend_and_says_so(tiny, tiny_denoiser):
    """A broad map (whole_picture 0 makes every map broad) turns local blend off: the same
    picture as with local blend off, the parameters and a notice say so; a picture of
    another size is refused in a sentence."""
    common = dict(steps=3, guidance=3.0, seed=4, width=64, height=64)
    picture = _run(tiny, tiny_denoiser, EditRequest("generate", prompt=PROMPT, **common)).image
    edit = "a blue house beside two pine trees"

    def edit_with(**options):
        opts = {"source_prompt": PROMPT, **options}
        req = EditRequest("edit_generated", prompt=edit, image=picture, options=opts, **common)
        return _run(tiny, tiny_denoiser, req)

    broad = edit_with(whole_picture=0.0)
    assert broad.parameters["blend_region"] == "whole picture"
    assert "without local blend" in broad.extras["notice"] and "blend_mask" not in broad.extras
    plain = edit_with(local_blend=False)
    assert np.array_equal(broad.image, plain.image) and "blend_region" not in plain.parameters
    small = EditRequest(
        "edit_generated",
        prompt=edit,
        image=picture[:32],
        options={"source_prompt": PROMPT},
        **common,
    )
    with pytest.raises(InputError, match="generated at 64x64"):
        _run(tiny, tiny_denoiser, small)


def test_v_prediction_models_take_the_same_paths(tiny):
    """On a v-prediction reading of tiny: the anchored (3-row) path with no injection is an
    ordinary re-edit, and a direct inversion with the same prompt comes back exactly."""
    import dataclasses

    from engine.algorithms.inversion import regenerate
    from engine.denoiser import Denoiser

    cfg = {**tiny.scheduler_config, "prediction_type": "v_prediction"}
    d = Denoiser(dataclasses.replace(tiny, scheduler_config=cfg))
    assert d.schedule.prediction_type == "v_prediction"
    latents = tiny.encode(np.full((64, 64, 3), 120, np.uint8)).float()
    edit = "a blue house beside two pine trees"
    for method in ("negative_prompt", "direct"):
        inv = run_to_end(invert(d, latents, PROMPT, 5, 3.0, method=method))
        free = control_for(PROMPT, edit, tiny.tokenizer, cross_until=0.0, self_until=0.0)
        plain = run_to_end(regenerate(d, inv, d.encode_text(edit)))
        assert torch.allclose(p2p_over(d, inv, edit, free), plain, atol=1e-4), method
    same = control_for(PROMPT, PROMPT, tiny.tokenizer, cross_until=1.0, self_until=1.0)
    assert torch.equal(p2p_over(d, inv, PROMPT, same), inv.trajectory[-1])


def test_a_painted_mask_replaces_or_intersects_the_blend(tiny, tiny_denoiser, inverted):
    """Direct inversion, blend words with an empty region, a painted mask over the left half:
    'replace' edits inside the painted mask only; 'intersect' edits nowhere."""
    _, invs = inverted
    inv, d = invs["direct"], tiny_denoiser
    edit = "a blue house beside two pine trees"
    painted = torch.zeros(1, 1, *inv.trajectory[0].shape[-2:])
    painted[..., : painted.shape[-1] // 2] = 1

    def run(intersect):
        control = control_for(PROMPT, edit, tiny.tokenizer, blend=((), ()), blend_from=0.0)
        gen = prompt_to_prompt(
            d, inv.trajectory[0], inv.timesteps, d.encode_text(PROMPT), d.encode_text(edit),
            inv.guidance, inv.null_embeddings, control, anchor=inv.trajectory, correct=True,
            mask=painted, intersect=intersect,
        )  # fmt: skip
        return run_to_end(gen)

    source, inside = inv.trajectory[-1], painted.bool().expand_as(inv.trajectory[-1])
    replaced = run(False)
    assert torch.equal(replaced[~inside], source[~inside])
    assert not torch.allclose(replaced[inside], source[inside])
    assert torch.equal(run(True), source)
