"""Mouse helpers: drive the canvas viewport with real press/move/release events; and a window
on an engine of its own."""

from contextlib import contextmanager

import numpy as np
from PySide6.QtCore import QPoint, Qt

from editor import tools


def drag(qtbot, canvas, points, button=Qt.MouseButton.LeftButton, modifier=None):
    vp = canvas.viewport()
    mod = modifier or Qt.KeyboardModifier.NoModifier
    pts = [QPoint(*p) for p in points]
    qtbot.mousePress(vp, button, mod, pts[0])
    for p in pts[1:]:
        qtbot.mouseMove(vp, p)
    qtbot.mouseRelease(vp, button, mod, pts[-1])


def scene_points(canvas, points):
    out = []
    for p in points:
        s = canvas.mapToScene(QPoint(*p))
        out.append((s.x(), s.y()))
    return out


def expected_coverage(shape, scene_pts, radius):
    """Pixels a hard brush of ``radius`` covers along the polyline (pixel centres)."""
    h, w = shape
    cov = np.zeros((h, w), bool)
    pts = [scene_pts[0]] + list(scene_pts)
    for a, b in zip(pts[:-1], pts[1:]):
        cov |= tools.coverage(0, 0, h, w, a, b, radius, 1.0) > 0
    return cov


def view_point(canvas, x, y):
    p = canvas.mapFromScene(float(x), float(y))
    return (p.x(), p.y())


def hard_brush_at_100(canvas, size):
    """100% zoom centred on the test image, a hard brush of ``size`` px: exact pixels."""
    canvas.actual_size()
    canvas.centerOn(100, 80)
    canvas.brush.hardness = 1.0
    canvas.brush.size = size
    return canvas


# ---- the prompt panel, as a user drives it ---------------------------------------------------


def sent_requests(win):
    """Record every request the window submits (and still submit it)."""
    sent, submit = [], win.bridge.submit
    win.bridge.submit = lambda req: (sent.append(req), submit(req))[1]
    return sent


def choose(win, method, qtbot, **params):
    """Pick a method in the panel's combo box and set its form's fields as a user would."""
    from PySide6.QtWidgets import QCheckBox, QComboBox, QLineEdit, QWidget

    combo = win.prompt_panel.method
    combo.setCurrentIndex(combo.findData(method))
    for key, v in params.items():
        w = win.prompt_panel.findChild(QWidget, f"param_{key}")
        if isinstance(w, QComboBox):
            w.setCurrentText(v)
        elif isinstance(w, QLineEdit):
            w.clear()
            qtbot.keyClicks(w, v)
        elif isinstance(w, QCheckBox):
            if w.isChecked() != v:
                w.click()
        else:
            w.setValue(v)


def set_prompt(win, qtbot, text):
    win.prompt_panel.prompt.clear()
    qtbot.keyClicks(win.prompt_panel.prompt, text)


def click_and_wait(qtbot, win, button, timeout=90_000):
    with qtbot.waitSignal(win.bridge.finished, timeout=timeout) as blocker:
        qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    return blocker.args[0]


@contextmanager
def window_on_own_engine(qtbot, model: str):
    """A shown main window on a fresh engine with ``model`` loaded, so a test may switch
    models without touching the shared engine (which keeps builtin:tiny)."""
    from PySide6.QtWidgets import QMessageBox

    from editor.app import MainWindow
    from engine import Engine

    eng = Engine(model, device="cpu")
    assert type(eng.wait(1, timeout=180)).__name__ == "ModelLoaded"
    win = MainWindow(eng, model=None, autosave_ms=10**9)
    win.ask = lambda *a, **k: QMessageBox.StandardButton.Discard
    qtbot.addWidget(win)
    win.resize(900, 700)
    win.show()
    qtbot.waitExposed(win)
    try:
        yield win
    finally:
        win.close()
        win.shutdown()
        eng.shutdown()
