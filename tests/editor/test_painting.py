"""Brushes, eraser, mask operations and undo, driven by real mouse and key events."""

import numpy as np
import pytest
from helpers import drag, expected_coverage, hard_brush_at_100, scene_points, view_point
from PySide6.QtCore import Qt

from editor import tools


@pytest.fixture
def canvas(window):
    return hard_brush_at_100(window.canvas, 10)


def test_colour_stroke_changes_exactly_the_brushed_pixels(window, canvas, qtbot):
    qtbot.keyClick(canvas, Qt.Key.Key_B)
    assert canvas.tool == tools.COLOUR
    window.tools_panel.set_colour((10, 200, 30))
    pts = [view_point(canvas, 40, 50), view_point(canvas, 90, 60), view_point(canvas, 120, 100)]
    image_before = window.doc.image.copy()
    drag(qtbot, canvas, pts)
    cov = expected_coverage(window.doc.size, scene_points(canvas, pts), 5.0)
    s = window.doc.strokes
    assert cov.sum() > 500
    assert (s[cov] == [10, 200, 30, 255]).all()
    assert (s[~cov] == 0).all()
    assert np.array_equal(window.doc.image, image_before)  # strokes live on their own layer


def test_undo_redo_restore_stroke_pixels(window, canvas, qtbot):
    drag(qtbot, canvas, [view_point(canvas, 30, 30), view_point(canvas, 150, 120)])
    painted = window.doc.strokes.copy()
    assert painted[..., 3].any()
    qtbot.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert not window.doc.strokes.any()
    mods = Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier
    qtbot.keyClick(canvas, Qt.Key.Key_Z, mods)
    assert np.array_equal(window.doc.strokes, painted)


def test_mask_paint_then_erase(window, canvas, qtbot):
    qtbot.keyClick(canvas, Qt.Key.Key_M)
    a, b = view_point(canvas, 20, 80), view_point(canvas, 180, 80)
    drag(qtbot, canvas, [a, b])
    line = expected_coverage(window.doc.size, scene_points(canvas, [a, b]), 5.0)
    assert (window.doc.mask[line] == 255).all() and (window.doc.mask[~line] == 0).all()
    qtbot.keyClick(canvas, Qt.Key.Key_E)  # eraser works on the layer brushed last: the mask
    assert canvas.tool == tools.ERASER and canvas.erase_target == "mask"
    canvas.brush.size = 20
    c, d = view_point(canvas, 100, 60), view_point(canvas, 100, 100)
    drag(qtbot, canvas, [c, d])
    hole = expected_coverage(window.doc.size, scene_points(canvas, [c, d]), 10.0)
    assert (window.doc.mask[hole] == 0).all()
    assert (window.doc.mask[line & ~hole] == 255).all()
    assert not window.doc.strokes.any()
    qtbot.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert (window.doc.mask[line] == 255).all()


def test_x_swaps_paint_and_erase_and_brackets_resize(window, canvas, qtbot):
    qtbot.keyClick(canvas, Qt.Key.Key_B)
    qtbot.keyClick(canvas, Qt.Key.Key_X)
    assert canvas.tool == tools.ERASER and canvas.erase_target == "strokes"
    qtbot.keyClick(canvas, Qt.Key.Key_X)
    assert canvas.tool == tools.COLOUR
    size = canvas.brush.size
    qtbot.keyClick(canvas, Qt.Key.Key_BracketRight)
    assert canvas.brush.size > size
    qtbot.keyClick(canvas, Qt.Key.Key_BracketLeft)
    qtbot.keyClick(canvas, Qt.Key.Key_BracketLeft)
    assert canvas.brush.size < size


def test_soft_brush_and_eraser_on_strokes(window, canvas, qtbot):
    canvas.brush.hardness = 0.0
    canvas.brush.size = 30
    p = view_point(canvas, 100, 80)
    drag(qtbot, canvas, [p])
    alpha = window.doc.strokes[..., 3]
    sx, sy = scene_points(canvas, [p])[0]
    assert alpha[int(sy), int(sx)] > 240  # centre nearly opaque
    assert 0 < alpha[int(sy), int(sx) + 11] < 200  # soft edge
    qtbot.keyClick(canvas, Qt.Key.Key_E)
    canvas.brush.hardness, canvas.brush.size = 1.0, 60
    drag(qtbot, canvas, [p])
    assert not window.doc.strokes[..., 3].any()


def test_eyedropper_picks_visible_colour(window, canvas, qtbot):
    qtbot.keyClick(canvas, Qt.Key.Key_I)
    vp = canvas.mapFromScene(37.5, 41.5)
    s = canvas.mapToScene(vp)
    x, y = int(s.x()), int(s.y())
    qtbot.mouseClick(canvas.viewport(), Qt.MouseButton.LeftButton, pos=vp)
    assert canvas.brush.colour == tuple(int(v) for v in window.doc.image[y, x])


def test_mask_operations_are_undoable(window, qtbot):
    doc = window.doc
    doc.mask[60:100, 80:120] = 255
    doc.mark_saved()
    base = doc.mask.copy()
    panel = window.tools_panel
    panel.amount.setValue(5)
    qtbot.mouseClick(panel.findChild(type(panel.colour), "mask_grow"), Qt.MouseButton.LeftButton)
    assert doc.mask[55:105, 75:125].min() == 255 and doc.mask.sum() > base.sum()
    qtbot.mouseClick(panel.findChild(type(panel.colour), "mask_shrink"), Qt.MouseButton.LeftButton)
    assert np.array_equal(doc.mask, base)  # shrink undoes grow on a box
    qtbot.mouseClick(panel.findChild(type(panel.colour), "mask_invert"), Qt.MouseButton.LeftButton)
    assert np.array_equal(doc.mask, 255 - base)
    qtbot.mouseClick(panel.findChild(type(panel.colour), "mask_invert"), Qt.MouseButton.LeftButton)
    qtbot.mouseClick(panel.findChild(type(panel.colour), "mask_feather"), Qt.MouseButton.LeftButton)
    soft = doc.mask[80, 70:90]
    assert soft[0] < soft[-1] and len(set(soft.tolist())) > 3  # a ramp, not a step
    qtbot.mouseClick(panel.findChild(type(panel.colour), "clear_mask"), Qt.MouseButton.LeftButton)
    assert not doc.mask.any()
    for _ in range(6):
        doc.undo_stack.undo()
    assert np.array_equal(doc.mask, base)


def test_undo_memory_holds_only_the_dirty_rectangle(make_window, qtbot):
    win = make_window(np.zeros((2048, 2048, 3), np.uint8))
    c = win.canvas
    c.actual_size()
    c.centerOn(1000, 1000)
    c.brush.size, c.brush.hardness = 20, 1.0
    drag(qtbot, c, [view_point(c, 1000, 1000), view_point(c, 1040, 1010)])
    cmd = win.doc.undo_stack.command(0)
    # 61x31 px box RGBA, before + after: a few KB, not the 16 MB layer
    assert cmd.nbytes < 64 * 40 * 4 * 2
    assert win.doc.undo_bytes() == cmd.nbytes


def test_layers_can_be_hidden(window, qtbot):
    cb = window.tools_panel.visible["mask"]
    cb.setChecked(False)
    assert not window.canvas.layers["mask"].isVisible()
    cb.setChecked(True)
    assert window.canvas.layers["mask"].isVisible()


def test_mask_overlay_is_drawn_tinted(window, qtbot):
    """What the user sees: the mask tints the canvas, the stroke layer covers the image."""
    c = window.canvas
    c.actual_size()
    c.centerOn(100, 80)
    window.doc.mask[:, :] = 0
    window.doc.set_mask(np.pad(np.full((40, 40), 255, np.uint8), ((20, 100), (20, 140))))
    window.doc.image[:] = 128
    window.doc.layer_changed.emit("image", window.doc.full_rect())
    qtbot.wait(50)
    shot = c.viewport().grab().toImage()
    inside = shot.pixelColor(c.mapFromScene(40, 40))
    outside = shot.pixelColor(c.mapFromScene(150, 120))
    assert (outside.red(), outside.green(), outside.blue()) == (128, 128, 128)
    assert inside.red() > 160 and inside.green() < 110  # pink tint over grey
