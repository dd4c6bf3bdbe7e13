"""Zoom and pan with real wheel, key and mouse events; paste and drag & drop of images."""

import numpy as np
import pytest
from helpers import drag
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QImage, QWheelEvent
from PySide6.QtWidgets import QApplication

from editor import files

CTRL = Qt.KeyboardModifier.ControlModifier


@pytest.fixture
def big(make_window):
    rng = np.random.default_rng(1)
    return make_window(rng.integers(0, 256, (1000, 1200, 3), dtype=np.uint8))


def wheel(canvas, pos: QPoint, up: bool) -> None:
    vp = canvas.viewport()
    ev = QWheelEvent(
        QPointF(pos),
        QPointF(vp.mapToGlobal(pos)),
        QPoint(0, 0),
        QPoint(0, 120 if up else -120),
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
        Qt.ScrollPhase.NoScrollPhase,
        False,
    )
    QApplication.sendEvent(vp, ev)


def scene_at(canvas, pos: QPoint):
    p = canvas.mapToScene(pos)
    return np.array([p.x(), p.y()])


def test_wheel_zooms_around_the_cursor(big, qtbot):
    c = big.canvas
    qtbot.keyClick(c, Qt.Key.Key_1, CTRL)  # 100%
    assert c.zoom == 1.0 and big.zoom_label.text() == "100%"
    c.centerOn(600, 500)
    pos = QPoint(c.viewport().width() // 3, c.viewport().height() // 4)
    under = scene_at(c, pos)
    wheel(c, pos, up=True)
    assert c.zoom == pytest.approx(1.25) and c.transform().m22() == pytest.approx(1.25)
    assert np.abs(scene_at(c, pos) - under).max() <= 1.0
    wheel(c, pos, up=False)
    wheel(c, pos, up=False)
    assert c.zoom == pytest.approx(0.8)
    assert np.abs(scene_at(c, pos) - under).max() <= 1.5
    assert big.zoom_label.text() == "80%" and not c.auto_fit


def test_fit_and_actual_size(big, qtbot):
    c = big.canvas
    qtbot.keyClick(c, Qt.Key.Key_1, CTRL)
    assert c.zoom == 1.0
    qtbot.keyClick(c, Qt.Key.Key_0, CTRL)
    vp = c.viewport().rect()
    assert c.zoom == pytest.approx(min((vp.width() - 16) / 1200, (vp.height() - 16) / 1000))
    # the whole image is on screen, centred
    tl, br = c.mapFromScene(0, 0), c.mapFromScene(1200, 1000)
    assert vp.contains(tl) and vp.contains(br)
    centre = scene_at(c, vp.center())
    assert np.abs(centre - [600, 500]).max() <= 2 / c.zoom
    # fit follows the window size until the user zooms
    big.resize(big.width() - 200, big.height())
    qtbot.waitUntil(lambda: c.zoom < min((vp.width() - 16) / 1200, (vp.height() - 16) / 1000))


@pytest.mark.parametrize("how", ["space", "middle"])
def test_pan_moves_the_view_not_the_pixels(big, qtbot, how):
    c = big.canvas
    qtbot.keyClick(c, Qt.Key.Key_1, CTRL)
    c.centerOn(600, 500)
    centre = c.viewport().rect().center()
    before = scene_at(c, centre)
    a, b = (400, 300), (340, 260)  # drag 60 px left and 40 px up
    if how == "space":
        qtbot.keyPress(c, Qt.Key.Key_Space)
        drag(qtbot, c, [a, b])
        qtbot.keyRelease(c, Qt.Key.Key_Space)
    else:
        drag(qtbot, c, [a, b], button=Qt.MouseButton.MiddleButton)
    assert np.abs(scene_at(c, centre) - before - [60, 40]).max() <= 1
    assert not big.doc.strokes.any() and big.doc.undo_stack.count() == 0
    drag(qtbot, c, [a, b])  # without space it paints again
    assert big.doc.strokes[..., 3].any()


def test_paste_an_image(window, qtbot):
    img = QImage(64, 48, QImage.Format.Format_RGB888)
    img.fill(Qt.GlobalColor.darkCyan)
    QApplication.clipboard().setImage(img)
    qtbot.keyClick(window.canvas, Qt.Key.Key_V, CTRL)
    assert window.doc.size == (48, 64)
    assert (window.doc.image == [0, 128, 128]).all()
    assert window.doc.is_modified() and not window.banner_host.isVisible()
    QApplication.clipboard().clear()
    qtbot.keyClick(window.canvas, Qt.Key.Key_V, CTRL)
    assert "no image" in window.banner.text() and window.doc.size == (48, 64)


def drop(win, mime: QMimeData) -> bool:
    pos = QPointF(win.canvas.geometry().center())
    enter = QDragEnterEvent(
        pos.toPoint(), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.NoModifier
    )
    QApplication.sendEvent(win, enter)
    if not enter.isAccepted():
        return False
    ev = QDropEvent(pos, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.NoModifier)
    QApplication.sendEvent(win, ev)
    return True


def test_drop_an_image_file(window, qtbot, tmp_path):
    img = np.random.default_rng(2).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    path = tmp_path / "dropped.png"
    files.save_png(img, path, {"prompt": "a boat", "seed": 7, "steps": 9})
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    assert drop(window, mime)
    assert np.array_equal(window.doc.image, img) and window.doc.path == str(path)
    assert window.doc.settings["prompt"] == "a boat" and window.doc.settings["steps"] == 9
    assert "dropped.png" in window.windowTitle()
    # a damaged file: an error in the window, the open image stays
    bad = tmp_path / "bad.png"
    bad.write_bytes(path.read_bytes()[:60])
    mime.setUrls([QUrl.fromLocalFile(str(bad))])
    assert drop(window, mime)
    assert window.banner_host.isVisible() and "bad.png" in window.banner.text()
    assert np.array_equal(window.doc.image, img)
    assert not drop(window, QMimeData())  # nothing usable: the drag is refused


def test_zoomed_out_view_draws_from_a_cache_that_follows_edits(make_window, qtbot):
    win = make_window(np.full((2048, 2048, 3), 128, np.uint8))
    c = win.canvas  # fitted: well below 50%, so layers draw from a halved (or smaller) copy
    assert c.zoom < 0.5
    win.tools_panel.set_colour((255, 0, 0))
    c.brush.size, c.brush.hardness = 120, 1.0
    a, b = c.mapFromScene(600, 1000), c.mapFromScene(1400, 1000)
    drag(qtbot, c, [(a.x(), a.y()), (b.x(), b.y())])

    def colour_at(x, y):
        qtbot.wait(20)
        px = c.viewport().grab().toImage().pixelColor(c.mapFromScene(x, y))
        return px.red(), px.green(), px.blue()

    assert colour_at(1000, 1000) == (255, 0, 0)
    assert c.layers["strokes"].mip is not None  # the cache is what was drawn
    assert colour_at(1000, 1400) == (128, 128, 128)
    qtbot.keyClick(c, Qt.Key.Key_Z, CTRL)
    assert colour_at(1000, 1000) == (128, 128, 128)


def test_layers_under_an_opaque_preview_are_skipped_but_not_under_a_masked_one(window, qtbot):
    c = window.canvas
    c.actual_size()
    c.centerOn(100, 80)
    window.doc.image[:] = 50
    window.doc.layer_changed.emit("image", window.doc.full_rect())
    h, w = window.doc.size

    def colour_at(x, y):
        px = c.viewport().grab().toImage().pixelColor(c.mapFromScene(x, y))
        return px.red(), px.green(), px.blue()

    c.show_preview(np.full((h // 2, w // 2, 3), 200, np.uint8))  # x̂₀ at working size
    assert c.preview.hides_layers() and colour_at(10, 10) == (200, 200, 200)
    window.history_panel.compare.setChecked(True)  # compare: the image again
    assert not c.preview.hides_layers() and colour_at(10, 10) == (50, 50, 50)
    window.history_panel.compare.setChecked(False)
    rgba = np.full((h // 2, w // 2, 4), 200, np.uint8)
    rgba[..., 3] = 255
    rgba[:, : w // 4, 3] = 0  # a masked job: x̂₀ only in the right half
    c.show_preview(rgba)
    assert not c.preview.hides_layers()
    assert colour_at(20, 80) == (50, 50, 50) and colour_at(180, 80) == (200, 200, 200)
