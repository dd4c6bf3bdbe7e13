"""Jobs through the window on builtin:tiny: previews stream, results land, cancel, apply, errors."""

import numpy as np
import pytest
from PySide6.QtCore import Qt

from editor.jobs import RunningJob
from engine import EditRequest, Finished


def run_and_wait(qtbot, win, method="sdedit", steps=3, timeout=60_000):
    win.doc.update_settings(method=method, steps=steps, strength=0.8, prompt="a red house")
    with qtbot.waitSignal(win.bridge.finished, timeout=timeout) as blocker:
        qtbot.mouseClick(win.prompt_panel.run, Qt.MouseButton.LeftButton)
    return blocker.args[0]


def test_sdedit_streams_previews_and_lands_in_history(window, qtbot):
    win = window
    win.doc.strokes[40:80, 50:120] = [255, 0, 0, 255]
    seen = []

    def on_step(ev):  # after the window's own slot: the preview layer shows this x̂₀
        item = win.canvas.preview
        seen.append((ev.i, ev.n, item.qimage is not None and item.array.shape == ev.preview.shape))

    win.bridge.step.connect(on_step)
    ev = run_and_wait(qtbot, win, steps=4)
    assert seen and all(shown for _, _, shown in seen)
    assert seen[-1][1] == len(seen)
    assert len(win.doc.history) == 1
    entry = win.doc.history[0]
    assert entry.image.shape == win.doc.image.shape
    assert entry.parameters["method"] == "sdedit" and entry.parameters["prompt"] == "a red house"
    assert np.array_equal(entry.image, ev.image)
    assert win.history_panel.list.count() == 1
    assert win.history_panel.current() is entry
    # the selected result is shown over the image; Compare hides it
    assert win.canvas.preview.isVisible() and win.canvas.preview.array is entry.image
    win.history_panel.compare.setChecked(True)
    assert not win.canvas.preview.isVisible()
    win.history_panel.compare.setChecked(False)
    assert win.prompt_panel.run.isEnabled() and not win.prompt_panel.cancel.isEnabled()


def test_apply_result_is_undoable(window, qtbot):
    win = window
    original = win.doc.image.copy()
    run_and_wait(qtbot, win)
    entry = win.doc.history[-1]
    qtbot.mouseClick(win.history_panel.apply, Qt.MouseButton.LeftButton)
    assert np.array_equal(win.doc.image, entry.image)
    qtbot.keyClick(win.canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert np.array_equal(win.doc.image, original)
    win.doc.undo_stack.redo()
    assert np.array_equal(win.doc.image, entry.image)


def test_escape_cancels_within_one_step_and_ui_stays_usable(window, qtbot):
    win = window
    win.doc.update_settings(method="sdedit", steps=300, strength=1.0, prompt="x")
    steps = []
    win.bridge.step.connect(lambda ev: steps.append(ev.i))
    with qtbot.waitSignal(win.bridge.step, timeout=60_000):
        qtbot.mouseClick(win.prompt_panel.run, Qt.MouseButton.LeftButton)
    assert win.prompt_panel.cancel.isEnabled() and not win.prompt_panel.run.isEnabled()
    # count the steps the engine emits after the cancel request, including queued ones
    raw = []
    win.engine.add_listener(lambda ev: raw.append(ev))
    with qtbot.waitSignal(win.bridge.cancelled, timeout=30_000):
        qtbot.keyClick(win.canvas, Qt.Key.Key_Escape)
    win.engine.remove_listener(raw.append)
    late_steps = [e for e in raw if type(e).__name__ == "Step" and e.label != "interrupted"]
    assert len(late_steps) <= 1
    # nothing applied; the last prediction is kept as a result marked interrupted
    assert max(steps) < 300 and [e.parameters["interrupted"] for e in win.doc.history] == [
        f"step {max(steps)}/300"
    ]
    assert win.canvas.preview.array is win.doc.history[0].image  # shown, selected
    qtbot.mouseClick(win.history_panel.discard, Qt.MouseButton.LeftButton)
    assert not win.doc.history
    assert win.prompt_panel.run.isEnabled() and not win.prompt_panel.cancel.isEnabled()
    assert win.canvas.preview.qimage is None
    # still usable: another job runs to the end
    run_and_wait(qtbot, win, steps=2)
    assert len(win.doc.history) == 1


def test_rerun_uses_the_entry_settings(window, qtbot):
    win = window
    run_and_wait(qtbot, win, steps=2)
    first = win.doc.history[0]
    win.doc.update_settings(prompt="something else", steps=3)
    with qtbot.waitSignal(win.bridge.finished, timeout=60_000):
        qtbot.mouseClick(win.history_panel.rerun, Qt.MouseButton.LeftButton)
    second = win.doc.history[1]
    assert second.parameters["seed"] == first.parameters["seed"]
    assert second.parameters["prompt"] == "a red house"
    assert np.array_equal(second.image, first.image)  # same seed, same device: same image
    qtbot.mouseClick(win.history_panel.discard, Qt.MouseButton.LeftButton)
    assert len(win.doc.history) == 1


def test_generate_makes_an_image_at_canvas_size(window, qtbot):
    from helpers import sent_requests

    sent = sent_requests(window)
    ev = run_and_wait(qtbot, window, method="generate", steps=2)
    h, w = window.doc.image.shape[:2]
    assert (sent[-1].method, sent[-1].width, sent[-1].height) == ("generate", w, h)
    entry = window.doc.history[-1]
    assert entry.image.shape == window.doc.image.shape and np.array_equal(entry.image, ev.image)
    assert not np.array_equal(entry.image, window.doc.image)  # a new picture, not the canvas


def test_engine_failure_is_a_readable_message_and_work_survives(window, qtbot):
    win = window
    win.doc.strokes[10:20, 10:20] = 255
    before = win.doc.strokes.copy()
    win.jobs.current = RunningJob("sdedit", "sdedit")
    with qtbot.waitSignal(win.bridge.failed, timeout=30_000):
        win.bridge.submit(EditRequest("sdedit", image=win.doc.image, steps=2, strength=3.0))
    assert win.banner_host.isVisible()
    assert "Strength must be between 0 and 1" in win.banner.text()
    assert np.array_equal(win.doc.strokes, before)
    assert win.prompt_panel.run.isEnabled()


def test_method_needing_a_mask_says_so(window, qtbot):
    win = window
    win.doc.update_settings(method="diffedit")
    win.prompt_panel.set_available(["generate", "sdedit", "diffedit_mask", "diffedit"])
    win.run_method("diffedit")
    assert "mask" in win.banner.text().lower()
    assert not win.bridge.busy


def test_unavailable_methods_are_disabled_with_a_tooltip(window):
    panel = window.prompt_panel
    panel.set_available(["generate", "sdedit"])
    combo = panel.method
    idx = combo.findData("repaint")
    assert not combo.model().item(idx).isEnabled()
    assert "not available" in combo.itemData(idx, Qt.ItemDataRole.ToolTipRole).lower()
    assert combo.model().item(combo.findData("sdedit")).isEnabled()


def test_diffedit_mask_lands_in_the_mask_layer_undoably(window, qtbot):
    """The mask from a finished diffedit_mask job becomes the editable mask layer."""
    win = window
    h, w = win.doc.size
    mask = np.zeros((h, w), np.uint8)
    mask[30:90, 40:150] = 255
    win.jobs.current = RunningJob("diffedit", "diffedit_mask")
    win.bridge.job_id = 10_000  # as if submitted; deliver its Finished through the bridge
    win.bridge._dispatch(Finished(10_000, None, {"method": "diffedit_mask"}, {"mask": mask}))
    assert np.array_equal(win.doc.mask, mask)
    assert not win.doc.history
    win.doc.undo_stack.undo()
    assert not win.doc.mask.any()


def test_stale_events_are_dropped(window, qtbot):
    win = window
    win.bridge.job_id = 5
    got = []
    win.bridge.finished.connect(got.append)
    img = np.zeros((*win.doc.size, 3), np.uint8)
    win.bridge._dispatch(Finished(4, img, {}, {}))  # an old job
    assert not got and not win.doc.history


def test_model_load_error_is_shown_and_model_kept(window, qtbot, tmp_path):
    win = window
    with qtbot.waitSignal(win.bridge.load_failed, timeout=60_000):
        win.load_model(str(tmp_path / "no-such-model"))
    assert win.banner_host.isVisible() and win.banner.text()
    assert win.bridge.model_info.name == "builtin:tiny"
    assert "builtin:tiny" in win.model_label.text() and "cpu" in win.model_label.text()


@pytest.mark.slow
def test_demo_model_fallback_note(make_window, qtbot, engine, monkeypatch, tmp_path):
    """builtin:demo missing (as in a checkout without its weights) → the window loads
    builtin:tiny and says so."""
    from engine import models

    monkeypatch.setattr(models, "DEMO_MODEL_DIR", tmp_path / "no-demo")
    from editor.app import MainWindow

    win = MainWindow(engine, model="builtin:demo", autosave_ms=10**9)
    qtbot.addWidget(win)
    qtbot.waitUntil(lambda: "builtin:tiny" in win.model_label.text(), timeout=120_000)
    assert "demo model not found" in win.model_label.text()
    win.doc.mark_saved()
    win.shutdown()


def test_the_job_controller_owns_the_running_job(window, qtbot):
    """One object knows the running job: its id, methods, mask and state, from the click on
    Run to its final event; the window keeps no job state of its own."""
    win = window
    win.doc.mask[20:60, 30:90] = 255
    states = []
    win.bridge.step.connect(lambda ev: states.append(win.jobs.current.state))
    win.doc.update_settings(method="sdedit", steps=3, strength=0.8, prompt="a red house")
    with qtbot.waitSignal(win.bridge.finished, timeout=60_000):
        qtbot.mouseClick(win.prompt_panel.run, Qt.MouseButton.LeftButton)
        job = win.jobs.current
        assert job is not None and job.job_id == win.bridge.job_id
        assert (job.ui_method, job.method) == ("sdedit", "sdedit")
        assert job.mask is not None and job.mask[30, 40] == 255 and job.mask[5, 5] == 0
    assert states and set(states) == {"running"}
    assert win.jobs.current is None and not win.jobs.busy
    assert not hasattr(win, "job") and not hasattr(win, "_job_mask")


def test_the_bridge_knows_the_model_from_its_loaded_event(window, qtbot):
    """A load the window did not ask for (another caller of the shared engine) still updates
    what the GUI shows; the GUI reads the bridge's copy, not the engine's state."""
    win = window
    win.bridge.model_info = None  # as if nothing were known yet
    load_id = win.engine.load_model("builtin:tiny")
    qtbot.waitUntil(lambda: win.bridge.model_info is not None, timeout=60_000)
    assert win.bridge.model_info.name == "builtin:tiny" and win.bridge.load_id != load_id
