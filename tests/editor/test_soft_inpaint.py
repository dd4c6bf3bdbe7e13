"""Soft inpainting from the panel: a photo from disk, a soft mask painted with real mouse
events, Inpaint with Soft mask; the engine gets the grey levels and pixels the mask does not
touch stay exactly as they were."""

import numpy as np
from helpers import choose, drag, hard_brush_at_100, sent_requests, view_point
from PIL import Image

from editor import tools


def test_a_soft_brush_mask_means_how_much_may_change(make_window, qtbot, tmp_path):
    path = tmp_path / "photo.png"
    photo = np.random.default_rng(2).integers(0, 256, (160, 200, 3), np.uint8)
    Image.fromarray(photo).save(path)
    win = make_window()
    assert win.open_path(str(path))
    sent = sent_requests(win)
    win.select_tool(tools.MASK)
    canvas = hard_brush_at_100(win.canvas, 40)
    canvas.brush.hardness = 0.0  # a soft brush: grey levels fading to its edge
    drag(qtbot, canvas, [view_point(canvas, 60, 80), view_point(canvas, 120, 80)])
    levels = np.unique(win.doc.mask)
    assert 0 < levels[1] < 255 and levels.size > 10  # grey levels, not a binary mask
    choose(win, "repaint", qtbot, soft_mask=True, steps=4)
    win.doc.update_settings(prompt="a boulder")
    with qtbot.waitSignal(win.bridge.finished, timeout=120_000):
        win.run_method("repaint")
    req = sent[-1]
    assert req.options["soft_mask"] is True and np.array_equal(req.mask, win.doc.mask)
    result = win.doc.history[-1].image
    untouched = win.doc.mask == 0
    assert np.array_equal(result[untouched], photo[untouched])
    assert not np.array_equal(result[win.doc.mask == 255], photo[win.doc.mask == 255])
