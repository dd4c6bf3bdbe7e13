"""Classifier guidance through the engine, from a model folder on disk that ships a classifier
(and one that does not), as a user would open it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import Engine, ModelLoaded
from engine.classifier import LatentClassifier, save_classifier
from engine.model_writer import save_diffusers_folder
from engine.training.train_classifier import attributes_list
from engine.types import EditRequest, Failed, Finished


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny):
    root = tmp_path_factory.mktemp("models")
    plain = save_diffusers_folder(tiny, root / "plain")
    guided = save_diffusers_folder(tiny, root / "guided")
    torch.manual_seed(0)
    save_classifier(LatentClassifier(attributes_list(), latent_size=8), guided / "classifier")
    return plain, guided


def _engine(folder):
    eng = Engine()
    loaded = eng.wait(eng.load_model(str(folder), "cpu"), 120)
    assert isinstance(loaded, ModelLoaded), loaded
    return eng, loaded.info


def _generate(eng, **options):
    req = EditRequest(
        "generate",
        prompt="a red house",
        steps=3,
        guidance=3.0,
        seed=4,
        width=64,
        height=64,
        options=options,
    )
    return eng.wait(eng.submit(req), 120)


def test_a_model_with_a_classifier_guides_generate_and_sdedit(folders):
    eng, info = _engine(folders[1])
    try:
        assert info.parts == ("classifier",)
        plain = _generate(eng)
        off = _generate(eng, classifier_targets="night", classifier_scale=0.0)
        on = _generate(eng, classifier_targets="night, snow ground", classifier_scale=8.0)
        ddpm = _generate(eng, classifier_targets="night", classifier_scale=8.0, sampler="ddpm")
        for ev in (plain, off, on, ddpm):
            assert isinstance(ev, Finished), ev
        assert np.array_equal(plain.image, off.image)  # scale 0: guidance is off
        assert not np.array_equal(plain.image, on.image)
        assert on.parameters["classifier_targets"] == "night, snow ground"  # into metadata
        src = np.full((64, 64, 3), 120, np.uint8)
        req = EditRequest(
            "sdedit",
            prompt="a red house",
            image=src,
            steps=4,
            strength=0.6,
            seed=1,
            options={"classifier_targets": "sun", "classifier_scale": 4.0},
        )
        assert isinstance(eng.wait(eng.submit(req), 120), Finished)
        bad = _generate(eng, classifier_targets="purple sky", classifier_scale=2.0)
        assert isinstance(bad, Failed) and "does not know 'purple sky'" in bad.message
    finally:
        eng.shutdown()


def test_a_model_without_one_says_so(folders):
    eng, info = _engine(folders[0])
    try:
        assert info.parts == ()
        ev = _generate(eng, classifier_targets="night", classifier_scale=2.0)
        assert isinstance(ev, Failed) and "has no classifier" in ev.message
        assert isinstance(_generate(eng, classifier_scale=0.0), Finished)
    finally:
        eng.shutdown()
