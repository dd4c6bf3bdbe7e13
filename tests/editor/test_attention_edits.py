"""Re-edits that keep the picture (Prompt-to-Prompt), driven through the window on
builtin:tiny with a few steps on small images: Edit prompt on a generated result, Invert &
re-edit of a PNG with attention control, the blend mask (forming, then in the mask layer),
a prompt word's heat map, and a checkbox option through a project file."""

import dataclasses

import numpy as np
import pytest
from helpers import choose, click_and_wait, sent_requests, set_prompt
from PIL import Image
from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QTextCursor
from PySide6.QtWidgets import QCheckBox, QComboBox, QLabel, QLineEdit, QWidget

from engine.imageops import dilate
from engine.metadata import read_png_parameters
from engine.methods import METHODS

LEFT = Qt.MouseButton.LeftButton
CTRL = Qt.KeyboardModifier.ControlModifier
SHIFT = Qt.KeyboardModifier.ShiftModifier


def _image():
    return np.random.default_rng(3).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def record_overlays(win):
    """What the forming-mask overlay holds after each step (None: nothing shown)."""
    seen = []
    win.bridge.step.connect(
        lambda ev: seen.append(
            None if win.canvas.mask_preview.array is None else win.canvas.mask_preview.array.copy()
        )
    )
    return seen


def generate_and_apply(win, qtbot, prompt="a red house", seed=1234):
    """Generate through the panel with a locked seed, then Apply the result."""
    p = win.prompt_panel
    choose(win, "generate", qtbot, steps=3, guidance=2.0)
    set_prompt(win, qtbot, prompt)
    p.seed.setValue(seed)
    p.seed_lock.click()
    click_and_wait(qtbot, win, p.run)
    qtbot.mouseClick(win.history_panel.apply, LEFT)
    return win.doc.image.copy()


def local_edits_only(monkeypatch, method: str) -> None:
    """On the random model DiffEdit's map is broad, so every edit counts as one of the whole
    picture and runs without local blend; for tests of a local edit, no map counts as broad."""
    options = METHODS[method].options
    local = dataclasses.replace(options["whole_picture"], default=1.0)
    monkeypatch.setitem(options, "whole_picture", local)


def test_edit_prompt_of_a_generated_image_keeps_its_seed_and_fills_the_mask(
    make_window, qtbot, monkeypatch
):
    local_edits_only(monkeypatch, "edit_generated")
    win = make_window(_image())
    sent = sent_requests(win)
    p = win.prompt_panel
    choose(win, "generate", qtbot, steps=3, guidance=2.0)
    set_prompt(win, qtbot, "a red house")
    p.seed.setValue(1234)
    p.seed_lock.click()
    click_and_wait(qtbot, win, p.run)
    choose(win, "edit_generated", qtbot)
    assert "Apply" in p.findChild(QLabel, "source_info").text()  # not applied yet: says so
    win.run_method("edit_generated")
    assert "Apply the generated result" in win.banner.text() and not win.bridge.busy
    qtbot.mouseClick(win.history_panel.apply, LEFT)
    generated = win.doc.image.copy()
    label = p.findChild(QLabel, "source_info")
    qtbot.waitUntil(lambda: "a red house" in label.text(), timeout=2000)
    assert "seed 1234" in label.text()
    assert not any(p.findChild(QWidget, f"param_{k}") for k in ("steps", "source_prompt"))
    win.run_method("edit_generated")  # the prompt is unchanged: nothing to edit
    assert "Edit the prompt first" in win.banner.text() and not win.bridge.busy
    set_prompt(win, qtbot, "a blue house")
    blend_words = p.findChild(QLineEdit, "param_blend_words")
    assert blend_words.text() == "" and blend_words.placeholderText() == "blue"
    win.doc.update_settings(steps=9, guidance=5.0, seed=77)  # ignored: the image's are used
    assert not win.doc.mask.any()
    overlays = record_overlays(win)
    bars = []  # the progress bar after each step: two phases, the map and the edit
    win.bridge.step.connect(lambda ev: bars.append((p.progress.format(), p.progress.value())))
    ev = click_and_wait(qtbot, win, p.run)
    assert bars[0][0].startswith("mask 1/") and bars[-1][0].startswith("re-edit 3/3 · phase 2")
    assert [v for _, v in bars] == sorted(v for _, v in bars) and bars[-1][1] == 1000
    assert max(v for f, v in bars if f.startswith("mask")) == 500  # the map: half the bar
    req = sent[-1]
    assert req.method == "edit_generated" and req.prompt == "a blue house"
    assert (req.seed, req.steps, req.guidance) == (1234, 3, 2.0)
    assert (req.height, req.width) == generated.shape[:2]
    assert req.options["source_prompt"] == "a red house" and req.options["local_blend"] is True
    assert req.mask is None and np.array_equal(req.image, generated)
    # DiffEdit's map of the two prompts on the picture came first, then the edit
    assert req.options.get("blend_mask", "diffedit") == "diffedit"
    # the forming blend mask was shown over the image, then put away
    shown = [a for a in overlays if a is not None]
    assert shown and all(a.ndim == 3 and a.shape[2] == 4 for a in shown)
    assert win.canvas.mask_preview.array is None
    # the final blend mask is now the mask layer, one undoable change
    blend = ev.extras["blend_mask"]
    assert blend.any() and np.array_equal(win.doc.mask, blend)
    assert win.canvas.layers["mask"].isVisible()
    # outside the region and its soft edge the result is the picture, pixel for pixel
    far = dilate(blend.astype(np.float32) / 255, 7) == 0
    assert far.any() and np.array_equal(ev.image[far], generated[far])
    assert not np.array_equal(ev.image, generated)
    entry = win.doc.history[-1]
    assert entry.parameters["method"] == "edit_generated" and entry.parameters["seed"] == 1234
    assert entry.parameters["source_prompt"] == "a red house"
    assert np.array_equal(win.doc.image, generated)  # the result waits in the history
    qtbot.keyClick(win.canvas, Qt.Key.Key_Z, CTRL)
    assert not win.doc.mask.any() and np.array_equal(win.doc.image, generated)


def test_a_painted_mask_is_left_alone_and_replaces_the_blend(make_window, qtbot):
    win = make_window(_image())
    sent = sent_requests(win)
    generate_and_apply(win, qtbot)
    painted = np.zeros_like(win.doc.mask)
    painted[10:30, 20:40] = 255
    win.doc.set_mask(painted, "paint")
    choose(win, "edit_generated", qtbot)
    set_prompt(win, qtbot, "a blue house")
    ev = click_and_wait(qtbot, win, win.prompt_panel.run)
    assert np.array_equal(sent[-1].mask, painted)
    assert "blend_mask" not in ev.extras and np.array_equal(win.doc.mask, painted)


def test_photos_say_to_use_invert_and_reedit_with_p2p(make_window, qtbot, tmp_path, monkeypatch):
    path = tmp_path / "house.png"
    Image.fromarray(_image()).save(path)
    win = make_window()
    assert win.open_path(str(path))
    sent = sent_requests(win)
    choose(win, "edit_generated", qtbot)
    set_prompt(win, qtbot, "a red house")
    win.run_method("edit_generated")
    assert "Invert & re-edit" in win.banner.text() and not sent
    choose(win, "reedit", qtbot, source_prompt="a house", inversion="ddim")
    p = win.prompt_panel
    assert p.findChild(QComboBox, "param_control").currentText() == "p2p"
    for key in ("keep_layout", "keep_detail", "local_blend", "blend_words"):
        assert p.findChild(QWidget, f"param_{key}").toolTip(), key
    assert p.findChild(QLineEdit, "param_blend_words").placeholderText() == "red"
    win.doc.update_settings(steps=3, guidance=2.0)
    click_and_wait(qtbot, win, p.prep)  # Invert
    # on the random model and a noise picture DiffEdit's map is broad: the prompts disagree
    # about the whole picture, so the re-edit ran without local blend and says so
    ev = click_and_wait(qtbot, win, p.run)
    assert ev.parameters["blend_region"] == "whole picture" and "blend_mask" not in ev.extras
    assert win.statusBar().currentMessage() == ev.extras["notice"] and not win.doc.mask.any()
    assert win.doc.history[-1].parameters["blend_region"] == "whole picture"
    # a local edit (here: never count an edit as global) blends inside DiffEdit's mask
    local_edits_only(monkeypatch, "reedit")
    overlays = record_overlays(win)
    ev = click_and_wait(qtbot, win, p.run)
    req = sent[-1]
    assert req.method == "reedit" and req.options["control"] == "p2p"
    assert [a for a in overlays if a is not None], "no forming mask reached the overlay"
    # the default blend region, DiffEdit's mask, is now the mask layer
    assert req.mask is None and np.array_equal(win.doc.mask, ev.extras["blend_mask"])
    assert win.doc.mask.any()
    entry = win.doc.history[-1]
    assert entry.parameters["control"] == "p2p" and entry.parameters["keep_layout"] == 0.8
    assert entry.parameters["inversion"] == "ddim"  # the engine's own, not the id sent
    assert set(ev.extras["attention_maps"]) == {"a", "red", "house"}


def _select(win, qtbot, start, length):
    """Select prompt characters with the keyboard, as a user does."""
    box = win.prompt_panel.prompt
    box.setFocus()
    qtbot.keyClick(box, Qt.Key.Key_Home, CTRL)
    for _ in range(start):
        qtbot.keyClick(box, Qt.Key.Key_Right)
    for _ in range(length):
        qtbot.keyClick(box, Qt.Key.Key_Right, SHIFT)


def test_selecting_a_prompt_word_shows_its_attention_map(make_window, qtbot):
    win = make_window(_image())
    generate_and_apply(win, qtbot)
    canvas = win.canvas
    _select(win, qtbot, 2, 3)  # no re-edit yet: no maps, says so
    assert canvas.heat.array is None and "No attention maps" in win.statusBar().currentMessage()
    choose(win, "edit_generated", qtbot)
    set_prompt(win, qtbot, "a (Blue:1.2) house")
    ev = click_and_wait(qtbot, win, win.prompt_panel.run)
    maps = ev.extras["attention_maps"]
    assert "Blue" in maps
    _select(win, qtbot, 2, len("(Blue:1.2)"))  # the word with its weight: matched as "blue"
    assert win.prompt_panel.prompt.textCursor().selectedText() == "(Blue:1.2)"
    h, w = win.doc.size
    assert canvas.heat.isVisible() and canvas.heat.boundingRect() == QRectF(0, 0, w, h)
    heat = canvas.heat.array
    assert heat.shape == (h, w, 4)  # resized to the image
    small = maps["Blue"]
    alpha = heat[..., 3].astype(float)
    # the overlay follows the map: where the map is strongest, the tint is strongest
    hi = np.unravel_index(small.argmax(), small.shape)
    lo = np.unravel_index(small.argmin(), small.shape)
    cell = (h / small.shape[0], w / small.shape[1])
    at = [alpha[int((r + 0.5) * cell[0]), int((c + 0.5) * cell[1])] for r, c in (hi, lo)]
    assert at[0] > at[1]
    assert "Blue" in win.statusBar().currentMessage() or "blue" in win.statusBar().currentMessage()
    qtbot.keyClick(win.prompt_panel.prompt, Qt.Key.Key_Right)  # clears the selection
    assert not win.prompt_panel.prompt.textCursor().hasSelection()
    assert not canvas.heat.isVisible() and canvas.heat.array is None
    _select(win, qtbot, 0, 0)
    cursor = win.prompt_panel.prompt.textCursor()
    cursor.movePosition(QTextCursor.MoveOperation.End, QTextCursor.MoveMode.KeepAnchor)
    win.prompt_panel.prompt.setTextCursor(cursor)  # several words: the strongest of them
    assert canvas.heat.isVisible()


@pytest.mark.parametrize("blend", [False, True])
def test_a_checkbox_option_survives_saving_and_reopening_the_project(
    make_window, qtbot, tmp_path, blend
):
    win = make_window(_image())
    # (Blend words first: without local blend the field is greyed out)
    choose(win, "reedit", qtbot, blend_words="roof", local_blend=blend, keep_layout=0.6)
    box = win.prompt_panel.findChild(QCheckBox, "param_local_blend")
    assert box.isChecked() is blend
    saved = str(tmp_path / "p.deproj")
    win.ask_save_path = lambda *a, **k: saved
    assert win.save_project()

    other = make_window()
    assert other.open_path(saved), other.banner.text()
    choose(other, "reedit", qtbot)
    p = other.prompt_panel
    assert p.findChild(QCheckBox, "param_local_blend").isChecked() is blend
    assert p.findChild(QWidget, "param_keep_layout").value() == pytest.approx(0.6)
    assert p.findChild(QLineEdit, "param_blend_words").text() == "roof"
    stored = other.doc.settings["options"]["reedit"]
    assert stored.get("local_blend", True) is blend  # the default need not be stored


def generated_png(make_window, qtbot, tmp_path, seed):
    """A picture generated in one window and exported as a PNG (with its parameters)."""
    first = make_window(_image())
    generate_and_apply(first, qtbot, seed=seed)
    png = tmp_path / "generated.png"
    first.ask_save_path = lambda *a, **k: str(png)
    assert first.export_png()
    return png


def edit_prompt_of_png(make_window, qtbot, png, prompt):
    """A new window opens ``png`` and runs Edit prompt with ``prompt``: (window, its
    Finished event, the request it sent)."""
    win = make_window()
    assert win.open_path(str(png))
    sent = sent_requests(win)
    choose(win, "edit_generated", qtbot)
    set_prompt(win, qtbot, prompt)
    ev = click_and_wait(qtbot, win, win.prompt_panel.run)
    assert type(ev).__name__ == "Finished", ev
    return win, ev, sent[-1]


def test_edit_prompt_of_a_generated_png_opened_from_disk(make_window, qtbot, tmp_path, monkeypatch):
    """As a user meets it: a picture generated, exported, and opened again in a new window;
    Edit prompt finds DiffEdit's region on that picture, keeps the rest of it pixel for pixel,
    and its result, applied and exported, reopens with its parameters."""
    local_edits_only(monkeypatch, "edit_generated")
    png = generated_png(make_window, qtbot, tmp_path, seed=99)
    on_disk = np.asarray(Image.open(png).convert("RGB"))

    win, ev, req = edit_prompt_of_png(make_window, qtbot, png, "a blue house")
    assert np.array_equal(req.image, on_disk) and req.seed == 99
    blend = ev.extras["blend_mask"]
    far = dilate(blend.astype(np.float32) / 255, 7) == 0
    assert far.any() and np.array_equal(ev.image[far], on_disk[far])
    qtbot.mouseClick(win.history_panel.apply, LEFT)
    edited = tmp_path / "edited.png"
    win.ask_save_path = lambda *a, **k: str(edited)
    assert win.export_png()
    params = read_png_parameters(edited)
    assert params["Source prompt"] == "a red house" and params["Seed"] == "99"
    assert win.open_path(str(edited))
    assert np.array_equal(win.doc.image, ev.image)


def test_edit_prompt_of_a_png_the_cli_generated_replays_its_eta(
    make_window, qtbot, tmp_path, monkeypatch
):
    """A picture generated by ``python -m engine generate --eta 0.5`` and opened in the
    editor: Edit prompt replays that chain (its η, seed, steps, guidance), read from the PNG
    under the engine's names ("Eta" used to be left under its label and read as 0)."""
    from engine import cli

    png = tmp_path / "cli.png"
    argv = ["generate", "--model", "builtin:tiny", "--device", "cpu", "-p", "a red house"]
    argv += ["--seed", "5", "--steps", "3", "--guidance", "2", "--eta", "0.5", "-o", str(png)]
    assert cli.main(argv) == 0
    _, _, req = edit_prompt_of_png(make_window, qtbot, png, "a blue house")
    assert req.options["eta"] == 0.5 and req.options["source_prompt"] == "a red house"
    assert (req.seed, req.steps, req.guidance) == (5, 3, 2.0)


def test_edit_prompt_whose_diffedit_region_is_empty_says_so_and_changes_nothing(
    make_window, qtbot, tmp_path, monkeypatch
):
    """A generated PNG opened from disk, its prompt edited, and DiffEdit finding nowhere the
    prompts disagree: the window shows why nothing was made (and what to do), and the
    picture, its history and the results stay as they were."""
    import engine.jobs.attention_edits as attention_edits

    def nothing_found(ctx, image, *args):
        yield from ()
        return np.zeros(image.shape[:2], np.float32), 0.0, True

    monkeypatch.setattr(attention_edits, "diffedit_blend", nothing_found)
    png = generated_png(make_window, qtbot, tmp_path, seed=7)

    win = make_window()
    assert win.open_path(str(png))
    before, results = win.doc.image.copy(), len(win.doc.history)
    choose(win, "edit_generated", qtbot)
    set_prompt(win, qtbot, "a blue house")
    with qtbot.waitSignal(win.bridge.failed, timeout=90_000):
        qtbot.mouseClick(win.prompt_panel.run, LEFT)
    assert "found nowhere that the new prompt changes" in win.banner.text()
    assert "Blend region" in win.banner.text() and not win.bridge.busy
    assert np.array_equal(win.doc.image, before) and len(win.doc.history) == results


def test_a_word_weighted_zero_in_edit_prompt_takes_it_out(
    make_window, qtbot, tmp_path, monkeypatch
):
    """A generated PNG opened from disk, its prompt edited to weight a word 0: the edit is the
    one with the word deleted (the word is named as what changes), and the exported result
    keeps the prompt as typed."""
    local_edits_only(monkeypatch, "edit_generated")
    png = generated_png(make_window, qtbot, tmp_path, seed=5)
    results = {}
    for prompt in ("a house", "a (red:0) house"):  # each in a window of its own, as opened
        # (a result's blend mask lands on an empty mask layer, and would steer the next edit)
        win = make_window()
        assert win.open_path(str(png))
        choose(win, "edit_generated", qtbot)
        set_prompt(win, qtbot, prompt)
        if prompt == "a (red:0) house":
            words = win.prompt_panel.findChild(QLineEdit, "param_blend_words")
            assert words.placeholderText() == "red"
        ev = click_and_wait(qtbot, win, win.prompt_panel.run)
        assert type(ev).__name__ == "Finished", ev
        results[prompt] = ev.image
    assert np.array_equal(results["a (red:0) house"], results["a house"])
    # the word left out has no map in the result; selecting it shows where it was before
    _select(win, qtbot, 2, len("(red:0)"))
    assert win.canvas.heat.isVisible()
    assert "before the last edit" in win.statusBar().currentMessage()
    qtbot.mouseClick(win.history_panel.apply, LEFT)
    edited = tmp_path / "edited.png"
    win.ask_save_path = lambda *a, **k: str(edited)
    assert win.export_png()
    assert read_png_parameters(edited)["prompt"] == "a (red:0) house"
    # another picture opened: the last edit's maps belonged to the old one
    assert win.open_path(str(png))
    _select(win, qtbot, 2, len("(red:0)"))
    assert win.canvas.heat.array is None
    assert "No attention maps" in win.statusBar().currentMessage()
