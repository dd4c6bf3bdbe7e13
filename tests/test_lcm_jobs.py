"""The lcm sampler in the generate and SDEdit jobs, few-step model recognition and the
sampler's record in PNG metadata (builtin:tiny, and a tiny LCM that embeds ω)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from engine.few_step import sampling_defaults
from engine.jobs import JOB_RUNNERS, JobContext
from engine.metadata import format_parameters, parse_parameters, request_fields
from engine.types import EditRequest


def run(bundle, req):
    from engine.denoiser import Denoiser

    den = Denoiser(bundle)
    gen = JOB_RUNNERS[req.method](JobContext(bundle, den), req)
    steps = []
    with torch.no_grad():
        while True:
            try:
                steps.append(next(gen))
            except StopIteration as stop:
                return stop.value, steps, den


@pytest.fixture(scope="module")
def tiny_lcm(tiny):
    """builtin:tiny's UNet with an ω input (random projection): an LCM's interface."""
    from diffusers import UNet2DConditionModel

    config = {k: v for k, v in tiny.unet.config.items() if not k.startswith("_")}
    unet = UNet2DConditionModel(**{**config, "time_cond_proj_dim": 32})
    unet.load_state_dict(tiny.unet.state_dict(), strict=False)
    torch.nn.init.normal_(unet.time_embedding.cond_proj.weight, std=0.5)
    sched = {**tiny.scheduler_config, "_class_name": "LCMScheduler"}
    return dataclasses.replace(tiny, unet=unet.eval(), scheduler_config=sched, name="tiny-lcm")


def stroke_image(seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)


def test_generate_with_lcm_runs_the_requested_steps_from_the_top(tiny):
    req = EditRequest("generate", "a house", steps=4, guidance=2.0, options={"sampler": "lcm"})
    result, steps, den = run(tiny, req)
    assert [p.t for p in steps] == [999, 759, 499, 259]
    assert all(p.x0 is not None for p in steps)  # a preview after every call
    assert den.unet_calls == 4 and result.image.shape == (64, 64, 3)
    # the seed decides the picture
    again, _, _ = run(tiny, req)
    other, _, _ = run(tiny, dataclasses.replace(req, seed=1))
    assert np.array_equal(again.image, result.image)
    assert not np.array_equal(other.image, result.image)


def test_sdedit_with_lcm_spends_every_step_below_the_strength(tiny):
    src = stroke_image()
    req = EditRequest(
        "sdedit", "a house", image=src, steps=4, strength=0.5, options={"sampler": "lcm"}
    )
    result, steps, _ = run(tiny, req)
    assert len(steps) == 4 and max(p.t for p in steps) < 500
    assert result.image.shape == src.shape
    # strength 0 changes nothing the VAE does not
    same, none, _ = run(tiny, dataclasses.replace(req, strength=0.0))
    assert none == [] and same.image.shape == src.shape


def test_masked_sdedit_with_lcm_keeps_pixels_outside_the_mask(tiny):
    src = stroke_image(1)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    req = EditRequest(
        "sdedit", "a tree", image=src, mask=mask, steps=3, strength=0.7, options={"sampler": "lcm"}
    )
    result, steps, _ = run(tiny, req)
    assert len(steps) == 3
    assert np.array_equal(result.image[mask == 0], src[mask == 0])


def test_an_lcm_gets_guidance_through_its_embedding_in_one_pass_per_step(tiny_lcm):
    req = EditRequest("generate", "a house", steps=2, guidance=8.0, options={"sampler": "lcm"})
    a, _, den = run(tiny_lcm, req)
    assert den.unet_calls == 2  # no unconditional pass: ω is an input
    b, _, _ = run(tiny_lcm, dataclasses.replace(req, guidance=2.0))
    assert not np.array_equal(a.image, b.image)
    # the hook that feeds ω is gone after the job: a plain call needs no timestep_cond
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        plain = tiny_lcm.unet(x, 10, encoder_hidden_states=torch.zeros(1, 77, 32)).sample
    assert plain.shape == x.shape


def test_batch_of_lcm_pictures_each_equals_its_seed_alone(tiny):
    req = EditRequest(
        "generate", "a house", steps=2, seed=5, options={"sampler": "lcm", "batch_size": 2}
    )
    result, _, _ = run(tiny, req)
    alone, _, _ = run(tiny, dataclasses.replace(req, seed=6, options={"sampler": "lcm"}))
    assert np.abs(result.extras["batch"][0]["image"].astype(int) - alone.image).max() <= 1


@pytest.mark.parametrize(
    "scheduler, unet, name, loras, kind, steps, guidance",
    [
        ({"_class_name": "DDIMScheduler"}, {}, "builtin:demo", [], "", None, None),
        ({"_class_name": "LCMScheduler"}, {"time_cond_proj_dim": 256}, "x", [], "lcm", 4, 7.5),
        ({"_class_name": "LCMScheduler"}, {}, "dreamshaper-lcm", [], "lcm-lora", 4, 1.5),
        ({"_class_name": "TCDScheduler"}, {}, "x", [], "tcd", 4, 1.0),
        ({"_class_name": "EulerDiscreteScheduler"}, {}, "sd-turbo", [], "turbo", 1, 1.0),
        ({"_class_name": "DDIMScheduler"}, {}, "Hyper-SD15-8steps", [], "hyper", 8, 1.0),
        ({"_class_name": "DDIMScheduler"}, {}, "v1-5", ["lcm-lora-sdv1-5"], "lcm-lora", 4, 1.5),
        ({"_class_name": "DDIMScheduler"}, {}, "v1-5", ["Hyper-SD15-2steps-lora"], "hyper", 2, 1.0),
        ({"_class_name": "DDIMScheduler"}, {}, "v1-5", ["watercolour"], "", None, None),
    ],
)
def test_few_step_models_are_recognised(scheduler, unet, name, loras, kind, steps, guidance):
    few = sampling_defaults(scheduler, unet, name, loras)
    assert few.kind == kind
    if kind:
        assert dict(few.defaults) == {"sampler": "lcm", "steps": steps, "guidance": guidance}
    else:
        assert few.defaults == {}


def test_lcm_sampler_is_recorded_in_png_text_and_read_back():
    params = {
        "method": "sdedit",
        "prompt": "a house",
        "steps": 4,
        "guidance": 7.5,
        "seed": 3,
        "strength": 0.6,
        "sampler": "lcm",
    }
    text = format_parameters(params)
    assert "Sampler: lcm" in text
    fields, problems = request_fields(parse_parameters(text))
    assert problems == [] and fields["options"]["sampler"] == "lcm"
    assert fields["steps"] == 4 and fields["method"] == "sdedit"
    # A1111 writes its sampler names capitalised
    fields, problems = request_fields(
        parse_parameters(text.replace("Sampler: lcm", "Sampler: LCM"))
    )
    assert problems == [] and fields["options"]["sampler"] == "lcm"
