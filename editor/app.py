"""The main window: canvas, docks, menus and shortcuts, models, shutdown.

The running job and results are ``jobs.JobController``'s (the window owns one and forwards
its actions), files are ``fileops.FileActions``' (a mixin), so each part reads in one sitting.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QSize, Qt, QTimer
from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import (
    QDockWidget,
    QFrame,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from engine import DEFAULT_MODEL, Engine

from . import project, tools
from .bridge import EngineBridge
from .canvas import Canvas
from .document import Document
from .fileops import FileActions
from .jobs import JobController
from .live import LiveController, LivePanel
from .loras import LoraMenu, use_inpainting_default, use_model_defaults
from .panels.history import HistoryPanel
from .panels.new_document import NewDocumentDialog
from .panels.prompt import PromptPanel
from .panels.tools_panel import ToolsPanel

FALLBACK_MODEL = "builtin:tiny"


class FormScroll(QScrollArea):
    """A dock's scrolling form. Its scroll bar always shows: one that came and went with
    the form's height changed the dock's width, the canvas resized, the form re-flowed and
    the bar went again, a layout loop that starved the event loop."""

    def sizeHint(self) -> QSize:
        w = self.widget()
        hint = w.sizeHint() if w is not None else QSize(300, 400)
        bar = self.verticalScrollBar().sizeHint().width()
        return QSize(hint.width() + bar + 2 * self.frameWidth(), hint.height())

    def minimumSizeHint(self) -> QSize:
        w = self.widget()
        hint = w.minimumSizeHint() if w is not None else QSize(200, 100)
        bar = self.verticalScrollBar().sizeHint().width()
        return QSize(hint.width() + bar + 2 * self.frameWidth(), 100)


class MainWindow(FileActions, QMainWindow):
    def __init__(
        self,
        engine: Engine | None = None,
        model: str | None = DEFAULT_MODEL,
        autosave_ms: int = 60_000,
    ):
        super().__init__()
        self.setWindowTitle("Diffusion Editor")
        self.setAcceptDrops(True)
        self.resize(1400, 900)
        self.doc = Document(parent=self)
        self.owns_engine = engine is None
        self.engine = engine or Engine()
        self.bridge = EngineBridge(self.engine, self)
        self.model_spec = model
        self._closed = False
        self.model_note = ""
        self._inpainting_model = False  # the loaded model is one (use_inpainting_default)

        self.canvas = Canvas(self.doc)
        self.banner = QLabel()
        self.banner.setWordWrap(True)
        self.banner.setStyleSheet("background:#7a1f1f;color:white;padding:6px;")
        self.banner_close = QPushButton("✕")
        self.banner_close.setFixedWidth(28)
        banner_row = QHBoxLayout()
        banner_row.addWidget(self.banner, 1)
        banner_row.addWidget(self.banner_close)
        self.banner_host = QWidget()
        self.banner_host.setLayout(banner_row)
        self.banner_host.hide()
        self.banner_close.clicked.connect(self.banner_host.hide)
        central = QWidget()
        v = QVBoxLayout(central)
        v.setContentsMargins(0, 0, 0, 0)
        v.addWidget(self.banner_host)
        v.addWidget(self.canvas, 1)
        self.setCentralWidget(central)

        self.prompt_panel = PromptPanel(self.doc, self.engine.methods())
        self.history_panel = HistoryPanel(self.doc)
        self.tools_panel = ToolsPanel(self.doc, self.canvas)
        # the form scrolls when the window is short, instead of forcing the window taller
        prompt_scroll = FormScroll()
        prompt_scroll.setWidgetResizable(True)
        prompt_scroll.setFrameShape(QFrame.Shape.NoFrame)
        prompt_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        prompt_scroll.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOn)
        prompt_scroll.setWidget(self.prompt_panel)
        self._dock("Prompt && method", prompt_scroll, Qt.DockWidgetArea.RightDockWidgetArea)
        self._dock("Tools && layers", self.tools_panel, Qt.DockWidgetArea.LeftDockWidgetArea)
        self._dock("Results", self.history_panel, Qt.DockWidgetArea.BottomDockWidgetArea)
        self.live_panel = LivePanel()
        self.live_dock = self._dock("Live", self.live_panel, Qt.DockWidgetArea.RightDockWidgetArea)
        self.live_dock.hide()

        self.model_label = QLabel("no model")
        self.loading_bar = QProgressBar()  # while a model loads
        self.loading_bar.setRange(0, 0)
        self.loading_bar.setFixedWidth(90)
        self.loading_bar.hide()
        self.pos_label = QLabel("")
        self.zoom_label = QLabel("")
        for w in (self.pos_label, self.zoom_label, self.loading_bar, self.model_label):
            self.statusBar().addPermanentWidget(w)
        self._build_actions()
        self._wire()
        self.autosaver = project.Autosaver(
            self.doc, autosave_ms, self, export_inversion=self.bridge.export_inversion
        )
        self.autosaver.error.connect(lambda m: self.show_error(f"Autosave failed: {m}"))
        if self.autosaver.problem:
            self.show_error(self.autosaver.problem)
        self.select_tool(tools.COLOUR)
        info = self.bridge.model_info
        if info is not None:
            self._on_model_loaded(None)
        if model and (info is None or info.name != model):
            self.load_model(model)

    def _dock(self, title, widget, area) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(title)
        dock.setWidget(widget)
        dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable)
        self.addDockWidget(area, dock)
        return dock

    # ---- actions & shortcuts --------------------------------------------------------------

    def _action(self, menu, text, slot, shortcut=None, tip="") -> QAction:
        a = QAction(text, self)
        if shortcut:
            keys = shortcut if isinstance(shortcut, list) else [shortcut]
            a.setShortcuts([QKeySequence(k) for k in keys])
        a.setToolTip(tip or text)
        a.triggered.connect(lambda *_: slot())
        if menu is not None:
            menu.addAction(a)
        self.addAction(a)
        return a

    def _build_actions(self) -> None:
        mb = self.menuBar()
        f = mb.addMenu("&File")
        self._action(f, "&New…", self.new_dialog, "Ctrl+N", "A blank canvas of a chosen size")
        self._action(f, "&Open…", self.open_dialog, "Ctrl+O")
        self.recent_menu = f.addMenu("Open &recent")
        self.refresh_recent()
        self._action(f, "&Paste image", self.paste, "Ctrl+V")
        self._action(f, "&Save project", self.save_project, "Ctrl+S")
        self._action(f, "Save project &as…", self.save_project_as, "Ctrl+Shift+S")
        self._action(f, "&Export PNG…", self.export_png, "Ctrl+E")
        f.addSeparator()
        self._action(f, "&Quit", self.close, "Ctrl+Q")
        e = mb.addMenu("&Edit")
        self.undo_action = self._action(e, "&Undo", self.doc.undo_stack.undo, "Ctrl+Z")
        self.redo_action = self._action(
            e, "&Redo", self.doc.undo_stack.redo, ["Ctrl+Shift+Z", "Ctrl+Y"]
        )
        e.addSeparator()
        self._action(e, "Clear &mask", lambda: self.doc.clear_layer("mask"))
        self._action(e, "Clear &strokes", lambda: self.doc.clear_layer("strokes"))
        self._action(e, "&Invert mask", self.doc.invert_mask, "Ctrl+I")
        vm = mb.addMenu("&View")
        self._action(vm, "&Fit", self.canvas.fit, "Ctrl+0")
        self._action(vm, "&Actual size (100%)", self.canvas.actual_size, "Ctrl+1")
        self._action(
            vm, "Zoom &in", lambda: self.canvas.set_zoom(self.canvas.zoom * 1.25), "Ctrl+="
        )
        self._action(
            vm, "Zoom &out", lambda: self.canvas.set_zoom(self.canvas.zoom * 0.8), "Ctrl+-"
        )
        vm.addSeparator()
        self.live_action = self._action(
            vm,
            "&Live mode",
            lambda: self.set_live(self.live_action.isChecked()),
            "Ctrl+L",
            "Turn strokes into a picture while you paint: every change re-runs SDEdit at "
            "few steps, shown in the Live panel (fastest with a few-step model or LoRA)",
        )
        self.live_action.setCheckable(True)
        mm = mb.addMenu("&Model")
        self._action(mm, "&Demo model (built in)", lambda: self.load_model(DEFAULT_MODEL))
        self._action(
            mm,
            "&Few-step demo model (live painting)",
            lambda: self.load_model("builtin:demo-lcm"),
            tip="The demo model distilled to run in 4 steps: for Live mode",
        )
        self._action(
            mm,
            "Demo &inpainting model",
            lambda: self.load_model("builtin:demo-inpaint"),
            tip="The demo model fine-tuned to inpaint: Inpaint hands it the mask itself",
        )
        self._action(mm, "&Tiny test model", lambda: self.load_model(FALLBACK_MODEL))
        self._action(mm, "Tiny SD&XL test model", lambda: self.load_model("builtin:tiny-xl"))
        self._action(mm, "Open diffusers &folder…", self.open_model_folder)
        self._action(mm, "Open &checkpoint file…", self.open_model_file)
        self.lora_menu = LoraMenu(self, mm)
        jm = mb.addMenu("&Job")
        self._action(
            jm,
            "&Run",
            lambda: self.run_method(self.prompt_panel.current_method()),
            ["Ctrl+Return", "Ctrl+Enter"],
        )
        self._action(jm, "&Cancel", self.cancel_job, "Esc")

        tb = self.addToolBar("Tools")
        tb.setObjectName("tools")
        group = QActionGroup(self)
        self.tool_actions = {}
        for tool, text, key in (
            (tools.COLOUR, "Colour brush", "B"),
            (tools.MASK, "Mask brush", "M"),
            (tools.ERASER, "Eraser", "E"),
            (tools.EYEDROPPER, "Eyedropper", "I"),
        ):
            a = self._action(None, text, lambda t=tool: self.select_tool(t), key, f"{text} ({key})")
            a.setCheckable(True)
            group.addAction(a)
            tb.addAction(a)
            self.tool_actions[tool] = a
        tb.addSeparator()
        self._action(None, "Swap paint/erase", self.swap_erase, "X")
        self._action(None, "Smaller brush", lambda: self.tools_panel.step_size(-1), "[")
        self._action(None, "Bigger brush", lambda: self.tools_panel.step_size(1), "]")
        tb.addAction(self.undo_action)
        tb.addAction(self.redo_action)

    def _wire(self) -> None:
        b = self.bridge
        self.jobs = JobController(self)
        self.live = LiveController(self, self.live_panel)
        b.load_failed.connect(self._on_load_failed)
        b.model_loaded.connect(self._on_model_loaded)
        b.loras_changed.connect(self._on_model_loaded)
        b.lora_failed.connect(lambda ev: self.show_error(ev.message))
        p = self.prompt_panel
        p.run_requested.connect(self.run_method)
        p.cancel_requested.connect(self.cancel_job)
        p.word_selected.connect(self.jobs.show_word)
        p.native_requested.connect(lambda n: n and self.new_document(n, n))
        h = self.history_panel
        h.selected.connect(lambda e: self.canvas.show_preview(None if e is None else e.image))
        h.apply_requested.connect(self.apply_result)
        h.rerun_requested.connect(self.rerun)
        h.compare_toggled.connect(lambda on: self.canvas.set_layer_visible("preview", not on))
        self.canvas.picked.connect(self.tools_panel.set_colour)
        self.canvas.cursor_moved.connect(lambda x, y: self.pos_label.setText(f"{x}, {y}"))
        self.canvas.zoom_changed.connect(lambda z: self.zoom_label.setText(f"{z * 100:.0f}%"))
        self.doc.modified_changed.connect(lambda _: self._update_title())
        self.doc.reset.connect(self._update_title)

    def _update_title(self) -> None:
        name = Path(self.doc.project_path or self.doc.path or "untitled").name
        self.setWindowTitle(f"{name}{' *' if self.doc.is_modified() else ''} — Diffusion Editor")

    def select_tool(self, tool: str) -> None:
        self.canvas.tool = tool
        if tool in (tools.COLOUR, tools.MASK):
            self.canvas.erase_target = "strokes" if tool == tools.COLOUR else "mask"
        self.tool_actions[tool].setChecked(True)
        target = f" ({self.canvas.erase_target})" if tool == tools.ERASER else ""
        self.status(f"Tool: {self.tool_actions[tool].text()}{target}", 3000)

    def swap_erase(self) -> None:
        if self.canvas.tool == tools.ERASER:
            self.select_tool(tools.MASK if self.canvas.erase_target == "mask" else tools.COLOUR)
        else:
            self.select_tool(tools.ERASER)

    def keyPressEvent(self, event) -> None:
        if event.key() == Qt.Key.Key_C and not event.isAutoRepeat():
            self.canvas.set_layer_visible("preview", False)  # hold C: compare with original
        super().keyPressEvent(event)

    def keyReleaseEvent(self, event) -> None:
        if event.key() == Qt.Key.Key_C and not event.isAutoRepeat():
            self.canvas.set_layer_visible("preview", not self.history_panel.compare.isChecked())
        super().keyReleaseEvent(event)

    def new_dialog(self) -> NewDocumentDialog:
        """File › New: asks width and height (the model's native size one click away)."""
        info = self.bridge.model_info
        dialog = NewDocumentDialog(self, self.doc.size, info.native_size if info else None)
        dialog.accepted.connect(lambda: self.new_document(*dialog.chosen()))
        dialog.finished.connect(dialog.deleteLater)
        dialog.open()
        return dialog

    # ---- jobs: the controller's ------------------------------------------------------------

    def set_live(self, on: bool) -> None:
        """Live mode on or off (View › Live mode): the Live panel shows while it is on."""
        self.live_action.setChecked(on)
        self.live_dock.setVisible(on)
        self.live.set_enabled(on)

    def run_method(self, method: str, stage: int = -1) -> int | None:
        return self.jobs.run(method, stage)

    def cancel_job(self) -> None:
        self.jobs.cancel()

    def drop_job(self) -> None:
        self.jobs.drop()

    def apply_result(self, entry) -> None:
        self.jobs.apply_result(entry)

    def rerun(self, entry) -> None:
        self.jobs.rerun(entry)

    # ---- status & errors ------------------------------------------------------------------

    def status(self, text: str, ms: int = 6000) -> None:
        self.statusBar().showMessage(text, ms)

    def show_error(self, message: str) -> None:
        self.banner.setText(message)
        self.banner_host.show()
        self.status(message, 10000)

    # ---- models ---------------------------------------------------------------------------

    def load_model(self, spec: str) -> None:
        self.model_spec = spec
        self.loading_bar.show()
        self.model_label.setText(f"loading {spec}…")
        self.bridge.load_model(spec)

    def open_model_folder(self) -> None:
        from PySide6.QtWidgets import QFileDialog

        path = QFileDialog.getExistingDirectory(self, "Open diffusers model folder")
        if path:
            self.load_model(path)

    def open_model_file(self) -> None:
        path = self.ask_open_path("Open checkpoint", "Checkpoints (*.safetensors *.ckpt)")
        if path:
            self.load_model(path)

    def _on_model_loaded(self, ev) -> None:
        self.loading_bar.hide()
        info = ev.info if ev is not None else self.bridge.model_info
        if info is None:
            self.model_label.setText("no model")
            return
        self.prompt_panel.set_native(info.native_size)
        note = self.model_note if info.name == FALLBACK_MODEL else ""
        loras = "".join(f" + {n} ×{w:g}" for n, w in info.loras)
        self.model_label.setText(f"Model: {info.name}{loras} · {info.device} · {info.dtype}{note}")
        self.model_label.setToolTip(info.family)
        self.lora_menu.refresh(info.loras)
        self.prompt_panel.set_available(self.engine.methods())
        self.prompt_panel.set_model_parts(info.parts)  # e.g. classifier guidance
        changed = use_model_defaults(self.doc, info)  # a few-step model's sampler and steps
        inpainting = "inpainting" in info.parts
        changed_too = use_inpainting_default(self.doc, inpainting, self._inpainting_model)
        self._inpainting_model = inpainting
        if changed or changed_too:
            self.prompt_panel.load_settings()
            self.status("; ".join(s for s in (changed, changed_too) if s))

    def _on_load_failed(self, ev) -> None:
        self.loading_bar.hide()
        if self.model_spec == DEFAULT_MODEL:
            self.model_note = " (demo model not found)"
            self.status(f"The demo model is not available; using {FALLBACK_MODEL}. {ev.message}")
            info = self.bridge.model_info
            if info is None or info.name != FALLBACK_MODEL:
                self.load_model(FALLBACK_MODEL)
            else:
                self._on_model_loaded(None)
            return
        self._on_model_loaded(None)
        self.show_error(ev.message)

    # ---- shutdown -------------------------------------------------------------------------

    def shutdown(self, clean: bool = True) -> None:
        if self._closed:
            return
        self._closed = True
        self.autosaver.stop(clean=clean)
        self.bridge.cancel()
        self.bridge.detach()
        if self.owns_engine:
            self.engine.shutdown(timeout=5)


def install_error_banner(win: MainWindow) -> Callable:
    """Route every exception that escapes a slot or event handler (Qt hands those to
    ``sys.excepthook``) to the window's error banner, the traceback to stderr, so that no
    failure is silent. Returns the previous hook."""
    previous = sys.excepthook

    def hook(etype, value, tb):
        traceback.print_exception(etype, value, tb, file=sys.stderr)
        if issubclass(etype, KeyboardInterrupt):
            previous(etype, value, tb)
            return
        text = str(value).strip().splitlines()[0] if str(value).strip() else ""
        message = f"That action failed: {etype.__name__}{': ' + text if text else ''}."
        try:
            win.show_error(f"{message} The details are in the terminal output.")
        except RuntimeError:  # the window is already gone
            pass

    sys.excepthook = hook
    return previous


def start_recovery_check(win: MainWindow) -> None:
    QTimer.singleShot(0, win.offer_recovery)
