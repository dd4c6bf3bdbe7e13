"""Classifier guidance in the editor: offered for a model that ships a classifier (opened from
a folder on disk), used by Generate, and gone — from the form and from requests — after
switching to a model without one."""

from __future__ import annotations

import pytest
import torch
from helpers import choose, click_and_wait, sent_requests, set_prompt, window_on_own_engine
from PySide6.QtWidgets import QWidget

from engine.classifier import LatentClassifier, save_classifier
from engine.model_writer import save_diffusers_folder
from engine.training.train_classifier import attributes_list


@pytest.fixture
def guided_window(qtbot, tmp_path, data_dir):
    from engine.models import load_model

    folder = save_diffusers_folder(load_model("builtin:tiny", device="cpu"), tmp_path / "m")
    torch.manual_seed(0)
    save_classifier(LatentClassifier(attributes_list(), latent_size=8), folder / "classifier")
    with window_on_own_engine(qtbot, str(folder)) as win:
        yield win


def _field(win, key):
    return win.prompt_panel.findChild(QWidget, f"param_{key}")


def test_generate_with_classifier_guidance_then_a_model_without_a_classifier(qtbot, guided_window):
    win = guided_window
    qtbot.waitUntil(lambda: win.bridge.model_info is not None, timeout=30_000)
    win._on_model_loaded(None)
    sent = sent_requests(win)
    choose(win, "generate", qtbot, classifier_targets="night, snow ground", classifier_scale=4.0)
    assert _field(win, "classifier_scale") is not None  # offered in the form
    assert "night" in _field(win, "classifier_targets").placeholderText()
    set_prompt(win, qtbot, "a red house")
    done = click_and_wait(qtbot, win, win.prompt_panel.run)
    assert type(done).__name__ == "Finished", done
    assert sent[-1].options["classifier_targets"] == "night, snow ground"
    assert sent[-1].options["classifier_scale"] == 4.0

    # the same settings on a model without a classifier: not offered, not sent
    with qtbot.waitSignal(win.bridge.model_loaded, timeout=60_000):
        win.load_model("builtin:tiny")
    assert win.bridge.model_info.parts == ()
    assert _field(win, "classifier_scale") is None
    assert _field(win, "classifier_targets") is None
    done = click_and_wait(qtbot, win, win.prompt_panel.run)
    assert type(done).__name__ == "Finished", done
    assert "classifier_scale" not in sent[-1].options
