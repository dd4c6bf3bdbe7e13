"""The GUI never blocks: longest event-loop stall while a job runs and while painting 4096².

Target ≤ 16 ms. The bound asserted here is generous because CI machines are shared and
small (2 cores); the measured figures are printed and recorded (``-rP`` or junit
properties) so regressions are visible. ``python -m editor.bench`` prints the same figures.
"""

import numpy as np

from editor.bench import probe_job, probe_painting

BOUND_MS = 250


def test_no_long_stall_while_a_job_runs(window, record_property, capsys):
    window.doc.set_image(np.random.default_rng(0).integers(0, 255, (256, 256, 3), np.uint8))
    r = probe_job(window, steps=8)
    record_property("job_max_stall_ms", round(r["max_ms"], 1))
    with capsys.disabled():
        print(
            f"\n[stall] job: max {r['max_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, {r['steps']} steps"
        )
    assert r["steps"] >= 1 and len(window.doc.history) == 1
    assert r["max_ms"] < BOUND_MS


def test_no_long_stall_while_painting_4096(make_window, record_property, capsys):
    win = make_window(np.full((4096, 4096, 3), 200, np.uint8))
    win.canvas.brush.size = 64
    r = probe_painting(win, moves=80)
    record_property("paint_max_stall_ms", round(r["max_ms"], 1))
    with capsys.disabled():
        print(
            f"\n[stall] painting 4096²: max {r['max_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms; "
            f"CPU per move+repaint median {r['cpu_per_move_ms']:.1f} ms; stroke release "
            f"{r['release_ms']:.1f} ms (CPU {r['release_cpu_ms']:.1f} ms)"
        )
    record_property("paint_release_cpu_ms", round(r["release_cpu_ms"], 1))
    assert win.doc.strokes[..., 3].any()
    assert r["max_ms"] < BOUND_MS
    assert r["cpu_per_move_ms"] < 16
    assert r["release_cpu_ms"] < 100  # a fitted 4096² stroke across the image: ~16 ms here
