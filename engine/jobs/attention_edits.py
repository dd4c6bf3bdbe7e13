"""Re-edits under Prompt-to-Prompt attention control: of an inverted photo (the re-edit
job's ``control=p2p``) and of a generated image (``edit_generated``: its seed and settings
replay the original beside the edit). Options: ``engine.methods.ATTENTION_CONTROL``."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .. import imageops
from ..algorithms.common import randn
from ..algorithms.generate import generate
from ..algorithms.inversion import Inversion
from ..algorithms.prompt_to_prompt import (
    AttentionControl,
    align_tokens,
    prompt_to_prompt,
    token_positions,
)
from ..errors import InputError
from ..methods import finds_blend_region
from ..prompts import plain_text, token_weights, without_silenced, word_positions
from ..types import EditRequest
from .base import (
    JobContext,
    JobResult,
    Options,
    Prepared,
    finish_image,
    job,
    seeded,
    start_job,
)


def attention_control(
    ctx: JobContext,
    o: Options,
    source: str,
    target: str,
    masked: bool = False,
    intersect: bool = False,
) -> AttentionControl:
    """The controller for a source and a target prompt (the target's ``(word:w)`` weights
    become attention re-weighting), from the job's options. Long prompts are aligned across
    their windows; blend words are looked up in the first window (75 tokens). ``masked``: the
    job has a mask (painted, or DiffEdit's), which replaces the attention blend (none is
    formed) unless it is to ``intersect`` it."""
    tok = ctx.bundle.tokenizer
    src, tgt = token_weights(tok, source), token_weights(tok, target)
    window, windows = tok.model_max_length - 2, ctx.denoiser.chunks
    tokens = align_tokens(src.ids, tgt.ids, window, windows)
    weights = None
    if any(w != 1.0 for w in tgt.weights):
        weights = torch.ones(tokens.own.shape)
        weights[token_positions(len(tgt.weights), window)] = torch.tensor(tgt.weights)
    blend = None
    if o.flag("local_blend") and (intersect or not masked):
        words = [w.strip() for w in o.text("blend_words").split(",") if w.strip()]
        if words:
            pos_s = tuple(p for w in words for p in word_positions(tok, source, w))
            pos_t = tuple(p for w in words for p in word_positions(tok, target, w))
            if not pos_s and not pos_t:
                raise InputError(
                    f"None of the blend words ({', '.join(words)}) is in either prompt."
                )
            blend = (pos_s, pos_t)
        else:
            at = token_positions(len(tgt.weights), window)
            reweighted = tuple(at[k] for k, w in enumerate(tgt.weights) if w != 1.0)
            blend = (tokens.changed_source, tokens.changed_target + reweighted)
    return AttentionControl(
        tokens,
        steps=1,
        cross_until=o.number("keep_layout"),
        self_until=o.number("keep_detail"),
        weights=weights,
        blend=blend,
        threshold=o.number("blend_threshold"),
        prompt_end=1 + min(window, max(len(src.ids), len(tgt.ids))),
    )


def word_maps(
    ctx: JobContext, control: AttentionControl, text: str, branch: int = 1, skip=()
) -> dict[str, np.ndarray]:
    """Each word of ``text`` (the target prompt, ``branch`` 1, or the source's, 0) but those
    in ``skip`` → its cross-attention over the image (float32 in [0, 1], at the blend side),
    summed over its tokens, layers and steps; for the editor's heat map of a selected word."""
    maps = control.heat_maps(branch)
    out: dict[str, np.ndarray] = {}
    if maps is None:
        return out
    for word in dict.fromkeys(plain_text(text).split()):
        pos = word_positions(ctx.bundle.tokenizer, text, word) if word not in skip else None
        if pos:
            m = maps[list(pos)].sum(0)
            out[word] = (m / m.max().clamp_min(1e-12)).cpu().numpy().astype(np.float32)
    return out


def attention_extras(
    ctx: JobContext,
    control: AttentionControl,
    target: str,
    size: tuple[int, int],
    source: str | None = None,
) -> dict:
    """What a controlled edit hands the editor: each word's heat map (``attention_maps``);
    for the words of ``source`` the edit left out (a word weighted 0, a swapped-out word)
    their maps in the source branch (``source_attention_maps``: where the word was); and
    the final local-blend mask at image ``size`` (``blend_mask``, uint8 0/255; absent when
    blending was off or a painted mask replaced it)."""
    extras: dict = {"attention_maps": word_maps(ctx, control, target)}
    if source is not None:
        kept = set(plain_text(target).split())
        extras["source_attention_maps"] = word_maps(ctx, control, source, 0, kept)
    m = control.blend_mask()
    if m is not None:
        m = imageops.resize(m[0, 0].cpu().numpy().astype(np.float32), size)
        extras["blend_mask"] = np.where(m >= 0.5, 255, 0).astype(np.uint8)
    return extras


WHOLE_PICTURE_NOTICE = (
    "The new prompt changes the whole picture (DiffEdit's map of the two prompts is broad), "
    "so this edit ran without local blend; paint a mask to keep parts of it."
)


def diffedit_blend(ctx, image, working_hw, latents, reference: str, prompt: str, steps: int):
    """Local blend's region from DiffEdit's mask (Blend region "diffedit"): where ``prompt``
    and ``reference`` (the source prompt) disagree about ``image``, as the DiffEdit mask job
    finds it with its defaults (a ``steps`` chain, seed 0, so an edit is repeatable);
    ``latents``: the image's at ``working_hw``. Yields the map as it forms; returns the soft
    mask at the image's size, the share of the picture where the map is above a quarter of
    its peak (how broad the disagreement is), and whether the two prompts differ at all
    (``BlendRegion.with_map`` takes the three)."""
    from .edits import _mask_phase  # (edits imports this module)

    req = EditRequest(
        "diffedit_mask",
        image=image,
        prompt=prompt,
        steps=steps,
        seed=0,
        options={"reference_prompt": reference},
    )
    prep = Prepared(image, imageops.resize(image, working_hw), latents, None, None, None)
    soft, raw = yield from _mask_phase(ctx, req, Options(req.method, req.options), prep)
    return soft, float((raw > 0.25).mean()), prompt != reference


@dataclasses.dataclass(frozen=True)
class BlendRegion:
    """What limits an attention-controlled edit. ``mask``: float at image size (painted,
    found by DiffEdit, or the two multiplied); ``intersect``: the attention blend is still to
    be multiplied with it; ``found``: DiffEdit found it (so it is shown to the user);
    ``whole``: the edit is of the whole picture, so it runs without local blend (in
    ``options``)."""

    options: Options
    mask: np.ndarray | None
    intersect: bool
    found: bool = False
    whole: bool = False

    def wants_diffedit(self) -> bool:
        return finds_blend_region(self.options.get, self.mask is not None)

    def with_map(self, region: np.ndarray, broad: float, changed: bool) -> BlendRegion:
        """Blend inside DiffEdit's ``region`` (within a painted mask), unless the map is
        ``broad``: then the prompts disagree about (nearly) all of the picture, as for the
        time of day, and a blend would keep the old light, so the whole picture may change
        (a painted mask still limits it). ``changed``: the prompt differs from the source's,
        so an empty region is an error (with the same prompt the picture comes back)."""
        if broad > self.options.number("whole_picture"):
            o = Options(self.options.method, {**self.options.options, "local_blend": False})
            return BlendRegion(o, self.mask, False, whole=True)
        mask = region if self.mask is None else self.mask * region
        if changed and not (mask >= 0.5).any():  # the edit would give the picture back
            where = "" if self.mask is None else " inside the painted mask"
            raise InputError(
                f"DiffEdit found nowhere{where} that the new prompt changes (its region is "
                "empty), so the edit would change nothing; paint a mask where it should "
                "change, or set Blend region to attention."
            )
        return BlendRegion(self.options, mask, False, found=True)

    def extras(self) -> dict:
        if self.whole:
            return {"notice": WHOLE_PICTURE_NOTICE}
        if self.found:
            return {"blend_mask": np.where(self.mask >= 0.5, 255, 0).astype(np.uint8)}
        return {}


def reedit_with_control(
    ctx: JobContext,
    o: Options,
    inv: Inversion,
    prompt: str,
    mask: torch.Tensor | None,
    start: int,
    intersect: bool,
    found: bool = False,
):
    """The re-edit job's controlled path: the source branch replays the inversion. ``mask``
    replaces the attention blend, or with ``intersect`` is multiplied with it; ``found``:
    the mask was found for the user (DiffEdit's), so it is shown as the blend mask."""
    control = attention_control(ctx, o, inv.prompt, prompt, mask is not None, intersect)
    d = ctx.denoiser
    source = d.encode_text(inv.prompt)
    target = d.encode_text(plain_text(prompt))  # weights act on attention, not the text
    latents = yield from prompt_to_prompt(
        d,
        inv.trajectory[start],
        inv.timesteps[start:],
        source,
        target,
        inv.guidance,
        list(inv.null_embeddings)[start:],
        control,
        anchor=inv.trajectory[start:],
        correct=inv.method == "direct",
        mask=mask,
        intersect=intersect,
        show_mask=found,
    )
    return latents, control


@job("edit_generated")
def run_edit_generated(ctx: JobContext, req: EditRequest):
    """Edit a generated image by editing its prompt: its seed, size, steps, guidance and
    negative prompt replay the original generation as the source branch, the new prompt
    runs beside it under attention control (no inversion needed). ``req.image``, when given,
    is that generated picture: DiffEdit's blend region is found on it and the result keeps
    its pixels outside the region; without it the generation is replayed first when the
    region needs it."""
    o = start_job(ctx, req)
    source_prompt = o.text("source_prompt")
    if not source_prompt:
        raise InputError("Give the prompt the image was generated with (source_prompt).")
    ctx.denoiser.fit_prompts(req.prompt, req.negative_prompt, source_prompt)
    prompt = without_silenced(req.prompt)  # (word:0): the edit is without the word
    b, d = ctx.bundle, ctx.denoiser
    h, w = req.height or b.native_size, req.width or b.native_size
    hw = imageops.working_size(h, w, b.native_size, b.vae_factor)
    image = None if req.image is None else imageops.check_image(req.image)
    if image is not None and image.shape[:2] != (h, w):
        raise InputError(
            f"The image is {image.shape[1]}x{image.shape[0]} but was generated at {w}x{h}; "
            "Edit prompt replays the generation at its size."
        )
    mask = imageops.mask_to_float(req.mask, (h, w))
    if mask is not None and not mask.any():
        raise InputError("The mask is empty: paint where the edit should change.")
    null = d.encode_negative(req.negative_prompt) if req.guidance != 1.0 else None
    blend = BlendRegion(o, mask, o.choice("painted_mask") == "intersect")
    if blend.wants_diffedit():
        if image is None:  # the source picture, replayed as Generate made it
            cond = d.condition(source_prompt, req.negative_prompt, req.guidance)
            shape = (1, b.latent_channels, hw[0] // b.vae_factor, hw[1] // b.vae_factor)
            eta = o.number("eta")
            source = generate(d, cond, shape, req.steps, req.guidance, seeded(req), eta, "source")
            x0 = yield from source
            image = finish_image(ctx, x0, None, (h, w))
        # encoded as a given picture is (not the replay's own latents), so both paths agree
        latents = b.encode(imageops.resize(image, hw)).float()
        found = diffedit_blend(ctx, image, hw, latents, source_prompt, prompt, req.steps)
        blend = blend.with_map(*(yield from found))
    generator = seeded(req)
    f = b.vae_factor
    x = randn((1, b.latent_channels, hw[0] // f, hw[1] // f), generator, d.device)
    control = attention_control(
        ctx, blend.options, source_prompt, prompt, blend.mask is not None, blend.intersect
    )
    mask_l = None
    if blend.mask is not None:
        # a found region gets the re-edit's default room of one latent cell to blend in
        mask_l = imageops.latent_mask(imageops.resize(blend.mask, hw), x, grow=int(blend.found))
    latents = yield from prompt_to_prompt(
        d,
        x,
        d.schedule.timesteps(req.steps),
        d.encode_text(source_prompt),
        d.encode_text(plain_text(prompt)),
        req.guidance,
        [null] * req.steps,
        control,
        mask=mask_l,
        intersect=blend.intersect,
        generator=generator,
        eta=o.number("eta"),
        show_mask=blend.found,
    )
    # outside the mask, the picture the user has, pixel for pixel
    keep = None
    if image is not None and blend.mask is not None:
        keep = Prepared(image, None, None, blend.mask, None, None)
    out = finish_image(ctx, latents, keep, (h, w))
    extras = {**attention_extras(ctx, control, prompt, (h, w), source_prompt), **blend.extras()}
    params = {"size": f"{w}x{h}", "source_prompt": source_prompt}
    if blend.whole:
        params["blend_region"] = "whole picture"
    return JobResult(out, params, extras)
