"""Model › Demo inpainting model, as a user reaches it: a picture opened from disk, the model
picked from the menu, a mask painted over an object, Inpaint run, the result exported and
reopened. Its own engine, so the shared one keeps builtin:tiny."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import (
    choose,
    click_and_wait,
    drag,
    hard_brush_at_100,
    set_prompt,
    view_point,
    window_on_own_engine,
)
from PIL import Image
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QWidget

from editor import tools
from engine.metadata import read_png_parameters


@pytest.fixture
def window(qtbot, data_dir):
    with window_on_own_engine(qtbot, "builtin:tiny") as win:
        yield win


def test_inpaint_with_the_demo_inpainting_model_from_the_menu(qtbot, window, tmp_path):
    from engine.evaluation.evaluate_edits import find_cases, inpaint_prompt, object_kind_case
    from engine.evaluation.seed_ranges import CALIBRATION

    win = window
    case = find_cases(object_kind_case, 1, CALIBRATION.start)[0]
    Image.fromarray(case.before.image).save(tmp_path / "scene.png")
    assert win.open_path(str(tmp_path / "scene.png"))
    model_menu = next(a for a in win.menuBar().actions() if a.text().replace("&", "") == "Model")
    entries = {a.text().replace("&", ""): a for a in model_menu.menu().actions()}
    entry = entries["Demo inpainting model"]
    choose(win, "repaint", qtbot)
    resamples = win.prompt_panel.findChild(QWidget, "param_jump_n_sample")
    assert resamples.value() == 3  # RePaint's default on an ordinary model
    hint = win.prompt_panel.prompt.placeholderText
    assert hint() == "Prompt: what the result should show"  # no inpainting model yet
    with qtbot.waitSignal(win.bridge.model_loaded, timeout=120_000):
        entry.trigger()
    assert win.bridge.model_info.name == "builtin:demo-inpaint"
    resamples = win.prompt_panel.findChild(QWidget, "param_jump_n_sample")
    assert resamples.value() == 1  # the inpainting model needs no resampling
    assert "Resamples set to 1" in win.statusBar().currentMessage()

    ys, xs = np.nonzero(case.mask)  # brush across the object, as wide as it is tall
    hard_brush_at_100(win.canvas, int(ys.max() - ys.min()) + 4)
    win.tool_actions[tools.MASK].trigger()
    y = int(ys.mean())
    drag(qtbot, win.canvas, [view_point(win.canvas, x, y) for x in (xs.min(), xs.max())])
    mask = win.doc.mask > 0
    assert mask[case.mask].mean() > 0.9

    choose(win, "repaint", qtbot)
    win.prompt_panel.prompt.clear()
    # the empty prompt box asks for what the area should show, and the user types that
    assert hint() == "Prompt: what the masked area should show, e.g. a pine tree"
    set_prompt(win, qtbot, inpaint_prompt(case, "object"))
    win.doc.update_settings(steps=8)
    done = click_and_wait(qtbot, win, win.prompt_panel.run, timeout=120_000)
    assert type(done).__name__ == "Finished", done
    result = win.doc.history[-1].image
    assert np.array_equal(result[~mask], case.before.image[~mask])
    assert np.abs(result[mask].astype(int) - case.before.image[mask]).mean() > 10

    qtbot.mouseClick(win.history_panel.apply, Qt.MouseButton.LeftButton)
    assert np.array_equal(win.doc.image, result)
    out = tmp_path / "inpainted.png"
    win.ask_save_path = lambda *a, **k: str(out)
    assert win.export_png()
    params = read_png_parameters(out)
    assert (params["Model"], params["Jump n sample"]) == ("builtin:demo-inpaint", "1")
    assert win.open_path(str(out))
    assert np.array_equal(win.doc.image, result)

    with qtbot.waitSignal(win.bridge.model_loaded, timeout=120_000):
        win.load_model("builtin:tiny")  # an ordinary model again: RePaint's default is back
    resamples = win.prompt_panel.findChild(QWidget, "param_jump_n_sample")
    assert resamples.value() == 3
    assert win.prompt_panel.current_method() == "repaint"
    assert hint() == "Prompt: what the result should show"  # Inpaint, an ordinary model
