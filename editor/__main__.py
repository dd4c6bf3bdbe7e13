"""``python -m editor [--model SPEC] [image]`` — start the Diffusion Editor."""

from __future__ import annotations

import argparse
import os
import sys

# Tests drive a real editor process (crash recovery: it is killed with SIGKILL) through a
# Python file named here, run on the GUI thread once the window shows, with ``win`` in scope.
TEST_HOOK = "DIFFUSION_EDITOR_TEST_HOOK"


def _run_test_hook(win, path: str) -> None:
    import runpy

    from PySide6.QtCore import QTimer

    QTimer.singleShot(0, lambda: runpy.run_path(path, init_globals={"win": win}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m editor", description=__doc__)
    parser.add_argument("image", nargs="?", help="an image or .deproj project to open")
    parser.add_argument(
        "--model",
        default=None,
        help="builtin:demo (default), builtin:tiny, a diffusers folder or a .safetensors file",
    )
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: best)")
    parser.add_argument("--autosave", type=float, default=60, help="autosave interval, seconds")
    args = parser.parse_args(argv)

    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("Diffusion Editor")
    app.setOrganizationName("diffusion-editor")

    from engine import DEFAULT_MODEL, Engine

    from .app import MainWindow, install_error_banner, start_recovery_check

    engine = Engine(device=args.device)
    autosave_ms = max(100, round(args.autosave * 1000))
    win = MainWindow(engine, model=args.model or DEFAULT_MODEL, autosave_ms=autosave_ms)
    win.owns_engine = True
    install_error_banner(win)
    win.show()
    if os.environ.get(TEST_HOOK):
        _run_test_hook(win, os.environ[TEST_HOOK])
    if args.image:
        win.open_path(args.image)
    else:
        start_recovery_check(win)
    code = app.exec()
    # A model load cannot be interrupted: exiting while it runs inside torch aborts the
    # process ("terminate called without an active exception"), so let it end first.
    engine.shutdown(timeout=120)
    return code


if __name__ == "__main__":
    sys.exit(main())
