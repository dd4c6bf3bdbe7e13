"""Cheap x̂₀ previews: a per-model linear map from latents to RGB.

SD's latents are close to a linear function of the colours they encode, so a (C+1)x3 matrix
fitted by least squares gives a recognisable preview for the cost of one small matmul and an
upsample — far below a VAE decode. The map is fitted once per model from a few VAE
encode/decode pairs of synthetic colour fields and cached in the user cache directory.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .models import ModelBundle

FIT_SIZE = 128  # px; the map is resolution independent, so fit small


def cache_dir() -> Path:
    """``$DIFFUSION_EDITOR_CACHE``, else ``$XDG_CACHE_HOME/diffusion-editor`` (~/.cache)."""
    if os.environ.get("DIFFUSION_EDITOR_CACHE"):
        return Path(os.environ["DIFFUSION_EDITOR_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "diffusion-editor"


def _vae_fingerprint(bundle: ModelBundle) -> str:
    """Identifies the VAE weights cheaply: config plus a few parameter sums."""
    h = hashlib.sha1(json.dumps(dict(bundle.vae.config), sort_keys=True, default=str).encode())
    for i, p in enumerate(bundle.vae.decoder.parameters()):
        if i % 7 == 0:
            h.update(np.float64(p.detach().float().sum().item()).tobytes())
    h.update(str(bundle.vae_scale).encode())
    return h.hexdigest()[:16]


def _colour_fields(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth random colour fields with some flat patches: n x size x size x 3 uint8."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        coarse = rng.uniform(0, 255, size=(1, 3, 4, 4)).astype(np.float32)
        field = F.interpolate(torch.from_numpy(coarse), size=(size, size), mode="bicubic")
        out.append(field[0].permute(1, 2, 0).clamp(0, 255).numpy().astype(np.uint8))
    return np.stack(out)


@torch.no_grad()
def fit_latent_rgb_map(bundle: ModelBundle, n_images: int = 6) -> np.ndarray:
    """Least-squares (C+1)x3 map from latents (plus bias) to decoded RGB in [-1, 1]."""
    f = bundle.vae_factor
    xs, ys = [], []
    for img in _colour_fields(n_images, FIT_SIZE):
        lat = bundle.encode(img)
        rgb = torch.from_numpy(bundle.decode(lat)).permute(2, 0, 1)[None].float() / 127.5 - 1
        rgb = F.avg_pool2d(rgb, f)  # pixels averaged over each latent cell
        xs.append(lat[0].float().flatten(1).T.cpu())
        ys.append(rgb[0].flatten(1).T)
    x = torch.cat(xs)
    x = torch.cat([x, torch.ones(len(x), 1)], dim=1)
    w = torch.linalg.lstsq(x.double(), torch.cat(ys).double()).solution
    return w.float().numpy()


def latent_rgb_map(bundle: ModelBundle) -> np.ndarray:
    """The model's preview map, fitted on first use and cached on disk (read once per model
    load, by its ``Previewer``)."""
    path = cache_dir() / "preview-maps" / f"{_vae_fingerprint(bundle)}.npy"
    w = None
    if path.exists():
        try:
            w = np.load(path)
        except (OSError, ValueError):
            w = None  # a damaged cache entry is refitted
    if w is None or w.shape != (bundle.latent_channels + 1, 3):
        w = fit_latent_rgb_map(bundle)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, w)
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only cache only costs a refit next time
    return w


class Previewer:
    """x̂₀ latents → uint8 RGB at a given pixel size, every step."""

    def __init__(self, bundle: ModelBundle):
        w = torch.from_numpy(latent_rgb_map(bundle))
        self.weight = w[:-1].to(bundle.device, torch.float32)
        self.bias = w[-1].to(bundle.device, torch.float32)
        self.factor = bundle.vae_factor

    @torch.no_grad()
    def __call__(self, x0: torch.Tensor, size: tuple[int, int] | None = None) -> np.ndarray:
        """x0: 1xCxhxw (first sample of a batch is shown); size: (height, width) in px, by
        default the working image's, which the latents determine (h, w times the VAE's
        factor): a step's x̂₀ carries all the preview needs."""
        lat = x0[:1].float()
        rgb = torch.einsum("nchw,cd->ndhw", lat, self.weight) + self.bias[None, :, None, None]
        size = size or (lat.shape[-2] * self.factor, lat.shape[-1] * self.factor)
        if tuple(size) != tuple(rgb.shape[-2:]):
            rgb = F.interpolate(rgb, size=size, mode="bilinear", align_corners=False)
        rgb = ((rgb[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return rgb.permute(1, 2, 0).cpu().numpy()
