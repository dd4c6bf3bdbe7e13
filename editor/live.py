"""Live mode: every change of the strokes, mask, prompt or strength schedules an SDEdit at
the live settings, shown beside the canvas.

A change restarts a short debounce timer; when it fires the previous live update is
cancelled (a stale update is stopped, never queued) and one for the document as it is now is
submitted. A completed edit (a stroke released, an undo) starts an update at once when none
is running. The brush never waits: building a request copies the layers and returns, the
engine thread does the rest. An edit job (Run) has priority: live updates wait for it.

A few-step model (an LCM, turbo, or an ordinary model with an LCM LoRA: ``ModelInfo.few_step``)
runs at the sampler, steps and guidance it asks for (``ModelInfo.defaults``); another model
runs SDEdit with ``LIVE_STEPS`` DDIM steps, and the panel says so. The seed is the document's
and stays fixed, so a small stroke makes a small change.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from engine import EditRequest, ModelInfo

from .canvas import wrap
from .methods import NeedsInput, build_request

DEBOUNCE_MS = 60  # a pause this long after a change starts an update
LIVE_STEPS = 8  # an ordinary model in live mode: far fewer than a Run, rough but soon
LIVE_LAYERS = ("image", "strokes", "mask")


def live_request(doc, info: ModelInfo) -> tuple[EditRequest, str]:
    """The SDEdit request live mode runs for the document now, and a line saying how."""
    req = build_request(doc, "sdedit", -1, info.parts)
    options = {**req.options, "batch_size": 1}
    d = dict(info.defaults or {})
    if info.few_step and d:
        options["sampler"] = d.get("sampler", "lcm")
        steps, guidance = int(d.get("steps", 4)), float(d.get("guidance", req.guidance))
        how = f"{info.few_step} model: {steps} {options['sampler']} steps"
    else:
        options["sampler"], options["eta"] = "ddim", 0.0
        steps, guidance = min(req.steps, LIVE_STEPS), req.guidance
        how = f"{steps} DDIM steps: no few-step model or LoRA loaded, so rough and slower"
    req = dataclasses.replace(req, steps=steps, guidance=guidance, options=options)
    return req, how


class LivePanel(QWidget):
    """The live result, how it was made, and what to do with it."""

    def __init__(self, parent=None):
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        self.view = QLabel("Live mode is off (View › Live mode, Ctrl+L)")
        self.view.setObjectName("live_view")
        self.view.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.view.setMinimumSize(200, 200)
        self.view.setWordWrap(True)
        self.note = QLabel()
        self.note.setObjectName("live_note")
        self.note.setWordWrap(True)
        row = QHBoxLayout()
        self.apply = QPushButton("Apply")
        self.apply.setToolTip("Put the live result into the picture (Ctrl+Z undoes it)")
        self.keep = QPushButton("Keep in Results")
        self.keep.setToolTip("Add the live result to Results, to compare or apply later")
        for b in (self.apply, self.keep):
            b.setEnabled(False)
            row.addWidget(b)
        lay.addWidget(self.view, 1)
        lay.addWidget(self.note)
        lay.addLayout(row)
        self._image: np.ndarray | None = None

    def show_image(self, image: np.ndarray) -> None:
        self._image = np.ascontiguousarray(image)
        self._fit()
        for b in (self.apply, self.keep):
            b.setEnabled(True)

    def clear(self, text: str) -> None:
        self._image = None
        self.view.setPixmap(QPixmap())
        self.view.setText(text)
        for b in (self.apply, self.keep):
            b.setEnabled(False)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit()

    def _fit(self) -> None:
        if self._image is None:
            return
        pix = QPixmap.fromImage(wrap(self._image))
        size = self.view.size()
        mode = Qt.TransformationMode.SmoothTransformation
        self.view.setPixmap(pix.scaled(size, Qt.AspectRatioMode.KeepAspectRatio, mode))


class LiveController(QObject):
    """Schedules live updates for the window's document and shows them in its panel."""

    updated = Signal(float)  # a live result is on screen; when its update was submitted

    def __init__(self, win, panel: LivePanel):
        super().__init__(win)
        self.win, self.panel = win, panel
        self.enabled = False
        self.pending = False  # a change not yet in a submitted update
        self.submitted_at = 0.0  # monotonic time of the newest submitted update
        self.result: tuple[np.ndarray, dict] | None = None
        self._how = ""  # how the newest update runs, for the panel's note
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(DEBOUNCE_MS)
        self.timer.timeout.connect(self._launch)
        doc, b = win.doc, win.bridge
        doc.layer_changed.connect(lambda name, _: name in LIVE_LAYERS and self.changed())
        doc.settings_changed.connect(self.changed)
        doc.reset.connect(self.changed)
        doc.undo_stack.indexChanged.connect(self.committed)
        b.live_finished.connect(self._on_finished)
        b.live_ended.connect(self._on_ended)
        for signal in (b.finished, b.failed, b.cancelled, b.model_loaded):
            signal.connect(lambda *_: self.pending and self.timer.start())  # free again
        panel.apply.clicked.connect(self.apply)
        panel.keep.clicked.connect(self.keep)

    def set_enabled(self, on: bool) -> None:
        if on == self.enabled:
            return
        self.enabled = on
        if on:
            self.panel.clear("Waiting for the first live result…")
            self.changed()
        else:
            self.timer.stop()
            self.pending = False
            self.win.bridge.cancel_live()
            self.result = None
            self.panel.clear("Live mode is off (View › Live mode, Ctrl+L)")

    def hold(self) -> None:
        """An edit job is about to run: stop the live update, redo it after the job."""
        if self.win.bridge.live_id is not None:
            self.win.bridge.cancel_live()
            self.pending = True

    def changed(self) -> None:
        """Something live mode shows changed: (re)start the debounce."""
        if self.enabled:
            self.pending = True
            self.timer.start()

    def committed(self) -> None:
        """An edit is complete (a stroke released, an undo): nothing more is coming from it,
        so an idle live view updates now instead of after the debounce. While an update
        runs the debounce stays, so a burst of strokes still supersedes it only once."""
        if self.enabled and self.pending and self.win.bridge.live_id is None:
            self.timer.stop()
            self._launch()

    def _launch(self) -> None:
        b = self.win.bridge
        if not self.enabled or not self.pending:
            return
        if b.busy or b.load_id is not None or b.model_info is None:
            return  # an edit job or a load first; their end starts the timer again
        try:
            request, how = live_request(self.win.doc, b.model_info)
        except NeedsInput as e:
            self.pending = False
            self.panel.note.setText(str(e))
            return
        self.pending = False
        self.submitted_at = time.monotonic()
        self.panel.note.setText(f"Updating… ({how})")
        self._how = how
        b.submit_live(request)

    def _on_finished(self, ev) -> None:
        if not self.enabled or ev.image is None or ev.image.shape != self.win.doc.image.shape:
            return
        seconds = time.monotonic() - self.submitted_at
        self.result = (ev.image, dict(ev.parameters))
        self.panel.show_image(ev.image)
        self.panel.note.setText(f"Updated in {seconds:.2f} s ({self._how})")
        self.updated.emit(self.submitted_at)

    def _on_ended(self, ev) -> None:
        message = getattr(ev, "message", "")
        if message and self.enabled:
            self.panel.note.setText(f"Live update failed: {message}")

    def _entry(self):
        if self.result is None:
            return None
        image, parameters = self.result
        return self.win.doc.add_result(image, {**parameters, "live": True})

    def apply(self) -> None:
        entry = self._entry()
        if entry is not None:
            self.win.apply_result(entry)

    def keep(self) -> None:
        entry = self._entry()
        if entry is not None:
            self.win.history_panel.select(entry)
