"""Inpaint (RePaint), the DiffEdit flow and Invert & re-edit, driven through the window.

Real clicks on the panel's buttons and real mouse strokes on the canvas, on builtin:tiny
with a few steps; assertions on the requests sent, the layers and the result pixels.
"""

import numpy as np
import pytest
from helpers import (
    choose,
    click_and_wait,
    drag,
    hard_brush_at_100,
    sent_requests,
    set_prompt,
    view_point,
)
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QComboBox, QLineEdit, QWidget

from engine import imageops

LEFT = Qt.MouseButton.LeftButton


@pytest.fixture
def win(window):
    hard_brush_at_100(window.canvas, 30)
    return window


def paint_mask(win, qtbot, points):
    qtbot.keyClick(win.canvas, Qt.Key.Key_M)
    drag(qtbot, win.canvas, [view_point(win.canvas, x, y) for x, y in points])


def far_from(mask, px):
    return imageops.dilate((mask > 0).astype(np.float32), px) == 0


def test_inpaint_changes_only_the_masked_area(win, qtbot):
    sent = sent_requests(win)
    original = win.doc.image.copy()
    paint_mask(win, qtbot, [(60, 60), (120, 90)])
    assert win.doc.mask.any()
    choose(win, "repaint", qtbot, jump_length=2, jump_n_sample=2)
    win.doc.update_settings(steps=4)
    set_prompt(win, qtbot, "a red house")
    previews = []  # what the preview layer holds after each step: x̂₀ only inside the mask
    win.bridge.step.connect(lambda ev: previews.append(win.canvas.preview.array.copy()))
    ev = click_and_wait(qtbot, win, win.prompt_panel.run)
    assert previews and all(p.ndim == 3 and p.shape[2] == 4 for p in previews)
    alpha = previews[-1][..., 3]  # x̂₀ at working size, the mask as its alpha
    assert np.array_equal(alpha, imageops.resize(win.doc.mask, alpha.shape))
    assert (alpha == 0).mean() > 0.5 and (alpha == 255).any()
    req = sent[-1]
    assert req.method == "repaint" and req.prompt == "a red house"
    assert req.options["jump_length"] == 2 and req.options["jump_n_sample"] == 2
    assert np.array_equal(req.mask, win.doc.mask)
    assert ev.parameters["unet_calls"] > 4  # the jumps resample: more calls than steps
    qtbot.mouseClick(win.history_panel.apply, LEFT)
    keep = far_from(win.doc.mask, 12)
    assert np.array_equal(win.doc.image[keep], original[keep])  # bit-exact outside
    inside = win.doc.mask == 255
    assert np.abs(win.doc.image[inside].astype(int) - original[inside]).mean() > 10
    qtbot.keyClick(win.canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert np.array_equal(win.doc.image, original)


def test_diffedit_make_mask_touch_up_then_edit(win, qtbot):
    sent = sent_requests(win)
    original = win.doc.image.copy()
    # the random model's map is broad; snapped to this picture's few regions (the default
    # Mask edges) it can cover all of it, so this test, about the mask's round trip through
    # the mask layer, takes the guided edge
    choose(
        win, "diffedit", qtbot, n_samples=2, reference_prompt="a field", mask_upsampling="guided"
    )
    assert win.prompt_panel.prep.isVisible() and win.prompt_panel.prep.text() == "Make mask"
    win.doc.update_settings(steps=4, strength=0.7)
    set_prompt(win, qtbot, "a red house")
    ev = click_and_wait(qtbot, win, win.prompt_panel.prep)
    req = sent[-1]
    assert req.method == "diffedit_mask" and req.options["reference_prompt"] == "a field"
    assert req.options["mask_upsampling"] == "guided"
    auto = ev.extras["mask"]
    assert 0 < (auto > 127).mean() < 1  # a real partial mask, now the mask layer
    assert np.array_equal(win.doc.mask, auto) and not win.doc.history
    assert win.canvas.layers["mask"].isVisible()
    # undo / redo the mask as one step
    qtbot.keyClick(win.canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert not win.doc.mask.any()
    win.doc.undo_stack.redo()
    assert np.array_equal(win.doc.mask, auto)
    # touch it up: add a stroke with the mask brush, erase a patch with the eraser
    paint_mask(win, qtbot, [(10, 150), (60, 150)])
    qtbot.keyClick(win.canvas, Qt.Key.Key_E)
    drag(qtbot, win.canvas, [view_point(win.canvas, 150, 20), view_point(win.canvas, 150, 30)])
    touched = win.doc.mask.copy()
    assert (touched[150, 15:55] == 255).all() and (touched[20:30, 145:155] == 0).all()
    ev = click_and_wait(qtbot, win, win.prompt_panel.run)
    req = sent[-1]
    assert req.method == "diffedit" and np.array_equal(req.mask, touched)
    assert np.array_equal(ev.extras["mask"], touched)  # the touched-up mask was used
    result = win.doc.history[-1].image
    keep = far_from(touched, 12)
    assert keep.any() and np.array_equal(result[keep], original[keep])


@pytest.mark.slow
def test_invert_once_then_reedit_reuses_the_inversion(win, qtbot):
    sent = sent_requests(win)
    started = []
    win.bridge.started.connect(started.append)
    choose(win, "reedit", qtbot, source_prompt="a house", inversion="ddim")
    assert win.prompt_panel.prep.text() == "Invert"
    win.doc.update_settings(steps=3, guidance=2.0)
    win.run_method("reedit")  # Run before inverting: the window says what to do
    assert "invert" in win.banner.text().lower() and not win.bridge.busy
    click_and_wait(qtbot, win, win.prompt_panel.prep)
    assert sent[-1].method == "invert" and sent[-1].prompt == "a house"
    assert sent[-1].options["inversion"] == "ddim"
    inv = win.doc.inversion  # the engine's id: the inversion stays in the engine
    assert isinstance(inv, int) and win.bridge.engine.inversions.get(inv).prompt == "a house"
    for prompt in ("a red house", "a house at night"):
        set_prompt(win, qtbot, prompt)
        ev = click_and_wait(qtbot, win, win.prompt_panel.run)
        req = sent[-1]
        assert req.method == "reedit" and req.prompt == prompt
        assert req.options["inversion"] is inv  # the kept inversion, not a new one
        assert started[-1].kind == "reedit"  # the job that ran did not invert again
        p = ev.parameters
        assert p["prompt"] == prompt and p["inversion"] == "ddim"
        assert p["inversion_prompt"] == "a house"
    assert [r.method for r in sent] == ["invert", "reedit", "reedit"]
    assert win.doc.inversion is inv
    # applying a result changes the image: its old inversion no longer fits
    qtbot.mouseClick(win.history_panel.apply, LEFT)
    win.run_method("reedit")
    assert "changed since it was inverted" in win.banner.text() and not win.bridge.busy


# ---- the forms are built from engine.methods -------------------------------------------------


def _declared(ui_method, key):
    from editor.methods import EXTRA, METHODS
    from engine.methods import COMMON
    from engine.methods import METHODS as ENGINE

    if key in COMMON:
        return COMMON[key]
    if key in EXTRA.get(ui_method, {}):
        return EXTRA[ui_method][key]
    return next(
        ENGINE[e].options[key] for e in METHODS[ui_method].engine if key in ENGINE[e].options
    )


def _form(qtbot, doc, method):
    from editor.panels.prompt import PromptPanel
    from engine.methods import NAMES

    panel = PromptPanel(doc, list(NAMES))
    qtbot.addWidget(panel)
    # as for a model that ships every part an option needs (the demo model's classifier)
    from engine.methods import METHODS as ENGINE_SPECS

    parts = {o.requires for m in ENGINE_SPECS.values() for o in m.options.values() if o.requires}
    panel.set_model_parts(tuple(sorted(parts)))
    panel.method.setCurrentIndex(panel.method.findData(method))
    return panel


def test_every_form_shows_the_declared_defaults_and_bounds(qtbot):
    from PySide6.QtWidgets import QCheckBox, QDoubleSpinBox, QSpinBox

    from editor.document import Document
    from editor.methods import METHODS
    from engine.methods import METHODS as ENGINE

    doc = Document(np.zeros((64, 64, 3), np.uint8))
    checkboxes = 0
    for key, m in METHODS.items():
        panel = _form(qtbot, doc, key)
        shown = {p.key for p in m.params}
        if m.from_image:  # Edit prompt replays the image's generation: none of its settings
            assert not shown & {"steps", "guidance", "seed", *m.from_image}, key
        else:
            assert {"steps", "guidance"} <= shown, key
        declared = {k for e in m.engine for k, o in ENGINE[e].options.items() if o.form} - set(
            m.from_image
        )
        assert declared <= shown, key  # every option the engine offers in forms is there
        for p in m.params:
            spec, w = _declared(key, p.key), panel.findChild(QWidget, f"param_{p.key}")
            assert w is not None, (key, p.key)
            assert w.toolTip() == spec.help, (key, p.key)
            if spec.kind is bool:
                assert isinstance(w, QCheckBox), (key, p.key)
                assert w.isChecked() is spec.default
                checkboxes += 1
            elif isinstance(w, QSpinBox | QDoubleSpinBox):
                assert (w.value(), w.minimum(), w.maximum()) == (spec.default, spec.lo, spec.hi)
            elif isinstance(w, QComboBox):
                assert w.currentText() == spec.default
                assert [w.itemText(i) for i in range(w.count())] == list(spec.choices)
            else:
                assert w.text() == spec.default
    assert checkboxes >= 2  # Local blend, in Invert & re-edit and in Edit prompt
    # the engine's calibrated value, not the editor's old 4
    assert _form(qtbot, doc, "diffedit").findChild(QWidget, "param_n_samples").value() == 10


def test_a_changed_declaration_is_followed_by_the_form_and_the_request(qtbot, monkeypatch):
    import dataclasses

    from editor.document import Document
    from editor.methods import SettingsError, build_request, check_setting
    from engine.methods import COMMON
    from engine.methods import METHODS as ENGINE

    repaint = ENGINE["repaint"].options
    monkeypatch.setitem(
        repaint, "jump_length", dataclasses.replace(repaint["jump_length"], default=7, hi=9)
    )
    monkeypatch.setitem(COMMON, "steps", dataclasses.replace(COMMON["steps"], default=13, hi=200))
    doc = Document(np.zeros((64, 64, 3), np.uint8))
    panel = _form(qtbot, doc, "repaint")
    steps, jump = (panel.findChild(QWidget, f"param_{k}") for k in ("steps", "jump_length"))
    assert (steps.value(), steps.maximum()) == (13, 200)
    assert (jump.value(), jump.maximum()) == (7, 9)
    doc.mask[:32] = 255
    req = build_request(doc, "repaint")
    assert req.steps == 13 and req.options["jump_length"] == 7
    with pytest.raises(SettingsError, match="from 1 to 200"):
        check_setting("steps", 201)  # a project file is checked against the same bounds


def test_a_checkbox_option_is_stored_checked_and_sent(qtbot):
    from PySide6.QtWidgets import QCheckBox

    from editor.document import Document
    from editor.methods import SettingsError, check_settings

    doc = Document(np.zeros((64, 64, 3), np.uint8))
    panel = _form(qtbot, doc, "reedit")
    box = panel.findChild(QCheckBox, "param_local_blend")
    box.click()  # as a click or the space bar does
    assert doc.settings["options"]["reedit"]["local_blend"] is False
    assert check_settings(doc.settings)["options"]["reedit"]["local_blend"] is False
    for bad in (0, 1, "false", None):
        raw = {**doc.settings, "options": {"reedit": {"local_blend": bad}}}
        with pytest.raises(SettingsError, match="Local blend .* true or false"):
            check_settings(raw)
    other = _form(qtbot, doc, "reedit")  # a form built from the settings shows it unchecked
    assert not other.findChild(QCheckBox, "param_local_blend").isChecked()
    words = other.findChild(QLineEdit, "param_blend_words")
    assert not words.isEnabled()  # no blend: its words do nothing
    other.findChild(QCheckBox, "param_local_blend").click()
    assert words.isEnabled() and doc.settings["options"]["reedit"]["local_blend"] is True
    other.findChild(QComboBox, "param_control").setCurrentText("none")
    assert doc.settings["options"]["reedit"]["control"] == "none"
    for key in ("keep_layout", "keep_detail", "local_blend", "blend_words"):
        assert not other.findChild(QWidget, f"param_{key}").isEnabled(), key


def test_blend_words_placeholder_follows_the_prompt_diff(qtbot):
    from editor.document import Document
    from editor.methods import changed_words

    assert changed_words("a cat on a sofa", "a (dog:1.3) on a sofa") == ["dog"]
    assert changed_words("a cat, on a sofa", "a cat on a red sofa") == ["red"]
    assert changed_words("a big cat", "a cat") == ["big"]  # only removed: those
    assert changed_words("a cat", "A Cat") == []
    assert changed_words("a red cat", "a (red:1.5) cat") == ["red"]  # re-weighted
    doc = Document(np.zeros((64, 64, 3), np.uint8))
    panel = _form(qtbot, doc, "reedit")
    source = panel.findChild(QLineEdit, "param_source_prompt")
    words = panel.findChild(QLineEdit, "param_blend_words")
    assert words.toolTip() and words.text() == ""
    qtbot.keyClicks(source, "a cat on a sofa")
    qtbot.keyClicks(panel.prompt, "a cat on a sofa")
    assert "same" in words.placeholderText()
    panel.prompt.clear()
    qtbot.keyClicks(panel.prompt, "a dog on a sofa")
    assert words.placeholderText() == "dog"
    qtbot.keyClicks(panel.prompt, " at night")
    assert words.placeholderText() == "dog, at, night"
    source.clear()
    qtbot.keyClicks(source, "a dog on a sofa")
    assert words.placeholderText() == "at, night"


def test_edit_prompt_replays_the_parameters_of_the_image_layer():
    from editor.document import Document
    from editor.methods import NeedsInput, build_request

    doc = Document(np.zeros((48, 64, 3), np.uint8))
    doc.update_settings(method="edit_generated", prompt="a blue house", seed=9, steps=50)
    with pytest.raises(NeedsInput, match="Invert & re-edit"):
        build_request(doc, "edit_generated")  # a photo: nothing to replay
    # what a PNG's A1111 text gives: numbers as text, the source prompt under its label
    doc.describe(
        {
            "prompt": "a blue roof",
            "method": "edit_generated",
            "Source prompt": "a red house",
            "steps": "3",
            "guidance": "2.5",
            "seed": "1234",
            "size": "64x48",
            "negative_prompt": "blurry",
        }
    )
    req = build_request(doc, "edit_generated")
    assert req.method == "edit_generated" and req.prompt == "a blue house"
    assert req.options["source_prompt"] == "a red house"  # an edit's edit: the same original
    assert (req.seed, req.steps, req.guidance, req.negative_prompt) == (1234, 3, 2.5, "blurry")
    assert (req.width, req.height) == (64, 48)
    assert np.array_equal(req.image, doc.image)  # the picture: the blend region is found on it
    doc.describe({"prompt": "a red house", "method": "generate", "seed": 1, "steps": 3,
                  "guidance": 2.0, "size": "32x32"})  # fmt: skip
    with pytest.raises(NeedsInput, match="generated at 32x32"):
        build_request(doc, "edit_generated")
    doc.describe({"prompt": "a red house", "method": "sdedit", "seed": 1})
    with pytest.raises(NeedsInput, match="needs a generated image"):
        build_request(doc, "edit_generated")
    doc.image[0, 0] = 1  # the pixels changed: the parameters no longer describe them
    with pytest.raises(NeedsInput):
        build_request(doc, "edit_generated")
