"""Jobs for RePaint, DiffEdit (mask and edit), inversion and re-editing.

Options (``EditRequest.options``), their defaults and ranges are declared in
``engine.methods``; every runner validates them all before any work and raises ``InputError``
with a sentence a person can act on.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch

from .. import imageops, images
from ..algorithms.diffedit import diffedit, diffedit_mask, guided_filter, otsu_threshold
from ..algorithms.differential import differential, join_counts
from ..algorithms.inversion import Inversion, invert, regenerate
from ..algorithms.repaint import repaint, repaint_calls
from ..denoiser import inpaint_inputs
from ..errors import FileError, InputError
from ..prompts import without_silenced
from ..segments import picture_regions, snap_to_regions
from ..types import EditRequest
from .attention_edits import BlendRegion, attention_extras, diffedit_blend, reedit_with_control
from .base import (
    JobContext,
    JobResult,
    Options,
    Prepared,
    check_finite,
    finish_image,
    job,
    prepare,
    seeded,
    start_job,
)


def _size_params(prep_or_hw) -> dict[str, str]:
    h, w = prep_or_hw if isinstance(prep_or_hw, tuple) else prep_or_hw.original.shape[:2]
    return {"size": f"{w}x{h}"}


# ---- RePaint -------------------------------------------------------------------------------


@job("repaint")
def run_repaint(ctx: JobContext, req: EditRequest):
    """RePaint: fill the masked area; req.strength is not used (the chain runs in full, or
    from the ``denoise`` option's strength). With ``only_masked`` the job works on a crop
    around the mask (plus ``padding`` px) at the full working size and pastes it back:
    pixels outside the crop are the input's, bit for bit."""
    o = start_job(ctx, req)
    if req.mask is None:
        raise InputError("RePaint fills in a masked area: paint a mask over it first.")
    image = imageops.composite_strokes(imageops.check_image(req.image), req.strokes)
    box = None
    if o.flag("only_masked"):
        mask = imageops.mask_to_float(req.mask, image.shape[:2])
        box = imageops.crop_box(mask > 0, o.number("padding"))
    if box is None:
        out, calls = yield from _repaint_area(ctx, req, o)
    else:
        y0, x0, y1, x1 = box
        crop = dataclasses.replace(
            req,
            image=image[y0:y1, x0:x1],
            strokes=None,
            mask=np.asarray(req.mask)[y0:y1, x0:x1],
        )
        part, calls = yield from _repaint_area(ctx, crop, o)
        out = image.copy()
        out[y0:y1, x0:x1] = part
    params = {**_size_params(image.shape[:2]), "unet_calls": calls, "strength": o.number("denoise")}
    if not o.flag("soft_mask"):
        params["jump_n_sample"] = resamples(o, ctx.bundle)  # the model's default is recorded
    if box is not None:
        params["crop"] = f"{box[1]},{box[0]},{box[3]},{box[2]}"  # x0,y0,x1,y1
    return JobResult(out, params)


def repaint_feather(asked: float, hw: tuple[int, int], vae_factor: int) -> float:
    """Inpaint's mask blur in px: as asked, or automatic (0): 1 % of the picture's side and
    at least half a latent cell, since the decoded area differs from the original in
    latent-cell blocks. At 128 px that is 4 px, not 2: on 40 calibration scenes (740,000+)
    the inpainting model's seam ratio fell 1.83 -> 1.14 (the VAE floor 1.53 -> 1.01), the
    new object seen in 70 % against 72.5 %; from 400 px on it is the 1 % as before."""
    return asked or max(0.01 * max(hw), vae_factor / 2)


# RePaint's resamples with an inpainting model when the request names none
INPAINTING_MODEL_RESAMPLES = 1


def resamples(o: Options, bundle) -> int:
    """RePaint's resamples as asked; unasked, 1 with an inpainting model: it sees the known
    area itself, and on issue 20's final scenes resampling on top found no more new objects
    (73 % both; in the next report 70 % against 77 %) at 2.3-2.5x the time."""
    if "jump_n_sample" not in o.options and bundle.inpainting:
        return INPAINTING_MODEL_RESAMPLES
    return o.number("jump_n_sample")


def _repaint_area(ctx: JobContext, req: EditRequest, o: Options):
    """RePaint over the request's whole image; (the result at its size, model calls)."""
    j, r = o.number("jump_length"), resamples(o, ctx.bundle)
    prep = prepare(ctx, req, grow=o.number("mask_grow"))
    cond = ctx.denoiser.condition(req.prompt, req.negative_prompt, req.guidance)
    strength, content = o.number("denoise"), o.choice("masked_content")
    b = ctx.bundle
    # an inpainting UNet also reads the mask and the image with the masked area blanked
    extra = inpaint_inputs(b, prep.working, prep.mask_working) if b.inpainting else None
    if o.flag("soft_mask"):
        return (yield from _soft_inpaint(ctx, req, o, prep, cond, extra))
    start, gen = None, seeded(req)
    if strength < 1.0 and content != "original":
        if content == "fill":
            filled = imageops.fill_hole(prep.working, prep.mask_working)
            start = ctx.bundle.encode(filled).float()
        else:  # noise: the masked latents replaced by Gaussian noise (from the job's seed)
            start = torch.randn(prep.latents.shape, generator=gen).to(prep.latents)
        m = prep.mask_latent
        start = m * start + (1 - m) * prep.latents  # outside the mask: the original
    with ctx.denoiser.inpainting(extra):
        latents = yield from repaint(
            ctx.denoiser,
            prep.latents,
            prep.mask_latent,
            cond,
            req.steps,
            req.guidance,
            gen,
            j,
            r,
            o.choice("sampler"),
            o.number("eta"),
            strength,
            start,
        )
    feather = repaint_feather(o.number("feather"), prep.original.shape[:2], b.vae_factor)
    image = finish_image(ctx, latents, prep, prep.original.shape[:2], feather)
    n = len(ctx.denoiser.schedule.timesteps_for_strength(req.steps, strength))
    return image, repaint_calls(n, j, r) if n else 0


def _soft_inpaint(ctx: JobContext, req: EditRequest, o: Options, prep: Prepared, cond, extra):
    """Differential inpainting: the mask's grey levels (area-averaged to latent cells) are
    each cell's share of the denoising strength. The result is pasted wherever the mask is
    above 0 (the grey levels already acted in the denoising; a pixel at 0 is the input's)."""
    eta = 1.0 if o.choice("sampler") == "ddpm" else o.number("eta")
    with ctx.denoiser.inpainting(extra):
        latents = yield from differential(
            ctx.denoiser,
            prep.latents,
            prep.mask_latent,
            cond,
            req.steps,
            o.number("denoise"),
            req.guidance,
            seeded(req),
            eta,
        )
    touched = dataclasses.replace(prep, mask=(prep.mask > 0).astype(np.float32))
    hw = prep.original.shape[:2]
    feather = repaint_feather(o.number("feather"), hw, ctx.bundle.vae_factor)
    image = finish_image(ctx, latents, touched, hw, feather)
    calls = join_counts(prep.mask_latent, req.steps, o.number("denoise"))
    return image, int(calls.max())


# ---- DiffEdit ------------------------------------------------------------------------------

# the guided filter's regularisation (map units², guide in [0, 1]). With a grey guide, mean
# IoU on 40 calibration scenes 0.546 / 0.575 / 0.594 / 0.598 at 1e-1 / 1e-2 / 1e-3 / 1e-4
# (radius one latent cell; half a cell 0.567, two cells 0.456). With the colour guide (now):
# 0.617 / 0.613 / 0.610 at 1e-3 / 1e-4 / 1e-5 on the same scenes; on 40 development scenes
# 0.660 at 1e-3, 0.662 at 1e-4 (grey: 0.612, 0.619)
GUIDED_EPS = 1e-4
# how much of a picture region must lie in the guided mask for "segments" to take it: mean
# IoU on 80 calibration scenes (860,000+ / 880,000+) 0.661 / 0.678 / 0.659 / 0.647 at 0.2 /
# 0.3 / 0.4 / 0.5 (regions taken whole), against 0.610 for the guided mask itself. On 40
# development scenes (3,500,000+) that gained only 0.009 (walls lost 0.026: long strips of
# horizon joined the mask), so a region is now taken up to one latent cell beyond the guided
# mask: calibration 0.681 / 0.716, development 0.679 against the guided mask's 0.662
REGION_SHARE = 0.3


def _overlay(working: np.ndarray, colour=(255, 40, 40), alpha: float = 0.55):
    """A renderer for mask previews: the working image tinted where the map is high."""
    base = working.astype(np.float32)
    tint = np.asarray(colour, dtype=np.float32)

    def render(m: np.ndarray) -> np.ndarray:
        m = imageops.resize(m.astype(np.float32), working.shape[:2])[..., None] * alpha
        return (base * (1 - m) + tint * m).round().astype(np.uint8)

    return render


def _mask_phase(ctx: JobContext, req: EditRequest, o: Options, prep: Prepared):
    """Run DiffEdit's mask estimation; returns (soft mask at original size, raw map there)."""
    d = ctx.denoiser
    t = d.schedule.timesteps_for_strength(req.steps, o.number("mask_strength"))[0]
    query, reference = d.encode_text(req.prompt), d.encode_text(o.text("reference_prompt"))
    est = yield from diffedit_mask(
        d,
        prep.latents,
        query,
        reference,
        t,
        seeded(req),
        o.number("n_samples"),
        o.number("threshold"),
        o.number("batch_size"),
        _overlay(prep.working),
    )
    check_finite(est.map, "DiffEdit mask map", ctx)
    diff_map = est.map[0, 0].cpu().numpy()
    hw = prep.original.shape[:2]
    binary = mask_from_map(
        diff_map,
        prep.working,
        ctx.bundle.vae_factor,
        o.number("threshold"),
        o.choice("mask_threshold"),
        o.choice("mask_upsampling"),
    )
    f = ctx.bundle.vae_factor
    soft = imageops.resize(imageops.blur(binary, f / 4), hw)  # a soft edge for blending
    raw = imageops.resize(diff_map, hw)
    return soft, raw


def mask_from_map(
    diff_map: np.ndarray,
    working: np.ndarray,
    f: int,
    threshold: float,
    mode: str = "fixed",
    upsampling: str = "bilinear",
    eps: float | None = None,
    radius: int | None = None,
) -> np.ndarray:
    """DiffEdit's latent-resolution map (``diff_map``, hxw in [0, 1]) → a binary mask at the
    working image's size (float 0/1).

    The map is interpolated to pixels and thresholded there, not on the latent cells, so the
    edge falls between cell centres where the evidence says. ``upsampling`` "bilinear":
    bilinear, then a blur over half a latent cell (on 20 demo-world calibration scenes, seeds
    500,000+ / 510,000+, this raised the mean IoU from 0.52 to 0.55 at the paper's threshold);
    "guided": the bilinear map through a guided filter with the colour image as guide (He et
    al. 2010), so the edge follows the picture's edges; "segments": the guided mask, then
    every region of the picture (``segments.picture_regions``) at least ``REGION_SHARE``
    inside it taken whole up to one latent cell beyond the guided mask, and every other
    region left out. ``mode`` "fixed" thresholds at ``threshold`` (the paper: 0.5); "otsu"
    at the threshold that best splits this map."""
    fine = imageops.resize(diff_map.astype(np.float32), working.shape[:2])
    if upsampling in ("guided", "segments"):
        colour = working.astype(np.float32) / 255
        fine = guided_filter(colour, fine, radius or f, GUIDED_EPS if eps is None else eps)
    else:
        fine = imageops.blur(fine, f / 2)
    cut = otsu_threshold(fine) if mode == "otsu" else threshold
    mask = (fine > cut).astype(np.float32)
    if upsampling == "segments":
        # the map knows where things are to about one latent cell, so snapping may move the
        # mask's edge by up to a cell: a long strip of sky the mask touches is not all taken
        near = imageops.dilate(mask, f) > 0
        snapped = snap_to_regions(picture_regions(working), mask, REGION_SHARE) & near
        # no region covered enough (a small find inside a large region): keep what was found
        mask = snapped if snapped.any() else mask > 0
    return mask.astype(np.float32)


def _u8(m: np.ndarray) -> np.ndarray:
    return (np.asarray(m, dtype=np.float32).clip(0, 1) * 255).round().astype(np.uint8)


@job("diffedit_mask")
def run_diffedit_mask(ctx: JobContext, req: EditRequest):
    """DiffEdit step 1 only. Finished.image: the mask over the image; extras["mask"]: the
    soft mask (uint8 HxW, 255 = edit), extras["mask_map"]: the unthresholded map."""
    o = start_job(ctx, req)
    prep = prepare(ctx, dataclasses.replace(req, mask=None))
    soft, raw = yield from _mask_phase(ctx, req, o, prep)
    image = _overlay(prep.original)(soft)
    extras = {"mask": _u8(soft), "mask_map": _u8(raw)}
    return JobResult(image, {**_size_params(prep), "mask_area": float(soft.mean())}, extras)


@job("diffedit")
def run_diffedit(ctx: JobContext, req: EditRequest):
    """DiffEdit: the mask (computed first when req.mask is None), then the masked edit to
    depth req.strength. extras["mask"] holds the mask used."""
    o = start_job(ctx, req)
    d = ctx.denoiser
    grow = o.number("mask_grow")
    prep = prepare(ctx, req, grow=grow)
    if prep.mask is None:
        soft, _ = yield from _mask_phase(ctx, req, o, prep)
        if not soft.any():
            raise InputError(
                "DiffEdit found nothing to change for this prompt (the mask is empty); "
                "try another prompt, a lower mask threshold, or paint a mask."
            )
        mask_w = imageops.resize(soft, prep.working.shape[:2])
        prep = dataclasses.replace(
            prep,
            mask=soft,
            mask_working=mask_w,
            mask_latent=imageops.latent_mask(mask_w, prep.latents, grow=grow),
        )
    cond = d.condition(req.prompt, req.negative_prompt, req.guidance)
    reference = d.encode_text(o.text("reference_prompt"))
    latents = yield from diffedit(
        d, prep.latents, prep.mask_latent, cond, reference, req.steps, req.strength, req.guidance
    )
    image = finish_image(ctx, latents, prep, prep.original.shape[:2], o.number("feather"))
    return JobResult(image, _size_params(prep), {"mask": _u8(prep.mask)})


# ---- inversion and re-editing --------------------------------------------------------------


def _save_path(o: Options):
    path = o.get("save")
    if path in (None, "", False):
        return None
    if not isinstance(path, str | os.PathLike):
        raise InputError(f"The option 'save' of invert must be a file path, got {path!r}.")
    return images.check_output(path, what="inversion file")


@job("invert")
def run_invert(ctx: JobContext, req: EditRequest):
    """Invert the image for req.prompt; extras["inversion"] is the reusable ``Inversion`` (the
    engine keeps it and hands out its id).
    Finished.image is the guided reconstruction (null-text, or with ``reconstruct``) or the
    input. req.strength and req.mask are not used."""
    o = start_job(ctx, req)
    save = _save_path(o)  # checked before the work, written after it
    prep = prepare(ctx, dataclasses.replace(req, mask=None))
    d = ctx.denoiser
    inv = yield from invert(
        d,
        prep.latents,
        req.prompt,
        req.steps,
        req.guidance,
        o.choice("inversion"),
        req.negative_prompt,
        o.number("fixed_point"),
        gap=_below_vae_round_trip(ctx, prep),
    )
    check_finite(inv.trajectory[0], "inverted noise", ctx)
    hw = prep.original.shape[:2]
    inv.model, inv.image_size, inv.working_size = ctx.bundle.name, hw, prep.working.shape[:2]
    inv.source_image = prep.original
    if inv.reconstruction is None and o.flag("reconstruct"):
        inv.reconstruction = yield from regenerate(d, inv, d.encode_text(req.prompt))
    if inv.reconstruction is not None:
        image = finish_image(ctx, inv.reconstruction, None, hw)
    else:
        image = prep.original
    if save is not None:
        try:
            images.atomic_write(save, inv.save)
        except OSError as e:
            raise FileError(f"Could not write the inversion to {save}: {e.strerror or e}.") from e
    return JobResult(image, {**_size_params(hw), **inv.summary()}, {"inversion": inv})


def _below_vae_round_trip(ctx: JobContext, prep: Prepared):
    """Fast null-text's per-image measure of what the user will see: how many dB of PSNR
    the decoded reconstruction falls below the VAE round trip of the working image (the
    best any inversion can do; negative when it does better)."""

    def mse(a: np.ndarray) -> float:
        return float(np.mean((a.astype(np.float64) - prep.working.astype(np.float64)) ** 2))

    floor = None

    def gap_db(reconstruction) -> float:
        nonlocal floor
        if floor is None:
            floor = mse(ctx.bundle.decode(prep.latents))
        return 10 * np.log10(max(mse(ctx.bundle.decode(reconstruction)), 1e-12) / max(floor, 1e-12))

    return gap_db


def load_inversion(path, name: str | None = None) -> Inversion:
    """An inversion file (a path, or an open binary file such as a project's member, then
    called ``name`` in messages) → a checked ``Inversion``; anything else (damaged, foreign,
    from another program) is a ``FileError`` naming the file."""
    name = str(path) if name is None else name
    try:
        inv = Inversion.load(path)
    except FileNotFoundError:
        raise FileError(f"The inversion file {name} does not exist.") from None
    except Exception as e:  # torch.load raises many types on foreign or damaged files
        if _is_picture(path):
            raise FileError(
                f"{name} is a picture, not an inversion file; inverting writes one when "
                "asked (the CLI's invert --save FILE)."
            ) from None
        raise FileError(
            f"{name} is not an inversion file this version can read ({type(e).__name__})."
        ) from None
    problem = inversion_problem(inv)
    if problem:
        raise FileError(f"{name} is not a usable inversion file: {problem}.")
    return inv


def _is_picture(path) -> bool:
    """Whether ``path`` (a path or an open binary file) starts like a PNG or JPEG."""
    try:
        if hasattr(path, "read"):
            path.seek(0)
            head = path.read(8)
        else:
            with open(path, "rb") as f:
                head = f.read(8)
    except OSError:
        return False
    return head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"))


def _size_pair(value) -> bool:
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(v, int) and v > 0 for v in value)
    )


def inversion_problem(inv: Inversion) -> str | None:
    """What is wrong with an inversion's fields, or None (every field's type and shape)."""
    ts = inv.timesteps
    if not isinstance(ts, list) or not ts or not all(isinstance(t, int) and t >= 0 for t in ts):
        return "its timesteps are not a list of whole numbers"
    if any(a <= b for a, b in zip(ts, ts[1:], strict=False)):
        return "its timesteps are not descending"
    traj, nulls = inv.trajectory, inv.null_embeddings
    if not isinstance(traj, list) or len(traj) != len(ts) + 1:
        return "its trajectory does not match its timesteps"
    if not all(isinstance(x, torch.Tensor) and x.ndim == 4 for x in traj):
        return "its trajectory is not a list of latents"
    if any(x.shape != traj[0].shape for x in traj) or not all(x.isfinite().all() for x in traj):
        return "its latents have mixed shapes or non-finite values"
    if not isinstance(nulls, list) or len(nulls) != len(ts):
        return "it has the wrong number of embeddings"
    if not all(isinstance(e, torch.Tensor) and e.ndim == 3 for e in nulls):
        return "its embeddings are not tensors"
    for name in ("prompt", "negative_prompt", "method", "model"):
        if not isinstance(getattr(inv, name), str):
            return f"its {name.replace('_', ' ')} is not text"
    g = inv.guidance
    if not isinstance(g, int | float) or isinstance(g, bool) or not np.isfinite(g):
        return "its guidance is not a number"
    for name in ("image_size", "working_size"):
        if getattr(inv, name) is not None and not _size_pair(getattr(inv, name)):
            return f"its {name.replace('_', ' ')} is not a pair of sizes"
    src = inv.source_image
    if src is not None and not (
        isinstance(src, np.ndarray) and src.dtype == np.uint8 and src.ndim == 3
    ):
        return "its source image is not an 8-bit RGB image"
    if inv.reconstruction is not None and not isinstance(inv.reconstruction, torch.Tensor):
        return "its reconstruction is not a tensor"
    return None


@job("reedit")
def run_reedit(ctx: JobContext, req: EditRequest):
    """Regenerate an inverted image with req.prompt (empty: the source prompt) at the
    inversion's guidance, optionally only inside req.mask. req.image may be omitted (the
    inversion keeps its source image); req.steps/guidance/strength are the inversion's."""
    o = start_job(ctx, req, common=False)
    inv = o.get("inversion")
    if isinstance(inv, str | os.PathLike):
        inv = load_inversion(inv)
    if not isinstance(inv, Inversion):
        raise InputError("Re-editing needs an inversion: run 'invert' on the image first.")
    if inv.model and inv.model != ctx.bundle.name:
        raise InputError(
            f"This inversion was made with the model {inv.model!r}, but {ctx.bundle.name!r} is "
            "loaded; load that model again or invert the image with this one."
        )
    b = ctx.bundle
    if inv.trajectory[-1].shape[1] != b.latent_channels or max(inv.timesteps) >= (
        b.schedule.num_train_timesteps
    ):
        raise InputError("This inversion does not fit the loaded model; invert the image again.")
    inv = inv.to(b.device, b.dtype)
    # the inversion's embeddings fix the job's prompt windows (75 tokens each)
    windows = max(1, inv.null_embeddings[0].shape[1] // b.tokenizer.model_max_length)
    if ctx.denoiser.chunk_count(req.prompt or inv.prompt) > windows:
        raise InputError(
            f"The prompt is longer than the inverted one allows ({windows * 75} tokens); "
            "shorten it, or invert the image again with a prompt as long."
        )
    ctx.denoiser.chunks = windows
    image = inv.source_image if req.image is None else imageops.check_image(req.image)
    if image is None:
        raise InputError("Re-editing needs the inverted image; pass it with the request.")
    if inv.image_size is not None and tuple(image.shape[:2]) != tuple(inv.image_size):
        h, w = inv.image_size
        raise InputError(
            f"The image is {image.shape[1]}x{image.shape[0]} but was inverted at {w}x{h}; "
            "invert it again after resizing or cropping."
        )
    hw = image.shape[:2]
    mask = imageops.mask_to_float(req.mask, hw)
    if mask is not None and not mask.any():
        raise InputError("The mask is empty: paint where the re-edit should change.")
    prompt = req.prompt or inv.prompt
    p2p = o.choice("control") == "p2p"
    if p2p:
        prompt = without_silenced(prompt)  # (word:0): the edit is without the word
    blend = BlendRegion(o, mask, o.choice("painted_mask") == "intersect")
    if p2p and blend.wants_diffedit():
        working = tuple(inv.working_size or hw)
        found = diffedit_blend(
            ctx, image, working, inv.trajectory[-1], inv.prompt, prompt, inv.steps
        )
        blend = blend.with_map(*(yield from found))
    o, mask, intersect, extras = blend.options, blend.mask, blend.intersect, blend.extras()
    mask_w = mask_l = None
    latents0 = inv.trajectory[-1]
    if mask is not None:
        mask_w = imageops.resize(mask, inv.working_size or hw)
        mask_l = imageops.latent_mask(mask_w, latents0, grow=o.number("mask_grow"))
    prep = Prepared(image, image, latents0, mask, mask_w, mask_l)
    ctx.preview_size = tuple(inv.working_size or hw)
    depth = o.number("depth")
    start = min(inv.steps - 1, round(inv.steps * (1 - depth)))
    if p2p:
        latents, control = yield from reedit_with_control(
            ctx, o, inv, prompt, mask_l, start, intersect, blend.found
        )
        extras = {**attention_extras(ctx, control, prompt, hw, inv.prompt), **extras}
    else:
        cond = ctx.denoiser.encode_text(prompt)
        latents = yield from regenerate(ctx.denoiser, inv, cond, mask=mask_l, start=start)
    image = finish_image(ctx, latents, prep, hw, o.number("feather"))
    params = {"steps": inv.steps, "guidance": inv.guidance, "strength": depth}
    if blend.whole:
        params["blend_region"] = "whole picture"
    return JobResult(image, {**_size_params(hw), **params, **inv.summary()}, extras)
