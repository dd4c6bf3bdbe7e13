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


@pytest.fixture(scope="module")
def engine():
    """An engine thread with builtin:tiny loaded (one per test module)."""
    from engine import Engine, ModelLoaded

    eng = Engine()
    assert isinstance(eng.wait(eng.load_model("builtin:tiny", "cpu"), 120), ModelLoaded)
    yield eng
    eng.shutdown()
