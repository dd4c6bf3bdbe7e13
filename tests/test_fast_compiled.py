"""The fast path with the real compiler (inductor on the CPU): the same pictures as eager.

Tolerance (stated in the README): the compiled UNet's output within 1e-4 of its largest
magnitude of the eager output, and a whole SDEdit job's picture within 2/255 of eager at any
pixel (mean under 0.05/255): inductor reorders float sums, nothing more. The same seed on the
same path gives the same picture bit for bit. Compiling takes minutes on a 2-core CPU the
first time (seconds once inductor's cache, kept across sessions here, is warm), so the demo
model's test is marked slow.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from engine.fast import FastPath
from engine.models import load_model

OUTPUT_TOLERANCE = 1e-4  # of the eager output's largest magnitude
PIXEL_MAX, PIXEL_MEAN = 2, 0.05  # of 255, over a whole job


@pytest.fixture(autouse=True)
def shared_compile_cache(monkeypatch):
    """Inductor's caches in one folder across test sessions (content-addressed, so sharing
    changes only how long a compile takes: minutes cold, seconds warm), unless one is set."""
    import os
    import tempfile

    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ or "de-test-cache-" in os.environ.get(
        "TORCHINDUCTOR_CACHE_DIR", ""
    ):
        folder = os.path.join(tempfile.gettempdir(), "diffusion-editor-test-inductor")
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", folder)


def _sdedit(bundle, fast: FastPath, on: bool, seed: int = 5) -> np.ndarray:
    from engine.algorithms.common import drive
    from engine.denoiser import Denoiser
    from engine.jobs import JOB_RUNNERS, JobContext
    from engine.types import EditRequest

    size = bundle.native_size
    image = np.random.default_rng(1).integers(0, 255, (size, size, 3), dtype=np.uint8)
    req = EditRequest("sdedit", prompt="a red house", image=image, steps=8, seed=seed)
    with torch.no_grad(), contextlib.nullcontext() if on else fast.paused():
        return drive(JOB_RUNNERS["sdedit"](JobContext(bundle, Denoiser(bundle)), req)).image


def _check(spec: str) -> None:
    b = load_model(spec, device="cpu")
    fast = FastPath(b)
    try:
        fast.warm_up(batches=(2,))
        assert fast.wait(1800), "the compile did not finish in 30 minutes"
        st = fast.status()
        assert st["unet"].failed == 0 and st["unet"].ready == 1, st
        assert st["vae_decoder"].ready == 1, st
        side = b.native_size // b.vae_factor
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, b.latent_channels, side, side, generator=g)
        t = torch.full((2,), 700, dtype=torch.long)
        emb = torch.randn(2, 77, int(b.unet.config.cross_attention_dim), generator=g)
        with torch.no_grad():
            fast_out = b.unet(x, t, encoder_hidden_states=emb).sample
            with fast.paused():
                eager_out = b.unet(x, t, encoder_hidden_states=emb).sample
        assert fast.status()["unet"].compiled_calls == 1
        scale = float(eager_out.abs().max())
        assert float((fast_out - eager_out).abs().max()) <= OUTPUT_TOLERANCE * scale

        eager = _sdedit(b, fast, on=False)
        compiled = _sdedit(b, fast, on=True)
        again = _sdedit(b, fast, on=True)
        assert fast.status()["vae_decoder"].compiled_calls >= 2
        d = np.abs(compiled.astype(np.int16) - eager.astype(np.int16))
        assert d.max() <= PIXEL_MAX and d.mean() <= PIXEL_MEAN, (d.max(), d.mean())
        assert np.array_equal(compiled, again)  # same seed, same path: same picture
        assert not np.array_equal(eager, _sdedit(b, fast, on=False, seed=6))  # seeds matter
    finally:
        fast.close()


def test_compiled_tiny_matches_eager():
    _check("builtin:tiny")


@pytest.mark.slow
def test_compiled_demo_matches_eager():
    from engine.models import demo_model_available

    if not demo_model_available():
        pytest.skip("the demo model is not installed")
    _check("builtin:demo")


def test_compiled_unet_follows_a_lora_change(tmp_path):
    """After a fuse (as the engine wraps it) the compiled UNet computes with the new weights:
    the same output as eager, and not the output from before."""
    from test_lora import UNET_LAYERS, make_lora, write_diffusers

    from engine.lora import add_lora

    b = load_model("builtin:tiny", device="cpu")
    fast = FastPath(b)
    try:
        fast.warm_up(batches=(2,))
        assert fast.wait(1800)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 4, 8, 8, generator=g)
        t = torch.full((2,), 700, dtype=torch.long)
        emb = torch.randn(2, 77, int(b.unet.config.cross_attention_dim), generator=g)
        lora = write_diffusers(
            make_lora(b, 0, parts=(("unet", UNET_LAYERS),)), tmp_path / "l.safetensors"
        )
        with torch.no_grad():
            before = b.unet(x, t, encoder_hidden_states=emb).sample
            with fast.weights_changing():
                add_lora(b, lora, 1.0)
            b.unet(x, t, encoder_hidden_states=emb)  # eager: the new key's check is queued
            assert fast.wait(1800)
            after = b.unet(x, t, encoder_hidden_states=emb).sample
            with fast.paused():
                eager_after = b.unet(x, t, encoder_hidden_states=emb).sample
        st = fast.status()["unet"]
        assert st.compiled_calls == 2 and st.failed == 0, st
        scale = float(eager_after.abs().max())
        assert float((after - eager_after).abs().max()) <= OUTPUT_TOLERANCE * scale
        assert float((after - before).abs().max()) > 100 * OUTPUT_TOLERANCE * scale
    finally:
        fast.close()
