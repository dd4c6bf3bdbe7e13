"""Running the VAE safely: fp16 overflow and large images.

- **fp16.** SDXL's VAE overflows in float16 (activations beyond 65504 in the decoder's
  up-blocks) and gives NaN, shown as black. diffusers' SDXL pipelines upcast it to float32
  when its config says ``force_upcast``; we do the same for SDXL, once, at load time
  (``run_dtype``). Any other half-precision VAE that produces a non-finite value is moved to
  float32 for good and the step is redone (``run``). Either is said once in the log.
- **Tiling.** Above ``TILE_ABOVE`` pixels the decoder runs on overlapping tiles blended
  across their overlap (diffusers' ``AutoencoderKL.tiled_decode``), so memory stays at one
  tile's; below it, the whole latent is decoded at once, exactly as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

TILE_ABOVE = 1536 * 1536  # pixels; a 1024² SDXL decode stays whole, 2048² is tiled


def run_dtype(vae, dtype: torch.dtype, upcast: bool) -> torch.dtype:
    """The dtype the VAE should run in for a model in ``dtype``: float32 where ``upcast``
    (SDXL, whose config says ``force_upcast``) and ``dtype`` is float16; else ``dtype``."""
    if upcast and dtype == torch.float16 and vae.config.get("force_upcast", False):
        log.info("The SDXL VAE runs in float32: it overflows in float16 (force_upcast).")
        return torch.float32
    return dtype


def run(vae, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` (an encode or decode) in the VAE's dtype, in the default memory layout; a
    non-finite result from a float16 VAE moves the VAE to float32 and runs again."""
    out = fn(x.to(vae.dtype))
    if vae.dtype == torch.float16 and not bool(torch.isfinite(out).all()):
        log.warning(
            "The VAE overflowed in float16 (NaN/inf); it now runs in float32 for this model."
        )
        vae.to(torch.float32)
        out = fn(x.to(torch.float32))
    # a channels-last VAE (the CPU's, engine.models) hands back channels-last tensors; the
    # UNet and everything after it get the default layout
    return out.contiguous()


def decode(vae, z: torch.Tensor, tile_above: int = TILE_ABOVE) -> torch.Tensor:
    """Unscaled latents → pixels in [-1, 1] (float, NCHW), tiled above ``tile_above``
    pixels (the tile is the VAE's ``sample_size``, overlapping by a quarter)."""
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    big = z.shape[-2] * z.shape[-1] * f * f > tile_above
    return run(vae, (lambda v: vae.tiled_decode(v).sample) if big else _plain_decode(vae), z)


def _plain_decode(vae):
    return lambda v: vae.decode(v).sample


def encode_mean(vae, x: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] → the posterior mean (unscaled latents)."""
    return run(vae, lambda v: vae.encode(v).latent_dist.mean, x)
