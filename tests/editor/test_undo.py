"""The undo stack is bounded by bytes as well as by count; the oldest entries go first."""

import numpy as np
from helpers import drag, view_point

from editor.document import UNDO_BYTES, Document


def fill_mask(doc, value, rows):
    new = doc.mask.copy()
    new[rows] = value
    assert doc.set_mask(new, f"mask {value}")


def test_oldest_entries_are_dropped_when_over_the_byte_budget(qtbot):
    doc = Document(np.zeros((100, 100, 3), np.uint8))
    assert doc.undo_stack.max_bytes == UNDO_BYTES == 512 * 1024**2
    doc.undo_stack.max_bytes = 2 * 100 * 40 * 2 + 1  # room for two 40-row mask changes
    doc.mark_saved()
    for i, rows in enumerate((slice(0, 40), slice(30, 70), slice(60, 100))):
        fill_mask(doc, 50 * (i + 1), rows)
    assert doc.undo_stack.count() == 2 and doc.undo_bytes() <= doc.undo_stack.max_bytes
    assert doc.is_modified()
    doc.undo_stack.undo()
    doc.undo_stack.undo()
    doc.undo_stack.undo()  # nothing left: the first change can no longer be undone
    assert (doc.mask[:30] == 50).all() and not doc.mask[40:].any()
    assert doc.is_modified()  # the saved (empty) state is gone for good
    doc.undo_stack.redo()
    doc.undo_stack.redo()
    assert (doc.mask[60:] == 150).all() and (doc.mask[40:60] == 100).all()


def test_the_newest_entry_is_kept_even_if_alone_it_is_too_big(qtbot):
    doc = Document(np.zeros((64, 64, 3), np.uint8))
    doc.undo_stack.max_bytes = 10
    fill_mask(doc, 255, slice(None))
    assert doc.undo_stack.count() == 1
    doc.undo_stack.undo()
    assert not doc.mask.any()


def test_saving_then_undo_and_new_work_leaves_the_document_modified(qtbot):
    doc = Document(np.zeros((32, 32, 3), np.uint8))
    fill_mask(doc, 10, slice(0, 5))
    fill_mask(doc, 20, slice(5, 10))
    doc.mark_saved()
    doc.undo_stack.undo()
    assert doc.is_modified()
    fill_mask(doc, 30, slice(20, 25))  # the saved state was in the dropped redo part
    assert doc.is_modified()
    doc.undo_stack.undo()
    assert doc.is_modified()


def test_a_long_stroke_on_4096_keeps_only_touched_tiles(make_window, qtbot):
    win = make_window(np.zeros((4096, 4096, 3), np.uint8))
    c = win.canvas  # fitted: the drag crosses most of the image
    c.brush.size, c.brush.hardness = 40, 1.0
    drag(qtbot, c, [view_point(c, 100, 2000), view_point(c, 4000, 2100)])
    cmd = win.doc.undo_stack.command(0)
    painted = int((win.doc.strokes[..., 3] > 0).sum())
    assert painted > 3900 * 38
    # before + after of roughly the painted band, not of its 3900×140 bounding box × 4 layers
    assert cmd.nbytes < painted * 4 * 2 * 1.3
    win.doc.undo_stack.undo()
    assert not win.doc.strokes.any()
