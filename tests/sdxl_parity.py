"""Shared by the SDXL tests: diffusers' SDXL pipelines built on a bundle's own components,
our text-to-image and SDEdit run beside them, the test's SGM single-file writer, and weight
comparisons (whole tensors for tiny models, digests for full-size ones, which cannot be held
twice in memory).

Parity convention (as in ``test_sdxl.py``): the same components, prompt, seed and steps; both
pipelines get DDIM from the model's scheduler config; the img2img pipeline receives our
posterior-mean latents as its image (a 4-channel image is taken as latents), so both start
SDEdit from the same encoding instead of the pipeline sampling the VAE posterior itself.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from engine import loaders, model_writer, sdxl
from engine.algorithms.common import run_to_end
from engine.algorithms.generate import generate
from engine.algorithms.sdedit import sdedit
from engine.denoiser import Denoiser
from engine.loaders import UNET_PREFIX, VAE_PREFIX

# ---- the pipelines on a bundle's components -------------------------------------------------


def pipeline_components(bundle) -> dict:
    from diffusers import DDIMScheduler

    return dict(
        vae=bundle.vae,
        text_encoder=bundle.text_encoder,
        text_encoder_2=bundle.text_encoder_2,
        tokenizer=bundle.tokenizer,
        tokenizer_2=bundle.tokenizer_2,
        unet=bundle.unet,
        scheduler=DDIMScheduler.from_config(bundle.scheduler_config),
    )


def text2img_pipeline(bundle):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(
        **pipeline_components(bundle), force_zeros_for_empty_prompt=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def img2img_pipeline(bundle):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    pipe = StableDiffusionXLImg2ImgPipeline(
        **pipeline_components(bundle), requires_aesthetics_score=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def text_to_image_pair(bundle, prompt, negative, steps, guidance, size_hw, seed):
    """(ours, the pipeline's) final latents of a text-to-image run at ``size_hw`` pixels."""
    pipe = text2img_pipeline(bundle)
    theirs = pipe(
        prompt,
        negative_prompt=negative or None,  # None: the pipeline zeroes it, as our "" does
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=size_hw[0],
        width=size_hw[1],
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
    ).images
    d = Denoiser(bundle)
    cond = d.condition(prompt, negative, guidance)
    f = bundle.vae_factor
    shape = (1, bundle.latent_channels, size_hw[0] // f, size_hw[1] // f)
    g = torch.Generator().manual_seed(seed)
    ours = run_to_end(generate(d, cond, shape, steps, guidance, g))
    return ours, theirs


def sdedit_pair(bundle, image, prompt, strength, steps, guidance, seed):
    """(ours, the pipeline's, the start latents) of an SDEdit of ``image`` (uint8 HxWx3),
    both from our posterior-mean encoding (see the module docstring)."""
    pipe = img2img_pipeline(bundle)
    latents = bundle.encode(image)
    theirs = pipe(
        prompt,
        image=latents,  # 4 channels: taken as latents, so both use the posterior mean
        strength=strength,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
    ).images
    d = Denoiser(bundle)
    cond = d.condition(prompt, "", guidance)
    g = torch.Generator().manual_seed(seed)
    ours = run_to_end(sdedit(d, latents, cond, steps, strength, guidance, g))
    return ours, theirs, latents


@torch.no_grad()
def pipeline_pixels(bundle, latents: torch.Tensor) -> np.ndarray:
    """The pipeline's own decode of its latents (as its ``__call__`` does in fp32, then
    ``numpy_to_pil``'s rounding): uint8 HxWx3, to hold beside ``bundle.decode`` of ours."""
    pipe = text2img_pipeline(bundle)
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    image = pipe.image_processor.postprocess(image, output_type="np")[0]
    return (image * 255).round().astype(np.uint8)


# ---- the test's SGM writer ------------------------------------------------------------------


def to_sgm(unet, vae, text_encoder, text_encoder_2) -> dict[str, torch.Tensor]:
    """Diffusers/transformers SDXL weights → one state dict in the SGM layout of Stability's
    generative-models checkpoints (``model.diffusion_model.*`` with the added embedding as
    ``label_emb.0.*``, ``first_stage_model.*``, ``conditioner.embedders.{i}.*``): the test's
    own mapping, so loading what it writes checks the loader's conversion independently."""
    out: dict[str, torch.Tensor] = {}
    for key, value in unet.state_dict().items():
        if key.startswith("add_embedding.linear_"):  # Linear, SiLU, Linear in SGM's Sequential
            layer = {"1": "0", "2": "2"}[key.split(".")[1][-1]]
            new = f"label_emb.0.{layer}.{key.rsplit('.', 1)[1]}"
        else:
            new = model_writer._unet_key_to_original(key, unet.config)
        out[UNET_PREFIX + new] = value
    n_up = len(vae.config.up_block_types)
    for key, value in vae.state_dict().items():
        new = model_writer._vae_key_to_original(key, n_up)
        if ".mid.attn_1." in new and new.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]  # SGM's VAE attention is 1x1 convolutions
        out[VAE_PREFIX + new] = value
    if text_encoder is not None:  # OpenAI CLIP keeps transformers' names under embedders.0
        for key, value in model_writer.clip_keys(text_encoder).items():
            out[sdxl.SGM_CLIP_L + "text_model." + key] = value
    prefix = sdxl.SGM_BIGG if text_encoder is not None else sdxl.SGM_BIGG_REFINER
    big = model_writer.clip_keys(text_encoder_2)
    projection = big.pop("text_projection.weight")  # P x D here, D x P (x @ W) in OpenCLIP
    for key, value in model_writer._open_clip_to_original(big).items():
        out[prefix + key.removeprefix(loaders.OPEN_CLIP_PREFIX)] = value
    out[prefix + "text_projection"] = projection.T
    return out


# ---- weight comparisons ---------------------------------------------------------------------


def comparable_state(module) -> dict[str, torch.Tensor]:
    """A module's weights by name, with transformers' optional ``text_model.`` prefix and
    CLIP's ``position_ids`` buffer (not a weight) left out."""
    state = module.state_dict()
    return {k.removeprefix("text_model."): v for k, v in state.items() if "position_ids" not in k}


def same_weights(a, b) -> None:
    sa, sb = comparable_state(a), comparable_state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def weight_digests(module) -> dict[str, str]:
    """Name → dtype, shape and a hash of the bytes of every weight: equal digests are equal
    tensors, and they cost nothing to keep once the module is gone."""
    out = {}
    for key, value in comparable_state(module).items():
        data = value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()
        digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        out[key] = f"{value.dtype} {tuple(value.shape)} {digest}"
    return out
