"""Shared fixtures. Every test runs offline, on the CPU, with a private cache directory."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ["DIFFUSION_EDITOR_CACHE"] = tempfile.mkdtemp(prefix="de-test-cache-")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny():
    """The tiny random-weight SD-architecture model, loaded once."""
    from engine.models import load_model

    return load_model("builtin:tiny", device="cpu")


@pytest.fixture(scope="session")
def tiny_denoiser(tiny):
    from engine.denoiser import Denoiser

    return Denoiser(tiny)
