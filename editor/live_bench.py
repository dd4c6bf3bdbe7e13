"""Live-mode latency: stroke release → updated live image on screen, through the real window.

``python -m editor.live_bench [--model builtin:demo] [--strokes 50] [--gap-ms 700]`` paints
a scripted session (offscreen Qt is fine): each stroke is a press, a few moves and a release
with real mouse events, then a pause of ``--gap-ms``. A stroke's latency is the time from
its release to the first live result whose update was submitted after that release. A 1 ms
timer records the longest GUI-thread stall over the whole session. Prints p50 / p95 latency,
how many strokes were overtaken by the next one before their update showed, the stall, and
the idle machine's own longest gap measured just before (``editor.bench.machine_floor``),
and, with the fast path on, how many calls ran compiled (``--compiled-first``: paint only
after its graphs are ready, the steady state; without it the compile may run mid-session).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from PySide6.QtCore import QEvent, QEventLoop, QPointF, Qt, QTimer

from .bench import StallProbe, machine_floor, open_window, send_mouse

MOVES = 6  # mouse moves per stroke, one per timer tick


def stroke_points(k: int, w: int, h: int) -> list[QPointF]:
    """Stroke ``k`` of the session: a short diagonal dash, walking over the canvas."""
    rng = np.random.default_rng(k)
    x, y = rng.uniform(0.2, 0.7) * w, rng.uniform(0.2, 0.7) * h
    return [QPointF(x + 0.04 * w * i, y + 0.02 * h * i) for i in range(MOVES)]


def paint_session(win, strokes: int, gap_ms: int, every_ms: int = 8) -> dict:
    vp = win.canvas.viewport()
    w, h = vp.width(), vp.height()
    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
    releases: list[float] = []
    shown: list[tuple[float, float]] = []  # (submitted at, on screen at)
    win.live.updated.connect(lambda submitted: shown.append((submitted, time.monotonic())))
    plan = []  # (delay before this event in ms, action)
    for k in range(strokes):
        pts = stroke_points(k, w, h)
        plan.append(
            (gap_ms, lambda p=pts[0]: send_mouse(vp, QEvent.Type.MouseButtonPress, p, left))
        )
        for p in pts[1:]:
            plan.append((every_ms, lambda p=p: send_mouse(vp, QEvent.Type.MouseMove, p, left)))

        def release(p=pts[-1]):
            releases.append(time.monotonic())  # before: the release may submit an update
            send_mouse(vp, QEvent.Type.MouseButtonRelease, p, none)

        plan.append((every_ms, release))
    loop = QEventLoop()
    state = {"i": 0}

    def next_event():
        if state["i"] == len(plan):
            QTimer.singleShot(max(gap_ms, 3000), loop.quit)  # the last update
            return
        delay, action = plan[state["i"]]
        state["i"] += 1
        action()
        QTimer.singleShot(plan[state["i"]][0] if state["i"] < len(plan) else 0, next_event)

    probe = StallProbe()
    probe.start()
    QTimer.singleShot(plan[0][0], next_event)
    loop.exec()
    stall = probe.stop()
    latencies, overtaken = [], 0
    for i, t in enumerate(releases):
        nxt = releases[i + 1] if i + 1 < len(releases) else float("inf")
        after = [on for sub, on in shown if sub >= t]
        if after and after[0] < nxt:
            latencies.append(after[0] - t)
        else:
            overtaken += 1
    lat = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {
        "strokes": strokes,
        "measured": len(latencies),
        "overtaken": overtaken,
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "max_stall_ms": stall["max_ms"],
        "p99_stall_ms": stall["p99_ms"],
        "updates": len(shown),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m editor.live_bench", description=__doc__)
    parser.add_argument("--model", default="builtin:demo")
    parser.add_argument("--strokes", type=int, default=50)
    parser.add_argument("--gap-ms", type=int, default=700, help="pause after each stroke")
    parser.add_argument("--size", type=int, default=0, help="canvas side (0: native size)")
    parser.add_argument("--prompt", default="a red house with a black roof on grass, day")
    parser.add_argument(
        "--steps", type=int, default=0, help="steps on an ordinary model (default: live's)"
    )
    parser.add_argument(
        "--floor-seconds", type=float, default=30, help="idle-machine stall probe first (0: skip)"
    )
    parser.add_argument(
        "--compiled-first",
        action="store_true",
        help="with the fast path on: wait for its graphs before painting (the steady state)",
    )
    args = parser.parse_args(argv)
    floor = machine_floor(args.floor_seconds) if args.floor_seconds else None
    if args.steps:
        from . import live

        live.LIVE_STEPS = args.steps
    from .screenshots import photo

    app, engine, win = open_window(args.model)
    info = win.bridge.model_info
    side = args.size or info.native_size
    win.doc.set_image(photo(side))
    win.doc.update_settings(prompt=args.prompt, seed=7, steps=max(25, args.steps))
    win.canvas.fit()
    win.canvas.brush.size = max(4, side // 16)
    win.set_live(True)
    end = time.monotonic() + 120
    while win.live.result is None and time.monotonic() < end:  # the first update: warm-up
        app.processEvents()
        time.sleep(0.01)
    if args.compiled_first and engine.fast is not None:
        wait_for_graphs(app, engine.fast)
    r = paint_session(win, args.strokes, args.gap_ms)
    how = win.live_panel.note.text().split("(", 1)[-1].rstrip(")")
    print(
        f"live mode ({info.name}, {side}² canvas, {how}; {engine_threads()} CPU threads): "
        f"stroke release → live image p50 {r['p50_ms']:.0f} ms, p95 {r['p95_ms']:.0f} ms over "
        f"{r['measured']} of {r['strokes']} strokes ({r['overtaken']} overtaken by the next "
        f"stroke); {r['updates']} updates; GUI stalls: longest {r['max_stall_ms']:.1f} ms, "
        f"p99 {r['p99_stall_ms']:.1f} ms"
    )
    if engine.fast is not None:
        print(f"fast path: {fast_summary(engine.fast)}")
    if floor:
        print(
            f"the idle machine before it: a bare 1 ms sleep loop's longest gap "
            f"{floor['max_ms']:.1f} ms, p99 {floor['p99_ms']:.1f} ms "
            f"over {args.floor_seconds:.0f} s"
        )
    win.doc.mark_saved()
    win.shutdown()
    engine.shutdown()
    return 0


def wait_for_graphs(app, fast, timeout: float = 300) -> None:
    """Let the fast path compile what the warm-up update queued (it starts once the engine
    is idle) while the GUI keeps running."""
    end = time.monotonic() + timeout
    while not fast.wait(0.05) and time.monotonic() < end:
        app.processEvents()


def fast_summary(fast) -> str:
    """Graphs ready, and compiled / eager calls per module, over the whole run."""
    return "; ".join(
        f"{name} {s.ready} ready, {s.compiled_calls} compiled / {s.eager_calls} eager calls"
        for name, s in fast.status().items()
    )


def engine_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    raise SystemExit(main())
