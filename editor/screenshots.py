"""``python -m editor.screenshots OUTDIR [--model SPEC]`` — screenshots of the real window.

Opens the main window on a demo-world render (upscaled to 512 px), paints colour strokes
and masks with real mouse events, and grabs the window (``QScreen.grabWindow`` on a real
screen, ``QWidget.grab`` under ``QT_QPA_PLATFORM=offscreen``):

- ``new-document.png``: File › New with a size typed in, its note on the working size;
- ``generate-batch.png``: a new canvas at the model's native size, a batch of four;
- ``edit-prompt.png``: a generated picture re-run with one word of its prompt changed;
- ``sdedit-live-preview.png``: mid-SDEdit, with that step's x̂₀ on the canvas;
- ``interrupted.png``: SDEdit cancelled part-way, its last prediction kept as a result;
- ``inpaint-only-masked.png``: a small area inpainted on a crop (Only masked);
- ``diffedit-mask.png``: after DiffEdit's "Make mask", the mask tinted in the mask layer;
- ``invert-reedit.png``: the photo inverted under its caption, re-edited to night;
- ``classifier-guidance.png``: a batch steered by the classifier towards "night, snow ground";
- ``live-mode.png``: strokes on the photo and, in the Live panel, the picture they make.

Without a display it renders offscreen when ``QT_QPA_PLATFORM=offscreen`` is set, else it
re-runs itself under ``xvfb-run`` (Debian: ``apt-get install xvfb libxcb-cursor0
libxcb-icccm4 libxcb-keysyms1``; ``QT_DEBUG_PLUGINS=1`` names any other missing library).
Uses ``builtin:demo`` when it is installed, else
``builtin:tiny`` (random weights: the previews are then noise-like, the UI is real).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SIZE = (1500, 950)
PROMPT = "the sun, a red house with a black roof on sand dunes, dusk"
REFERENCE = "the sun, a leafy tree on sand dunes, dusk"
PHOTO_CAPTION = REFERENCE  # the caption of ``photo()``'s scene (seed 3)


def _default_model() -> str:
    from engine.models import demo_model_available

    return "builtin:demo" if demo_model_available() else "builtin:tiny"


def photo(side: int = 512) -> np.ndarray:
    """A demo-world landscape, upscaled to ``side`` pixels."""
    from PIL import Image

    from engine.world.scene import render_seed

    small = render_seed(3).image
    return np.asarray(Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC))


class Shooter:
    def __init__(self, app, out: Path, model: str, engine=None):
        from engine import Engine

        from .app import MainWindow

        self.app, self.out = app, out
        self.steps = 30  # SDEdit steps (tests use fewer)
        self.owns_engine = engine is None
        self.engine = engine or Engine(model)
        self.win = MainWindow(self.engine, model=None, autosave_ms=10**9)
        self.win.resize(*SIZE)
        self.win.show()
        self.wait(lambda: self.win.bridge.model_info is not None, 300)
        self.win._on_model_loaded(None)
        self.win.doc.set_image(photo())
        self.settle()

    def close(self) -> None:
        self.win.doc.mark_saved()
        self.win.shutdown()
        if self.owns_engine:
            self.engine.shutdown()

    # ---- event-loop helpers ---------------------------------------------------------------

    def settle(self, seconds: float = 0.3) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.app.processEvents()
            time.sleep(0.01)

    def wait(self, done, timeout: float) -> None:
        end = time.monotonic() + timeout
        while not done():
            if time.monotonic() > end:
                raise TimeoutError("the editor did not get there in time")
            self.app.processEvents()
            time.sleep(0.01)

    def grab(self, name: str, dialog=None) -> Path:
        """The window into ``OUT/name``; a ``dialog`` open over it is drawn where it
        stands (a dialog is a window of its own, which a grab of the main one leaves out)."""
        from PySide6.QtGui import QPainter

        self.settle(0.2)
        w = self.win
        pix = self._grab_window(w)
        if dialog is not None:
            painter = QPainter(pix)
            painter.drawPixmap(w.mapFromGlobal(dialog.pos()), self._grab_window(dialog))
            painter.end()
        path = self.out / name
        pix.save(str(path), "PNG")
        print(f"{path}: {pix.width()}x{pix.height()}, {path.stat().st_size // 1024} KB")
        return path

    @staticmethod
    def _grab_window(widget):
        pix = widget.screen().grabWindow(widget.winId())
        if pix.isNull() or pix.width() < 10:  # no real screen: render the widget instead
            pix = widget.grab()
        return pix

    def set_options(self, method: str, **values) -> None:
        """Set fields of ``method``'s form in the document (as its widgets would)."""
        from .methods import METHODS, set_value

        params = {p.key: p for p in METHODS[method].params}
        for key, v in values.items():
            set_value(self.win.doc, method, params[key], v)

    def drag(self, points, tool: str) -> None:
        from PySide6.QtCore import QEvent, QPoint, Qt
        from PySide6.QtTest import QTest
        from PySide6.QtWidgets import QApplication

        self.win.select_tool(tool)
        c = self.win.canvas
        vp, left = c.viewport(), Qt.MouseButton.LeftButton
        pts = [c.mapFromScene(float(x), float(y)) for x, y in points]
        QTest.mousePress(vp, left, Qt.KeyboardModifier.NoModifier, QPoint(pts[0]))
        for p in pts[1:]:
            QTest.mouseMove(vp, QPoint(p))
        QTest.mouseRelease(vp, left, Qt.KeyboardModifier.NoModifier, QPoint(pts[-1]))
        QApplication.sendEvent(c, QEvent(QEvent.Type.Leave))  # the pointer leaves the canvas

    # ---- the shots --------------------------------------------------------------------------

    def sdedit_live(self) -> None:
        from . import tools

        w, doc = self.win, self.win.doc
        doc.update_settings(prompt=PROMPT, negative_prompt="blurry", method="sdedit")
        doc.update_settings(steps=self.steps, strength=0.75, seed=7, seed_locked=True)
        w.canvas.brush.hardness = 0.9
        w.tools_panel.set_colour((200, 40, 35))  # a red house: walls, then a dark roof
        w.tools_panel.set_size(26)
        self.drag(
            [(190 + 12 * i, y) for y in (300, 325, 350, 375) for i in range(11)], tools.COLOUR
        )
        w.tools_panel.set_colour((60, 40, 40))
        w.tools_panel.set_size(18)
        self.drag([(180, 290), (250, 235), (320, 290)], tools.COLOUR)
        w.tools_panel.set_size(60)  # a mask around the house: only there will it change
        self.drag([(200, 250), (300, 250), (300, 390), (200, 390), (200, 250)], tools.MASK)
        shot = {"taken": False}

        def on_step(ev):
            if not shot["taken"] and ev.i >= ev.n // 2 and ev.preview is not None:
                shot["taken"] = True
                self.grab("sdedit-live-preview.png")

        w.bridge.step.connect(on_step)
        w.run_method("sdedit")
        self.wait(lambda: not w.bridge.busy, 600)
        w.bridge.step.disconnect(on_step)
        if not shot["taken"]:
            raise RuntimeError("the job ended before its middle step was shown")

    def diffedit_mask(self) -> None:
        w, doc = self.win, self.win.doc
        w.history_panel.select(None)
        doc.update_settings(
            method="diffedit", prompt="the sun, a red house on sand dunes, dusk", steps=25
        )
        combo = w.prompt_panel.method
        combo.setCurrentIndex(combo.findData("diffedit"))
        self.set_options("diffedit", reference_prompt=REFERENCE, n_samples=4)
        doc.clear_layer("mask")
        w.prompt_panel.load_settings()
        w.run_method("diffedit", stage=0)
        self.wait(lambda: not w.bridge.busy, 600)
        if not doc.mask.any():
            raise RuntimeError("DiffEdit made an empty mask")
        self.grab("diffedit-mask.png")

    # ---- the flows of the README's guide -----------------------------------------------------

    def native_canvas(self) -> None:
        """File › New at the model's native size (this script's documents are not kept:
        no "discard changes?" question)."""
        native = self.win.bridge.model_info.native_size
        self.win.doc.mark_saved()
        self.win.new_document(native, native)

    def start_over(self, image=None) -> None:
        """A fresh document (no results, no mask), the photo unless ``image`` is given."""
        doc = self.win.doc
        self.win.history_panel.select(None)
        doc.set_image(photo() if image is None else image)
        doc.history.clear()
        doc.history_changed.emit()
        self.win.canvas.fit()
        self.settle()

    def generate_batch(self) -> None:
        """File › New at the model's native size, then a batch of 4 (seeds 11-14)."""
        w, doc = self.win, self.win.doc
        self.native_canvas()
        combo = w.prompt_panel.method
        combo.setCurrentIndex(combo.findData("generate"))
        doc.update_settings(prompt=PROMPT, negative_prompt="blurry", steps=self.steps)
        doc.update_settings(seed=11, seed_locked=True, batch_count=4)
        w.prompt_panel.load_settings()
        w.run_method("generate")
        self.wait(lambda: len(doc.history) == 4 and not w.bridge.busy, 900)
        w.history_panel.select(doc.history[1])
        self.grab("generate-batch.png")
        doc.update_settings(batch_count=1)

    def new_document(self) -> None:
        """File › New with a size typed in: the note says what the model will work at."""
        dialog = self.win.new_dialog()
        dialog.width_box.setValue(768)
        dialog.height_box.setValue(512)
        host = self.win.geometry()
        dialog.move(host.center() - dialog.rect().center())
        self.settle()
        self.grab("new-document.png", dialog)
        dialog.reject()

    def edit_prompt(self) -> None:
        """Edit prompt: a generated picture applied, then its prompt's "red" changed to
        "blue" and Run: the same picture with the word changed, the blend mask shown."""
        w, doc = self.win, self.win.doc
        self.native_canvas()
        doc.update_settings(method="generate", prompt=PROMPT, negative_prompt="", steps=self.steps)
        doc.update_settings(seed=5, seed_locked=True)
        w.prompt_panel.load_settings()
        w.run_method("generate")
        self.wait(lambda: len(doc.history) == 1 and not w.bridge.busy, 900)
        w.apply_result(doc.history[0])
        self.settle()  # the image's parameters are read once Apply has finished
        doc.update_settings(method="edit_generated", prompt=PROMPT.replace("red", "blue"))
        w.prompt_panel.load_settings()
        if w.run_method("edit_generated") is None:
            raise RuntimeError(f"Edit prompt did not start: {w.banner.text()}")
        self.wait(lambda: len(doc.history) == 2 and not w.bridge.busy, 900)
        w.history_panel.select(doc.history[-1])
        self.grab("edit-prompt.png")

    def inpaint_only_masked(self) -> None:
        """Inpaint a small area of the 512 px photo with Only masked (a crop at full working
        size), Masked content fill."""
        from . import tools

        w, doc = self.win, self.win.doc
        self.start_over()
        doc.update_settings(
            method="repaint", prompt="a boulder on sand dunes, dusk", steps=self.steps, seed=3
        )
        self.set_options("repaint", only_masked=True, padding=48)
        w.prompt_panel.load_settings()
        w.tools_panel.set_size(50)
        self.drag([(330, 400), (380, 400), (380, 430), (330, 430)], tools.MASK)
        w.run_method("repaint")
        self.wait(lambda: not w.bridge.busy, 900)
        if not doc.history:
            raise RuntimeError(f"inpainting made no result: {w.banner.text()}")
        self.grab("inpaint-only-masked.png")

    def interrupted(self) -> None:
        """SDEdit cancelled part-way: the last prediction kept as a marked result."""
        w, doc = self.win, self.win.doc
        self.start_over()
        doc.update_settings(
            method="sdedit", prompt="the moon, a red house on sand dunes, night", steps=100
        )
        self.set_options("sdedit", strength=0.8)
        w.prompt_panel.load_settings()

        def on_step(ev):
            if ev.i >= 30 and ev.label != "interrupted":
                w.cancel_job()

        w.bridge.step.connect(on_step)
        w.run_method("sdedit")
        self.wait(lambda: not w.bridge.busy, 600)
        w.bridge.step.disconnect(on_step)
        if not doc.history:
            raise RuntimeError("the cancelled job left no interrupted result")
        self.grab("interrupted.png")

    def invert_reedit(self) -> None:
        """Invert & re-edit: Invert the photo under its caption, then Run with night."""
        w, doc = self.win, self.win.doc
        self.start_over()
        night = PHOTO_CAPTION.replace("the sun", "the moon").replace("dusk", "night")
        doc.update_settings(method="reedit", prompt=night)
        doc.update_settings(steps=self.steps)
        # the defaults: DiffEdit's map finds an edit of the whole picture, so no local blend
        self.set_options("reedit", source_prompt=PHOTO_CAPTION)
        w.prompt_panel.load_settings()
        w.run_method("reedit", stage=0)
        self.wait(lambda: not w.bridge.busy, 900)
        w.run_method("reedit")
        self.wait(lambda: not w.bridge.busy, 900)
        if not doc.history:
            raise RuntimeError(f"the re-edit made no result: {w.banner.text()}")
        w.history_panel.select(doc.history[-1])
        self.grab("invert-reedit.png")

    def live_mode(self) -> None:
        """Live mode: strokes painted on the photo, the Live panel showing their picture
        (on the few-step demo model when it is installed and the demo model is in use)."""
        from . import tools

        w, doc = self.win, self.win.doc
        few_step = "builtin:demo-lcm"
        switch = w.bridge.model_info.name == "builtin:demo" and _installed(few_step)
        if switch:
            w.load_model(few_step)
            self.wait(lambda: w.bridge.model_info.name == few_step and not w.bridge.load_id, 300)
        self.start_over()
        doc.update_settings(prompt=PROMPT, negative_prompt="", method="sdedit", seed=7)
        self.set_options("sdedit", strength=0.7)
        w.prompt_panel.load_settings()
        w.set_live(True)
        w.tools_panel.set_colour((200, 40, 35))
        w.tools_panel.set_size(26)
        painted = time.monotonic()  # the release may start the update before drag returns
        self.drag([(190 + 12 * i, y) for y in (300, 330, 360) for i in range(11)], tools.COLOUR)
        live = w.live
        self.wait(  # the last update is shown: none pending, none running
            lambda: (
                not live.pending
                and w.bridge.live_id is None
                and live.submitted_at > painted
                and live.result is not None
            ),
            300,
        )
        self.grab("live-mode.png")
        w.set_live(False)
        if switch:
            w.load_model("builtin:demo")
            self.wait(
                lambda: w.bridge.model_info.name == "builtin:demo" and not w.bridge.load_id, 300
            )

    def classifier_guidance(self) -> None:
        """Generate from an empty prompt, a batch of 4, steered to "night, snow ground"."""
        w, doc = self.win, self.win.doc
        if "classifier" not in w.bridge.model_info.parts:
            return  # a model without a classifier does not offer it
        self.native_canvas()
        doc.update_settings(method="generate", prompt="", negative_prompt="", steps=self.steps)
        doc.update_settings(seed=21, seed_locked=True, batch_count=4)
        self.set_options("generate", classifier_targets="night, snow ground", classifier_scale=4.0)
        w.prompt_panel.load_settings()
        w.run_method("generate")
        self.wait(lambda: len(doc.history) == 4 and not w.bridge.busy, 900)
        w.history_panel.select(doc.history[0])
        self.grab("classifier-guidance.png")
        self.set_options("generate", classifier_scale=0.0)
        doc.update_settings(batch_count=1)


def _installed(spec: str) -> bool:
    """Whether a built-in model's files are in the package (``builtin:demo-lcm``)."""
    from engine.models import ASSETS

    return (ASSETS / "models" / spec.split(":", 1)[1] / "model_index.json").exists()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m editor.screenshots", description=__doc__)
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--model", default=None, help="default: builtin:demo if installed")
    args = parser.parse_args(argv)
    if not os.environ.get("DISPLAY") and not os.environ.get("QT_QPA_PLATFORM"):
        xvfb = shutil.which("xvfb-run")
        if xvfb is None:
            sys.exit("No display and no xvfb-run: apt-get install xvfb (see --help).")
        cmd = [xvfb, "-a", "-s", f"-screen 0 {SIZE[0] + 100}x{SIZE[1] + 100}x24"]
        return subprocess.call([*cmd, sys.executable, "-m", "editor.screenshots", *argv_of(args)])
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])
    args.outdir.mkdir(parents=True, exist_ok=True)
    s = Shooter(app, args.outdir, args.model or _default_model())
    try:
        s.new_document()
        s.generate_batch()
        s.edit_prompt()
        s.start_over()
        s.sdedit_live()
        s.interrupted()
        s.inpaint_only_masked()
        s.start_over()
        s.diffedit_mask()
        s.invert_reedit()
        s.classifier_guidance()
        s.live_mode()
    finally:
        s.close()
    return 0


def argv_of(args) -> list[str]:
    return [str(args.outdir), *(["--model", args.model] if args.model else [])]


if __name__ == "__main__":
    raise SystemExit(main())
