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


@pytest.fixture
def guided_mask_edge(monkeypatch):
    """DiffEdit's masks take the colour-guided edge instead of the default (whole picture
    regions). The random tiny model's map covers most of a picture, and snapped to a smooth
    picture's few large regions it covers all of it; tests of what happens outside a
    DiffEdit region use this to keep some picture outside."""
    import dataclasses

    from engine.methods import METHODS

    options = METHODS["diffedit_mask"].options
    guided = dataclasses.replace(options["mask_upsampling"], default="guided")
    monkeypatch.setitem(options, "mask_upsampling", guided)
