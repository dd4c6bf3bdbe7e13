"""The shipped few-step demo model (assets/models/demo-lcm): it loads as an LCM with its
defaults, and 4 LCM steps draw what the caption says (read by the attribute probe)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.models import DEMO_LCM_DIR

pytestmark = pytest.mark.skipif(
    not (DEMO_LCM_DIR / "model_index.json").exists(), reason="demo-lcm is not installed"
)

CARD_SEEDS = 500_000 + 100_000  # calibration scenes (evaluation.seed_ranges)


@pytest.fixture(scope="module")
def engine_lcm():
    from engine import Engine, ModelLoaded

    eng = Engine()
    ev = eng.wait(eng.load_model("builtin:demo-lcm", "cpu"), 120)
    assert isinstance(ev, ModelLoaded), ev
    yield eng, ev.info
    eng.shutdown()


def test_demo_lcm_loads_as_a_few_step_model(engine_lcm):
    _, info = engine_lcm
    assert info.few_step == "lcm"
    assert dict(info.defaults) == {"sampler": "lcm", "steps": 4, "guidance": 7.5}
    assert "classifier" in info.parts  # the teacher's classifier reads the same latents


def test_four_lcm_steps_draw_the_caption(engine_lcm):
    from engine.training.probe import load_probe, render_heldout
    from engine.types import EditRequest, Finished

    eng, info = engine_lcm
    _, attrs, captions = render_heldout(8, CARD_SEEDS)
    images = []
    for i, caption in enumerate(captions):
        d = info.defaults  # what the editor puts in its form for this model
        opts = {"sampler": d["sampler"]}
        req = EditRequest(
            "generate",
            caption,
            seed=7_000 + i,
            steps=d["steps"],
            guidance=d["guidance"],
            options=opts,
        )
        ev = eng.run(req, timeout=120)
        assert isinstance(ev, Finished), ev
        images.append(ev.image)
    pred = load_probe().predict(np.stack(images))
    # the model card measures this on 200 calibration scenes; 8 samples leave room
    assert (pred == attrs).mean() >= 0.85
