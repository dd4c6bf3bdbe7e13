"""Opening images (EXIF, alpha, palette, CMYK, 16-bit), PNG metadata, projects, recovery."""

import numpy as np
import pytest
from PIL import Image
from PySide6.QtWidgets import QMessageBox

from editor import files, project
from engine import metadata

Btn = QMessageBox.StandardButton


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :10] = 255  # white band on the left
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    im.save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = files.load_image(tmp_path / "r.jpg")
    assert out.shape == (40, 20, 3)
    assert out[:10].mean() > 200 and out[-10:].mean() < 50  # the band is now on top


@pytest.mark.parametrize(
    "mode,check",
    [
        ("RGBA", lambda a: (a[0, 0] == [255, 255, 255]).all() and (a[-1, -1] == [0, 0, 255]).all()),
        ("P", lambda a: a.dtype == np.uint8 and a.shape[2] == 3),
        ("CMYK", lambda a: a.shape[2] == 3),
        ("I;16", lambda a: a.max() == 255 and a.min() == 0),
        ("L", lambda a: a.shape[2] == 3),
    ],
)
def test_modes_convert_to_rgb(tmp_path, mode, check):
    if mode == "RGBA":
        arr = np.zeros((8, 8, 4), np.uint8)
        arr[-1, -1] = [0, 0, 255, 255]  # opaque blue; the rest is transparent → white
        im = Image.fromarray(arr, "RGBA")
    elif mode == "I;16":
        im = Image.fromarray(np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8))
    else:
        im = Image.new("RGB", (8, 8), (10, 120, 200)).convert(mode)
    path = tmp_path / ("x.tiff" if mode in ("CMYK", "I;16") else "x.png")
    im.save(path)
    out = files.load_image(path)
    assert out.dtype == np.uint8 and out.ndim == 3
    assert check(out)


def test_a1111_parameters_round_trip(tmp_path):
    params = {
        "prompt": "a red house, at dusk",
        "negative_prompt": "blurry",
        "steps": 25,
        "guidance": 7.5,
        "seed": 1,
        "size": "512x512",
        "model": "builtin:demo",
        "strength": 0.6,
        "method": "sdedit",
    }
    text = metadata.format_parameters(params)  # the one writer, shared with the CLI
    assert text.splitlines()[0] == "a red house, at dusk"
    assert text.splitlines()[1] == "Negative prompt: blurry"
    assert text.splitlines()[2].startswith("Steps: 25, Sampler: DDIM, CFG scale: 7.5, Seed: 1")
    assert "Denoising strength: 0.6" in text
    img = np.full((4, 4, 3), 9, np.uint8)
    files.save_png(img, tmp_path / "o.png", params)
    parsed = files.read_parameters(tmp_path / "o.png")
    settings = files.settings_from_parameters(parsed)
    assert settings == {
        "prompt": "a red house, at dusk",
        "negative_prompt": "blurry",
        "steps": 25,
        "guidance": 7.5,
        "seed": 1,
        "method": "sdedit",
        "options": {"sdedit": {"strength": 0.6}},  # each method has its own strength
    }
    # a method option comes back under the panel method that runs it, read through its spec
    params.update(method="diffedit_mask", n_samples=7, steps="x")
    files.save_png(img, tmp_path / "d.png", params)
    problems: list[str] = []
    settings = files.settings_from_parameters(files.read_parameters(tmp_path / "d.png"), problems)
    assert settings["method"] == "diffedit"
    assert settings["options"] == {"diffedit": {"n_samples": 7, "strength": 0.6}}
    assert "steps" not in settings and problems == [
        "Steps is 'x'; it must be a whole number from 1 to 1000."
    ]
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left nothing behind


def test_truncated_image_shows_error_and_changes_nothing(window, tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.full((300, 300, 3), 7, np.uint8)).save(good)
    data = good.read_bytes()
    bad = tmp_path / "bad.png"
    bad.write_bytes(data[: len(data) // 2])
    doc = window.doc
    doc.strokes[5:9, 5:9] = 200
    snapshot = (doc.image.copy(), doc.strokes.copy(), doc.mask.copy(), doc.undo_stack.count())
    assert window.open_path(str(bad)) is False
    assert window.banner_host.isVisible()
    assert "bad.png" in window.banner.text() and "truncated" in window.banner.text()
    assert np.array_equal(doc.image, snapshot[0]) and np.array_equal(doc.strokes, snapshot[1])
    assert np.array_equal(doc.mask, snapshot[2]) and doc.undo_stack.count() == snapshot[3]
    assert window.open_path(str(tmp_path / "missing.png")) is False
    assert "does not exist" in window.banner.text()


def test_open_image_restores_its_parameters(window, tmp_path):
    img = np.full((64, 96, 3), 50, np.uint8)
    files.save_png(img, tmp_path / "p.png", {"prompt": "a boat", "seed": 42, "steps": 7})
    assert window.open_path(str(tmp_path / "p.png"))
    assert window.doc.size == (64, 96)
    assert window.doc.settings["prompt"] == "a boat" and window.doc.settings["seed"] == 42
    assert window.prompt_panel.prompt.toPlainText() == "a boat"
    assert not window.doc.is_modified()


def _decorate(doc):
    doc.strokes[10:30, 20:60] = [255, 0, 0, 200]
    doc.mask[50:90, 30:70] = 255
    doc.mask[50:90, 70:72] = 128
    doc.update_settings(prompt="a castle", negative_prompt="fog", seed=99, steps=11)
    doc.settings["options"]["repaint"] = {"jump_length": 3}
    doc.add_result(np.full((*doc.size, 3), 33, np.uint8), {"method": "sdedit", "seed": 5})


def test_project_save_reopen_round_trips(make_window, tmp_path, qtbot):
    win = make_window(np.random.default_rng(1).integers(0, 256, (120, 90, 3), dtype=np.uint8))
    _decorate(win.doc)
    path = str(tmp_path / "work.deproj")
    win.ask_save_path = lambda *a: path
    win.save_project()  # Ctrl+S with no project yet → "save as"
    assert not win.doc.is_modified() and win.doc.project_path == path
    other = make_window()
    assert other.open_path(path)
    a, b = win.doc, other.doc
    for name in ("image", "strokes", "mask"):
        assert np.array_equal(a.layer(name), b.layer(name)), name
    for key in ("prompt", "negative_prompt", "seed", "steps"):
        assert b.settings[key] == a.settings[key]
    assert b.settings["options"]["repaint"] == {"jump_length": 3}
    assert len(b.history) == 1 and b.history[0].parameters == {"method": "sdedit", "seed": 5}
    assert np.array_equal(b.history[0].image, a.history[0].image)
    assert other.prompt_panel.prompt.toPlainText() == "a castle"
    assert other.history_panel.list.count() == 1


def test_export_png_carries_the_parameters_of_the_applied_result(window, tmp_path):
    made = {"prompt": "a tree", "seed": 3, "model": "builtin:tiny", "method": "sdedit"}
    entry = window.doc.add_result(np.full((*window.doc.size, 3), 90, np.uint8), made)
    window.apply_result(entry)
    window.doc.update_settings(prompt="the next idea")  # settings are not the image's
    out = str(tmp_path / "e.png")
    window.ask_save_path = lambda *a: out
    assert window.export_png()
    p = files.read_parameters(out)
    assert p["prompt"] == "a tree" and p["Seed"] == "3" and p["Model"] == "builtin:tiny"
    assert np.array_equal(files.load_image(out), window.doc.image)


def test_autosave_then_crash_then_recovery_offers_the_work(make_window, data_dir, qtbot):
    win = make_window(np.zeros((64, 80, 3), np.uint8))
    _decorate(win.doc)
    assert win.autosaver.save_now(wait=True)
    expected = {n: win.doc.layer(n).copy() for n in ("image", "strokes", "mask")}
    win.shutdown(clean=False)  # what a crash leaves: the autosave and its session file
    assert project.recoverable()

    fresh = make_window()
    asked = []

    def answer(title, text, *a):
        asked.append(text)
        return Btn.Yes

    fresh.ask = answer
    assert fresh.offer_recovery()
    assert asked and "did not close cleanly" in asked[0]
    for name, arr in expected.items():
        assert np.array_equal(fresh.doc.layer(name), arr), name
    assert fresh.doc.settings["prompt"] == "a castle" and len(fresh.doc.history) == 1
    assert fresh.doc.is_modified()  # recovered work still needs saving
    assert not project.recoverable()  # offered once


def test_clean_exit_leaves_nothing_to_recover(make_window, data_dir):
    win = make_window()
    win.doc.mask[:4, :4] = 255
    win.doc.mark_dirty()
    assert win.autosaver.save_now(wait=True)
    win.shutdown(clean=True)
    assert not project.recoverable()


def test_unsaved_changes_prompt_on_close(make_window):
    win = make_window()
    win.doc.mask[:4, :4] = 255
    win.doc.mark_dirty()
    win.ask = lambda *a: Btn.Cancel
    assert not win.close()  # cancelled: the window stays
    win.ask = lambda *a: Btn.Discard
    assert win.close()
