"""The cheap latent → RGB preview map."""

import numpy as np
import torch

from engine import preview
from engine.preview import Previewer, fit_latent_rgb_map, latent_rgb_map


def test_map_is_cached_on_disk_and_reused(tiny, monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFUSION_EDITOR_CACHE", str(tmp_path))
    w = latent_rgb_map(tiny)
    files = list((tmp_path / "preview-maps").glob("*.npy"))
    assert len(files) == 1 and np.allclose(np.load(files[0]), w)
    assert not hasattr(tiny, "_preview_map")  # nothing is hung on the model bundle
    calls = []
    monkeypatch.setattr(preview, "fit_latent_rgb_map", lambda b: calls.append(1))
    assert np.allclose(latent_rgb_map(tiny), w) and not calls


def test_fit_recovers_a_known_linear_map():
    """With a decoder that *is* linear, least squares must find it exactly."""
    true_w = np.array([[0.5, -0.2, 0.1], [0.0, 0.3, 0.0], [0.1, 0.1, -0.4], [0.2, 0.0, 0.3]])

    class LinearBundle:
        vae_factor, latent_channels = 1, 4

        def encode(self, img):
            x = torch.from_numpy(img).float().permute(2, 0, 1)[None] / 127.5 - 1
            return torch.cat([x, x[:, :1] * x[:, 1:2]], 1)  # 4 independent channels

        def decode(self, lat):
            rgb = torch.einsum("nchw,cd->ndhw", lat, torch.from_numpy(true_w).float()) + 0.05
            return ((rgb[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()

    w = fit_latent_rgb_map(LinearBundle(), n_images=2)
    assert np.allclose(w[:-1], true_w, atol=0.02) and np.allclose(w[-1], 0.05, atol=0.02)


def test_preview_has_the_requested_size(tiny):
    p = Previewer(tiny)
    out = p(torch.zeros(2, 4, 8, 6), (64, 48))
    assert out.shape == (64, 48, 3) and out.dtype == np.uint8
    # by default the working image's size, which the latents carry (times the VAE's factor)
    assert p(torch.zeros(1, 4, 5, 7)).shape == (5 * tiny.vae_factor, 7 * tiny.vae_factor, 3)
