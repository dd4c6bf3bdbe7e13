"""Text encoders off the GPU between encodes (``sdxl.offloads_text_encoders``, the Denoiser's
encode paths). This machine has no GPU, so the encoders' device here is the CPU and a move
changes nothing: the tests watch where the code sends them (``place_text_encoders`` is
wrapped, and still runs) and where they were told to be whenever an encoder runs, and check
that the embeddings are those of the option off. The GPU memory it frees is not measured."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from job_driver import run_job

from engine import sdxl
from engine.denoiser import Denoiser
from engine.models import load_model
from engine.types import EditRequest

PROMPT = "a red house beside two pine trees"
CUDA, CPU, MPS = torch.device("cuda"), torch.device("cpu"), torch.device("mps")


@pytest.fixture
def placements(monkeypatch):
    """Every placement the code asks for (True: the device, False: the CPU), in order."""
    asked: list[bool] = []
    real = sdxl.place_text_encoders

    def place(bundle, on_device: bool) -> None:
        asked.append(on_device)
        real(bundle, on_device)

    monkeypatch.setattr(sdxl, "place_text_encoders", place)
    return asked


def _watch_encoders(bundle, placements: list[bool]) -> list[bool]:
    """Where the encoders were last sent, each time one of them runs."""
    seen: list[bool] = []
    for model in (bundle.text_encoder, bundle.text_encoder_2):
        if model is not None:
            model.register_forward_pre_hook(lambda *_: seen.append(placements[-1]))
    return seen


def _bundle(spec: str, offload: bool):
    bundle = load_model(spec, device="cpu")
    bundle.offload_text_encoders = offload
    return bundle


def test_on_by_default_for_sdxl_on_cuda_only_and_the_switch_wins(monkeypatch):
    monkeypatch.delenv(sdxl.ENV_OFFLOAD, raising=False)
    assert sdxl.offload_default(CUDA, sdxl.BASE) and sdxl.offload_default(CUDA, sdxl.REFINER)
    assert not sdxl.offload_default(CPU, sdxl.BASE)  # nothing to free on the CPU
    assert not sdxl.offload_default(MPS, sdxl.BASE)  # the host's memory already
    assert not sdxl.offload_default(CUDA, "sd15")  # one small encoder: not worth the copies
    monkeypatch.setenv(sdxl.ENV_OFFLOAD, "0")
    assert not sdxl.offload_default(CUDA, sdxl.BASE)
    monkeypatch.setenv(sdxl.ENV_OFFLOAD, "1")
    assert sdxl.offload_default(CUDA, "sd15")
    bundle = load_model("builtin:tiny-xl", device="cpu")
    assert sdxl.offloads_text_encoders(bundle)  # the switch, where the option is unset
    bundle.offload_text_encoders = False
    assert not sdxl.offloads_text_encoders(bundle)  # the bundle's option wins


@pytest.mark.parametrize("spec", ["builtin:tiny-xl", "builtin:tiny"])
def test_with_the_option_the_encoders_visit_the_device_only_to_encode(spec, placements):
    bundle = _bundle(spec, offload=True)
    seen = _watch_encoders(bundle, placements)
    d = Denoiser(bundle)
    assert placements == [False]  # they live on the CPU from the start
    cond = d.condition(PROMPT, "blurry, dark", 5.0)
    assert placements == [False, True, False]  # one visit for the prompt and the negative
    assert seen and all(seen)  # every encoder pass ran while they were on the device
    d.condition(PROMPT, "blurry, dark", 5.0)
    assert placements == [False, True, False]  # cached: nothing moves
    d.encode_text("a blue door")
    assert placements[3:] == [True, False]
    for model in (bundle.text_encoder, bundle.text_encoder_2):
        if model is not None:
            assert next(model.parameters()).device == CPU

    plain = Denoiser(_bundle(spec, offload=False)).condition(PROMPT, "blurry, dark", 5.0)
    assert torch.equal(cond.cond, plain.cond) and torch.equal(cond.uncond, plain.uncond)


def test_without_the_option_the_encoders_never_leave(placements):
    d = Denoiser(_bundle("builtin:tiny-xl", offload=False))
    d.condition(PROMPT, "", 5.0)
    d.encode_text("a blue door")
    assert False not in placements


def test_a_whole_sdxl_job_with_the_option_gives_the_same_picture(placements):
    """Nothing in a job runs an encoder outside a visit, and the picture is the same."""
    req = EditRequest("generate", prompt=PROMPT, negative_prompt="blurry", steps=3, seed=1)
    results, moves = {}, {}
    for offload in (True, False):
        bundle = _bundle("builtin:tiny-xl", offload)
        seen = _watch_encoders(bundle, placements)
        results[offload], _ = run_job(bundle, Denoiser(bundle), req)
        assert seen and all(seen)
        moves[offload] = list(placements)
        placements.clear()
    assert moves == {True: [False, True, False], False: [True]}
    assert np.array_equal(results[True].image, results[False].image)


def test_the_bench_keeps_them_beside_the_pipeline_that_shares_them():
    from engine.bench import make_pipeline

    bundle = _bundle("builtin:tiny-xl", offload=True)
    make_pipeline(bundle)
    assert not sdxl.offloads_text_encoders(bundle)
