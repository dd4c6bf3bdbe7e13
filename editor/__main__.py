"""``python -m editor [--model SPEC] [image]`` — start the Diffusion Editor."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m editor", description=__doc__)
    parser.add_argument("image", nargs="?", help="an image or .deproj project to open")
    parser.add_argument(
        "--model",
        default=None,
        help="builtin:demo (default), builtin:tiny, a diffusers folder or a .safetensors file",
    )
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: best)")
    parser.add_argument("--autosave", type=int, default=60, help="autosave interval, seconds")
    args = parser.parse_args(argv)

    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("Diffusion Editor")
    app.setOrganizationName("diffusion-editor")

    from engine import DEFAULT_MODEL, Engine

    from .app import MainWindow, start_recovery_check

    engine = Engine(device=args.device)
    win = MainWindow(engine, model=args.model or DEFAULT_MODEL, autosave_ms=args.autosave * 1000)
    win.owns_engine = True
    win.show()
    if args.image:
        win.open_path(args.image)
    else:
        start_recovery_check(win)
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
