"""The user's own files, from disk: open → edit → save → reopen → edit, with real events."""

import numpy as np
import pytest
from helpers import drag, hard_brush_at_100, view_point
from PIL import Image
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox, QPushButton

Btn = QMessageBox.StandardButton
CTRL = Qt.KeyboardModifier.ControlModifier


def _photo(path, size=(160, 200)):
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def _activate(qtbot, win):
    """Window shortcuts (Ctrl+O, Ctrl+S) reach only the active window."""
    win.activateWindow()
    qtbot.waitUntil(win.isActiveWindow, timeout=5000)


def _file_open(qtbot, win, path):
    """File › Open (Ctrl+O), the dialog answered with ``path``."""
    win.ask_open_path = lambda *a: str(path)
    _activate(qtbot, win)
    qtbot.keyClick(win.canvas, Qt.Key.Key_O, CTRL)


def _run(qtbot, win, steps=2):
    win.doc.update_settings(method="sdedit", steps=steps, strength=0.9, prompt="a red house")
    with qtbot.waitSignal(win.bridge.finished, timeout=60_000):
        qtbot.mouseClick(win.prompt_panel.run, Qt.MouseButton.LeftButton)
    return win.doc.history[-1]


def _shown_pixel(win, x, y):
    """What the canvas' image layer draws at (x, y)."""
    c = win.canvas.layers["image"].qimage.pixelColor(x, y)
    return c.red(), c.green(), c.blue()


def test_open_png_run_apply_changes_the_canvas(make_window, tmp_path, qtbot):
    src = _photo(tmp_path / "photo.png")
    win = make_window()
    _file_open(qtbot, win, tmp_path / "photo.png")
    assert np.array_equal(win.doc.image, src)
    entry = _run(qtbot, win)
    assert not np.array_equal(entry.image, src)
    qtbot.mouseClick(win.history_panel.apply, Qt.MouseButton.LeftButton)
    assert not win.banner_host.isVisible(), win.banner.text()
    assert np.array_equal(win.doc.image, entry.image)
    ys, xs = np.nonzero((entry.image != src).any(2))
    y, x = int(ys[0]), int(xs[0])
    assert _shown_pixel(win, x, y) == tuple(int(v) for v in entry.image[y, x])
    qtbot.keyClick(win.canvas, Qt.Key.Key_Z, CTRL)
    assert np.array_equal(win.doc.image, src)


@pytest.fixture
def saved_project(make_window, tmp_path, qtbot):
    """photo.png opened, saved as work.deproj through Ctrl+S; the window is closed."""
    _photo(tmp_path / "photo.png")
    win = make_window()
    _file_open(qtbot, win, tmp_path / "photo.png")
    path = str(tmp_path / "work.deproj")
    win.ask_save_path = lambda *a: path
    _activate(qtbot, win)
    qtbot.keyClick(win.canvas, Qt.Key.Key_S, CTRL)
    assert win.doc.project_path == path
    win.close()
    return path


def test_open_project_paint_grow_clear_apply(make_window, saved_project, qtbot):
    win = make_window()
    _file_open(qtbot, win, saved_project)
    assert win.doc.project_path == saved_project
    canvas = hard_brush_at_100(win.canvas, 10)
    qtbot.keyClick(canvas, Qt.Key.Key_B)
    drag(qtbot, canvas, [view_point(canvas, 30, 30), view_point(canvas, 120, 90)])
    assert win.doc.strokes[..., 3].any()
    qtbot.keyClick(canvas, Qt.Key.Key_M)
    drag(qtbot, canvas, [view_point(canvas, 60, 60), view_point(canvas, 100, 60)])
    painted = int(win.doc.mask.astype(bool).sum())
    assert painted > 0
    qtbot.mouseClick(win.tools_panel.findChild(QPushButton, "mask_grow"), Qt.MouseButton.LeftButton)
    assert int(win.doc.mask.astype(bool).sum()) > painted
    qtbot.mouseClick(
        win.tools_panel.findChild(QPushButton, "clear_mask"), Qt.MouseButton.LeftButton
    )
    assert not win.doc.mask.any()
    entry = _run(qtbot, win)
    qtbot.mouseClick(win.history_panel.apply, Qt.MouseButton.LeftButton)
    assert np.array_equal(win.doc.image, entry.image)
    assert not win.banner_host.isVisible(), win.banner.text()
    qtbot.keyClick(win.canvas, Qt.Key.Key_S, CTRL)  # saved back into the same project
    other = make_window()
    assert other.open_path(saved_project)
    assert np.array_equal(other.doc.image, entry.image)
    assert np.array_equal(other.doc.strokes, win.doc.strokes)


def _transparent_qimage():
    from PySide6.QtGui import QColor, QImage

    img = QImage(20, 10, QImage.Format.Format_ARGB32)
    img.fill(QColor(0, 0, 0, 0))  # transparent
    img.setPixelColor(3, 4, QColor(200, 10, 10, 255))
    return img


def test_paste_goes_through_the_image_loader(make_window, tmp_path, qtbot):
    """A pasted image with transparency reads like the same picture from a file: alpha
    over white (the clipboard path used to turn transparent pixels black)."""
    from PySide6.QtWidgets import QApplication

    img = _transparent_qimage()
    img.save(str(tmp_path / "t.png"))
    from_file = make_window()
    assert from_file.open_path(str(tmp_path / "t.png"))
    win = make_window()
    QApplication.clipboard().setImage(img)
    _activate(qtbot, win)
    qtbot.keyClick(win.canvas, Qt.Key.Key_V, CTRL)
    assert win.doc.size == (10, 20)
    assert np.array_equal(win.doc.image, from_file.doc.image)
    assert tuple(win.doc.image[0, 0]) == (255, 255, 255)
    assert tuple(win.doc.image[4, 3]) == (200, 10, 10)
    assert win.doc.image.flags.writeable


def test_dropped_image_data_goes_through_the_image_loader(make_window, qtbot):
    from PySide6.QtCore import QMimeData, QPointF
    from PySide6.QtGui import QDropEvent

    win = make_window()
    mime = QMimeData()
    mime.setImageData(_transparent_qimage())
    event = QDropEvent(
        QPointF(5, 5),
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    win.dropEvent(event)
    assert win.doc.size == (10, 20)
    assert tuple(win.doc.image[0, 0]) == (255, 255, 255)
