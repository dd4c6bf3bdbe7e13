"""Live mode through the real window: a photo opened from disk, View › Live mode, strokes
painted with real mouse events; the live view follows, stale updates are cancelled, Apply
is undoable."""

import numpy as np
import pytest
from helpers import drag, view_point
from PIL import Image
from PySide6.QtCore import Qt

from editor.live import LIVE_STEPS, live_request
from engine import ModelInfo

CTRL = Qt.KeyboardModifier.ControlModifier


@pytest.fixture
def live_window(make_window, qtbot, tmp_path):
    """A photo opened from disk, live mode turned on, its first update shown."""
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (96, 128, 3), np.uint8)).save(path)
    win = make_window()
    assert win.open_path(str(path))
    win.doc.update_settings(prompt="a red house", steps=6)
    submitted, submit = [], win.bridge.submit_live

    def record(req):
        job_id = submit(req)
        submitted.append((req, job_id))
        return job_id

    win.bridge.submit_live = record
    assert win.live_action.shortcut().toString() == "Ctrl+L"
    with qtbot.waitSignal(win.live.updated, timeout=60_000):
        win.live_action.trigger()  # View › Live mode (offscreen windows take no shortcuts)
    assert win.live_action.isChecked() and win.live_dock.isVisible()
    return win, submitted


def paint(qtbot, win, x, y):
    a, b = view_point(win.canvas, x, y), view_point(win.canvas, x + 20, y + 10)
    drag(qtbot, win.canvas, [a, b])


def test_the_live_view_follows_a_stroke(live_window, qtbot):
    win, submitted = live_window
    first = win.live.result[0].copy()
    assert submitted[0][0].method == "sdedit" and submitted[0][0].steps == LIVE_STEPS - 2
    assert "DDIM steps" in win.live_panel.note.text()  # the tiny model has no few-step variant
    win.canvas.brush.size = 12
    with qtbot.waitSignal(win.live.updated, timeout=60_000):
        paint(qtbot, win, 30, 30)
    req = submitted[-1][0]
    assert req.strokes is not None and np.array_equal(req.strokes, win.doc.strokes)
    assert req.seed == win.doc.settings["seed"] == submitted[0][0].seed  # the seed stays fixed
    assert not np.array_equal(win.live.result[0], first)
    assert not win.live_panel.view.pixmap().isNull()


def test_a_burst_of_strokes_runs_at_most_two_updates_and_shows_the_last(live_window, qtbot):
    win, submitted = live_window
    before = len(submitted)
    shown, cancelled, cancel = [], [], win.bridge.cancel_live

    def record_cancel():
        cancelled.append(win.bridge.live_id)
        cancel()

    win.bridge.cancel_live = record_cancel
    win.bridge.live_finished.connect(lambda ev: shown.append(ev.job_id))
    win.canvas.brush.size = 4
    for k in range(20):
        paint(qtbot, win, 5 + 5 * k, 20 + 3 * k)
    qtbot.waitUntil(lambda: not win.live.pending and win.bridge.live_id is None, timeout=60_000)
    burst = submitted[before:]
    assert 1 <= len(burst) <= 2  # the first stroke's release starts one; the debounce, one more
    last, last_id = burst[-1]
    assert np.array_equal(last.strokes, win.doc.strokes)  # the last one has every stroke
    assert shown and shown[-1] == last_id
    # an update that finished before the next one started may show; a superseded one never
    assert not set(shown) & set(cancelled)


def test_run_goes_first_and_apply_is_undoable(live_window, qtbot):
    win, submitted = live_window
    original = win.doc.image.copy()
    before = len(submitted)
    shown = []
    win.bridge.live_finished.connect(lambda ev: shown.append(ev.job_id))
    paint(qtbot, win, 40, 40)  # its release starts a live update at once
    assert len(submitted) == before + 1 and win.bridge.live_id == submitted[-1][1]
    stroke_update = submitted[-1][1]
    with qtbot.waitSignal(win.bridge.finished, timeout=60_000):
        win.run_method("sdedit")
    assert len(win.doc.history) == 1  # live stood aside: its update was cancelled for the Run
    assert stroke_update not in shown and len(submitted) == before + 1
    with qtbot.waitSignal(win.live.updated, timeout=60_000):
        pass  # and caught up after the Run
    assert np.array_equal(submitted[-1][0].strokes, win.doc.strokes)
    qtbot.mouseClick(win.live_panel.apply, Qt.MouseButton.LeftButton)
    assert np.array_equal(win.doc.image, win.live.result[0])
    assert win.doc.history[-1].parameters["live"] is True
    qtbot.keyClick(win.canvas, Qt.Key.Key_Z, CTRL)
    assert np.array_equal(win.doc.image, original)
    win.live_action.trigger()  # off: the panel goes, nothing runs
    assert not win.live_dock.isVisible() and win.bridge.live_id is None


def test_a_few_step_model_runs_at_its_own_settings(make_window):
    win = make_window(np.zeros((64, 64, 3), np.uint8))
    info = ModelInfo(
        "lcm-model",
        "cpu",
        "float32",
        "epsilon",
        64,
        few_step="lcm",
        defaults={"sampler": "lcm", "steps": 4, "guidance": 7.5},
    )
    req, how = live_request(win.doc, info)
    assert (req.options["sampler"], req.steps, req.guidance) == ("lcm", 4, 7.5)
    assert req.options["batch_size"] == 1 and "lcm model: 4 lcm steps" in how
