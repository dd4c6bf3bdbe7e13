"""Inversions on the trained demo model, where guidance really amplifies small errors."""

import numpy as np
import pytest

from engine.algorithms.common import run_to_end
from engine.jobs import JOB_RUNNERS, JobContext
from engine.models import load_model
from engine.types import EditRequest
from engine.world.scene import render_seed

# a calibration scene (below the held-out ranges) on which the old correction
# x_tgt + (z* − x_src) drifted to a 0.8 latent-unit error by the last step
DRIFTING_SCENE = 600_004


@pytest.fixture(scope="module")
def demo():
    from engine.denoiser import Denoiser

    bundle = load_model("builtin:demo", device="cpu")
    return bundle, Denoiser(bundle)


@pytest.mark.slow
def test_direct_inversion_reconstructs_the_vae_round_trip_exactly(demo, tmp_path):
    """Ju et al. 2023 promise an exact reconstruction at any guidance: through the app's
    invert job at guidance 7.5 and 50 steps the picture must be the VAE round trip, bit for
    bit, on a scene where the old formula lost several dB."""
    bundle, denoiser = demo
    scene = render_seed(DRIFTING_SCENE)
    req = EditRequest(
        "invert",
        prompt=scene.caption,
        image=scene.image,
        steps=50,
        guidance=7.5,
        options={"inversion": "direct", "reconstruct": True},
    )
    result = run_to_end(JOB_RUNNERS["invert"](JobContext(bundle, denoiser), req))
    inv = result.extras["inversion"]
    assert float((inv.reconstruction - inv.trajectory[-1]).abs().max()) <= 1e-4
    round_trip = bundle.decode(bundle.encode(scene.image))
    assert np.array_equal(result.image, round_trip)


@pytest.mark.slow
def test_ddim_inversion_at_guidance_1_reaches_the_vae_round_trip(demo):
    """Plain DDIM inversion is only as exact as each step inverts the generation step. With
    ε̂ evaluated at the target timestep this calibration scene came back 0.04 dB below the VAE
    round trip; evaluated at the current timestep (the old way), 0.69 dB below."""
    from engine.algorithms.inversion import ddim_decode, ddim_invert
    from engine.evaluation.evaluate_edits import psnr

    bundle, d = demo
    scene = render_seed(610_003)
    x0 = bundle.encode(scene.image)
    ts = d.schedule.timesteps(50)
    cond = d.encode_text(scene.caption)
    traj = run_to_end(ddim_invert(d, x0, cond, ts))
    out = run_to_end(ddim_decode(d, traj[0], ts, cond, 1.0))
    ceiling = psnr(scene.image, bundle.decode(x0))
    assert psnr(scene.image, bundle.decode(out)) > ceiling - 0.2


@pytest.mark.slow
def test_fast_null_text_gives_a_lagging_image_the_papers_treatment(demo):
    """Calibration scene 620,018: our fast setting's reconstruction ended 0.49 dB below the
    VAE round trip (the paper's setting: 0.25 dB). The invert job checks what the user will
    see and redoes such an image with the paper's setting."""
    from engine.evaluation.evaluate_edits import Runner, psnr

    bundle, _ = demo
    scene = render_seed(620_018)
    run = Runner(bundle, log=lambda m: None)
    res, _ = run(
        "invert",
        prompt=scene.caption,
        image=scene.image,
        steps=50,
        guidance=7.5,
        options={"inversion": "null_text"},
    )
    assert any("second pass" in label for label in run.labels)
    ceiling = psnr(scene.image, bundle.decode(bundle.encode(scene.image)))
    assert psnr(scene.image, res.image) > ceiling - 0.4
