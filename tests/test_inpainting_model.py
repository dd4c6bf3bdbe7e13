"""Inpainting UNets (9 input channels: latents, mask, masked-image latents) on
builtin:tiny-inpaint (random weights, CPU): detection from folders and single files, the extra
inputs built as diffusers' ``StableDiffusionInpaintPipeline`` builds them, parity with that
pipeline, and the inpainting job with and without RePaint's resampling.

The VAE-encode convention is matched explicitly: we encode to the posterior mean, so the
pipeline's ``_encode_vae_image`` is replaced by the mean for the parity test (it samples the
posterior with the generator otherwise)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine.algorithms.common import run_to_end
from engine.algorithms.sampling import ddim_sample
from engine.denoiser import Denoiser, inpaint_inputs
from engine.errors import ModelLoadError
from engine.jobs import JOB_RUNNERS, JobContext
from engine.model_writer import save_diffusers_folder, save_single_file
from engine.models import load_model, tiny_components
from engine.types import EditRequest

PROMPT = "a red house beside two pine trees"
STEPS = 4


@pytest.fixture(scope="module")
def inpaint():
    return load_model("builtin:tiny-inpaint", device="cpu")


def picture(h=64, w=64, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, np.full_like(x, 90.0)], -1)
    return (base + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)


def ragged_mask(h=64, w=64):
    """A mask whose edges do not fall on the 8-pixel grid, with grey levels on both sides of
    0.5, so binarisation and nearest downsampling both matter."""
    m = np.zeros((h, w), np.uint8)
    m[13:45, 21:50] = 255
    m[13:45, 17:21] = 140  # ≥ 0.5: generated
    m[45:49, 21:50] = 100  # < 0.5: kept
    return m


def test_tiny_inpaint_is_detected_as_an_inpainting_model(inpaint, tiny):
    assert inpaint.inpainting and inpaint.unet.config.in_channels == 9
    assert inpaint.latent_channels == 4  # the latents it denoises, not the UNet's input
    assert not tiny.inpainting and tiny.latent_channels == 4


def test_inpainting_folders_and_single_files_load_as_such(tmp_path):
    parts = tiny_components(in_channels=9)
    folder = save_diffusers_folder(parts, tmp_path / "inpaint-folder")
    from_folder = load_model(folder, device="cpu")
    assert from_folder.inpainting
    # a single file whose configs say 4 channels (as the configs we ship for each family do):
    # its weights decide
    plain = save_diffusers_folder(tiny_components(), tmp_path / "plain-configs")
    bare = save_single_file(parts, tmp_path / "bare" / "inpaint.safetensors", sidecar=False)
    from_file = load_model(bare, device="cpu", config_dir=plain)
    assert from_file.inpainting
    a, b = parts["unet"].state_dict(), from_file.unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_depth_or_instruct_unet_is_still_refused_in_a_sentence(tmp_path):
    import json

    folder = save_diffusers_folder(tiny_components(), tmp_path / "depth")
    config_file = folder / "unet" / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "in_channels": 5}))
    with pytest.raises(ModelLoadError, match="5 input channels .* inpainting \\(9\\)"):
        load_model(folder, device="cpu")


def _pipeline(bundle):
    from diffusers import StableDiffusionInpaintPipeline

    from engine.bench import make_pipeline

    pipe = make_pipeline(bundle, StableDiffusionInpaintPipeline)

    def posterior_mean(image, generator):  # our VAE-encode convention
        return pipe.vae.config.scaling_factor * pipe.vae.encode(image).latent_dist.mean

    pipe._encode_vae_image = posterior_mean
    return pipe


@torch.no_grad()
def test_extra_inputs_are_built_as_the_pipeline_builds_them(inpaint):
    pipe = _pipeline(inpaint)
    image, mask = picture(), ragged_mask()
    init = pipe.image_processor.preprocess(Image.fromarray(image), height=64, width=64)
    mask_cond = pipe.mask_processor.preprocess(Image.fromarray(mask), height=64, width=64)
    m, z = pipe.prepare_mask_latents(
        mask_cond, init * (mask_cond < 0.5), 1, 64, 64, torch.float32, "cpu", None, False
    )
    ours = inpaint_inputs(inpaint, image, mask.astype(np.float32) / 255)
    assert torch.equal(ours.mask, m)
    assert ours.mask.sum() > 0 and ours.mask.sum() < ours.mask.numel()
    torch.testing.assert_close(ours.masked_latents, z, rtol=0, atol=1e-5)


@pytest.mark.parametrize("guidance", [1.0, 5.0])
@torch.no_grad()
def test_inpainting_matches_the_diffusers_inpaint_pipeline(inpaint, guidance):
    """Strength 1 from the same starting noise: the pipeline's loop (no blending for a
    9-channel UNet) against our DDIM sampler with the extra inputs fed by the Denoiser."""
    pipe = _pipeline(inpaint)
    image, mask = picture(seed=3), ragged_mask()
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(11))
    ref = pipe(
        PROMPT,
        image=Image.fromarray(image),
        mask_image=Image.fromarray(mask),
        height=64,
        width=64,
        strength=1.0,
        num_inference_steps=STEPS,
        guidance_scale=guidance,
        latents=noise.clone(),
        output_type="latent",
    ).images
    d = Denoiser(inpaint)
    cond = d.condition(PROMPT, "", guidance)
    timesteps = inpaint.schedule.timesteps_for_strength(STEPS, 1.0)
    extra = inpaint_inputs(inpaint, image, mask.astype(np.float32) / 255)
    with d.inpainting(extra):
        ours = run_to_end(
            ddim_sample(d, noise.clone(), timesteps, cond, guidance, torch.Generator())
        )
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4)
    # and the extra inputs matter: without them (the blank "generate everything" inputs)
    # the same loop lands elsewhere
    blank = run_to_end(ddim_sample(d, noise.clone(), timesteps, cond, guidance, torch.Generator()))
    assert (blank - ref).abs().max() > 1e-3


def _record_unet_inputs(bundle):
    seen = []
    handle = bundle.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    return seen, handle


def _run(bundle, req):
    ctx = JobContext(bundle, Denoiser(bundle))
    with torch.no_grad():
        return run_to_end(JOB_RUNNERS[req.method](ctx, req))


@pytest.mark.parametrize("resamples", [None, 1, 3])
def test_inpainting_job_feeds_the_mask_and_keeps_the_rest_bit_exact(inpaint, resamples):
    """None: Resamples not named, which is 1 for an inpainting model."""
    image, mask = picture(48, 80, seed=5), np.zeros((48, 80), np.uint8)
    mask[10:30, 20:60] = 255
    req = EditRequest(
        "repaint",
        image=image,
        mask=mask,
        prompt=PROMPT,
        steps=STEPS,
        guidance=3.0,
        seed=4,
        options={"jump_length": 2, **({"jump_n_sample": resamples} if resamples else {})},
    )
    seen, handle = _record_unet_inputs(inpaint)
    try:
        result = _run(inpaint, req)
    finally:
        handle.remove()
    keep = mask == 0
    assert np.array_equal(result.image[keep], image[keep])
    assert not np.array_equal(result.image[~keep], image[~keep])
    assert seen and all(x.shape[1] == 9 for x in seen)
    # every call saw the job's mask (channel 4) at latent size: 1 inside, 0 outside
    m = seen[0][:1, 4]
    assert m.max() == 1 and m.min() == 0 and 0 < float(m.mean()) < 1
    assert all(torch.equal(x[:1, 4], m) for x in seen)
    assert result.parameters["jump_n_sample"] == (resamples or 1)
    if resamples in (None, 1):  # no resampling: one call per step (guidance batched into it)
        assert len(seen) == STEPS
    else:
        assert len(seen) > STEPS


def test_generate_on_an_inpainting_model_uses_blank_inputs(inpaint):
    seen, handle = _record_unet_inputs(inpaint)
    try:
        result = _run(inpaint, EditRequest("generate", prompt=PROMPT, steps=2, guidance=1.0))
    finally:
        handle.remove()
    assert result.image.shape == (64, 64, 3)
    assert all(x.shape[1] == 9 and bool((x[:, 4] == 1).all()) for x in seen)


def test_an_exported_fine_tune_loads_as_an_inpainting_model_with_its_seeds(tmp_path):
    from engine.evaluation.seed_ranges import (
        ISSUE_20_FINAL,
        SeedRange,
        SeedRangeError,
        check_evaluation,
    )
    from engine.loaders import load_diffusers_folder
    from engine.models import DEMO_MODEL_DIR
    from engine.training.train_inpaint import export_inpaint, inpaint_unet

    grown = inpaint_unet(load_diffusers_folder(DEMO_MODEL_DIR)["unet"])
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"ema_unet": grown.state_dict(), "step": 0}, run / "inpaint.ckpt")
    folder = export_inpaint(run, tmp_path / "demo-inpaint")
    bundle = load_model(folder, device="cpu")
    assert bundle.inpainting and bundle.classifier is None
    # its card records the training seeds, so held-out evaluations can be checked against it
    check_evaluation(ISSUE_20_FINAL, str(folder), None)
    with pytest.raises(SeedRangeError):
        check_evaluation(SeedRange(1_000, 2_000), str(folder), None)


def test_an_sdxl_inpainting_folder_loads_and_inpaints(tmp_path):
    """SDXL's inpainting UNet (9 channels) through the SDXL denoiser path: the extra inputs
    are appended before its micro-conditioned call, and the keep region stays exact."""
    from diffusers import DDIMScheduler, StableDiffusionXLInpaintPipeline

    from engine import sdxl
    from engine.training.train_inpaint import inpaint_unet

    parts = sdxl.tiny_xl_components()
    parts["unet"] = inpaint_unet(parts["unet"])
    keys = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet")
    pipe = StableDiffusionXLInpaintPipeline(
        **{k: parts[k] for k in keys},
        scheduler=DDIMScheduler.from_config(parts["scheduler_config"]),
    )
    folder = tmp_path / "xl-inpaint"
    pipe.save_pretrained(folder)  # the layout SDXL inpainting checkpoints ship in
    bundle = load_model(folder, device="cpu")
    assert bundle.inpainting and bundle.family == sdxl.BASE
    image, mask = picture(seed=2), ragged_mask()
    seen, handle = _record_unet_inputs(bundle)
    try:
        req = EditRequest(
            "repaint", image=image, mask=mask, prompt=PROMPT, steps=3, guidance=2.0, seed=1
        )
        out = _run(bundle, req).image
    finally:
        handle.remove()
    keep = mask == 0
    assert np.array_equal(out[keep], image[keep])
    assert seen and all(x.shape[1] == 9 for x in seen)


def test_the_demo_inpainting_model_inpaints_a_picture_from_disk(tmp_path, capsys, monkeypatch):
    """As a user would: a picture and a mask on disk, ``python -m engine repaint --model
    builtin:demo-inpaint``, the result reopened: outside the mask the input's pixels, inside
    something new, and the model named in the PNG's parameters."""
    from engine import cli
    from engine.evaluation.evaluate_edits import find_cases, object_kind_case
    from engine.evaluation.seed_ranges import CALIBRATION, check_evaluation
    from engine.metadata import read_png_parameters

    check_evaluation(CALIBRATION, "builtin:demo-inpaint", None)  # its card records its seeds
    case = find_cases(object_kind_case, 1, CALIBRATION.start)[0]
    Image.fromarray(case.before.image).save(tmp_path / "in.png")
    Image.fromarray(case.mask.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    monkeypatch.chdir(tmp_path)
    argv = ["repaint", "-i", "in.png", "--mask", "mask.png", "-p", case.after.caption]
    argv += ["--model", "builtin:demo-inpaint", "--steps", "8"]  # Resamples: the model's 1
    assert cli.main([*argv, "-o", "out.png"]) == 0, capsys.readouterr().err
    out = np.asarray(Image.open(tmp_path / "out.png").convert("RGB"))
    assert np.array_equal(out[~case.mask], case.before.image[~case.mask])
    changed = np.abs(out[case.mask].astype(int) - case.before.image[case.mask]).mean()
    assert changed > 10  # grey levels: the masked object was repainted, not copied back
    params = read_png_parameters(tmp_path / "out.png")
    assert params["Model"] == "builtin:demo-inpaint"
    assert (params["Jump n sample"], params["Unet calls"]) == ("1", "8"), params
