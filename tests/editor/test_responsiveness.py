"""The GUI thread stays free: no model work on it while a job runs, and painting on a 4096²
image costs what the brush covers, not what the image holds.

These are checks of *what* the GUI thread does, so they hold on any machine. How long the
event loop stalls is a wall-clock figure and is measured by ``python -m editor.bench``
(target ≤ 16 ms), not asserted here.
"""

import sys

import numpy as np

from editor.bench import probe_job, probe_painting


def _torch_calls(calls: list[str]):
    """A profiler for this thread only, recording every call into torch (Python or C)."""

    def profile(frame, event, arg):
        # torch.package patches inspect.getfile for everyone: not model work
        file = frame.f_code.co_filename
        if event == "call" and "/torch/" in file and "/torch/package/" not in file:
            calls.append(frame.f_code.co_qualname)
        elif event == "c_call":
            owner = getattr(arg, "__self__", None)
            module = getattr(arg, "__module__", None) or type(owner).__module__
            if module.startswith("torch"):
                calls.append(getattr(arg, "__qualname__", repr(arg)))

    return profile


def test_the_gui_thread_does_no_model_work_while_a_job_runs(window):
    window.doc.set_image(np.random.default_rng(0).integers(0, 255, (256, 256, 3), np.uint8))
    calls: list[str] = []
    sys.setprofile(_torch_calls(calls))  # the GUI thread's calls, for the whole job
    try:
        r = probe_job(window, steps=8)
    finally:
        sys.setprofile(None)
    assert r["steps"] >= 1 and len(window.doc.history) == 1  # previews came, the job finished
    assert not calls, f"torch called on the GUI thread: {sorted(set(calls))[:10]}"


def test_painting_on_4096_touches_only_what_the_brush_covers(make_window):
    win = make_window(np.full((4096, 4096, 3), 200, np.uint8))
    win.canvas.brush.size = 64
    areas: list[int] = []
    win.doc.layer_changed.connect(lambda name, rect: areas.append(rect.width() * rect.height()))
    undo_bytes = win.doc.undo_stack.nbytes()
    probe_painting(win, moves=80)
    alpha = win.doc.strokes[..., 3]
    ys, xs = np.nonzero(alpha)
    assert len(ys) > 0 and len(areas) >= 40  # a real stroke, updated move by move
    # each move updates a rectangle around one brush segment (a move spans ~50 image pixels
    # at the fitted zoom), never the image: 1/256 of 4096² is already 4x larger than needed
    assert max(areas) <= 4096 * 4096 // 256
    # undo keeps the stroke's bounding box (before and after), not the whole layer
    box = (np.ptp(ys) + 1) * (np.ptp(xs) + 1)
    assert win.doc.undo_stack.nbytes() - undo_bytes <= 2 * box * alpha.strides[1] + 4096
