"""The job state machine of the main window: run, step, finish, fail, cancel; results.

``run_method`` snapshots the document into a frozen request and submits it through the
bridge; bridge signals (already on the GUI thread, stale jobs dropped) drive the progress
bar, the preview layer and the history. The GUI never waits on the engine.
"""

from __future__ import annotations

import time

import numpy as np

from engine import imageops

from . import project
from .document import image_key
from .methods import (
    METHODS,
    NeedsInput,
    SettingsError,
    build_request,
    check_setting,
    random_seed,
)

MASKED = ("sdedit", "repaint", "diffedit", "reedit")  # results change only inside the mask


class JobActions:
    """Mixin for MainWindow (expects ``doc``, ``bridge``, ``engine``, ``canvas``, panels)."""

    # ---- jobs -----------------------------------------------------------------------------

    def run_method(self, method: str, stage: int = -1) -> int | None:
        if self.bridge.busy or self.bridge.load_id is not None:
            self.status("Busy: wait for the current job or cancel it (Esc).")
            return None
        if self.engine.model_info is None:
            self.show_error("No model is loaded; choose one in the Model menu.")
            return None
        if not self.doc.settings.get("seed_locked"):
            self.doc.update_settings(seed=random_seed())
        try:
            request = build_request(self.doc, method, stage)
        except NeedsInput as e:
            self.show_error(str(e))
            return None
        self.banner_host.hide()
        self.job = (method, request.method)
        if request.method == "invert":
            self._inverted_key = image_key(request.image)
        masked = request.method in MASKED and request.mask is not None
        self._job_mask, self._preview_alpha = (request.mask if masked else None), None
        self.history_panel.select(None)
        self.canvas.set_layer_visible("preview", True)
        self.prompt_panel.set_busy(True, f"{request.method}: waiting…")
        self._t_job = time.monotonic()
        return self.bridge.submit(request)

    def cancel_job(self) -> None:
        if self.bridge.busy:
            self.bridge.cancel()
            self.status("Cancelling…")

    def drop_job(self) -> None:
        """A new document replaces the one the running job was made for: cancel it and
        ignore whatever it still sends."""
        if self.bridge.busy:
            self.bridge.forget()
            self._on_cancelled(None)

    def _on_step(self, ev) -> None:
        self.prompt_panel.show_step(ev.i, ev.n, ev.label)
        if ev.preview is not None:
            self.canvas.show_preview(self._masked_preview(ev.preview))

    def _masked_preview(self, preview: np.ndarray) -> np.ndarray:
        """With a mask, only the masked area will change: show x̂₀ only there (RGBA)."""
        if self._job_mask is None or preview.ndim != 3 or preview.shape[2] != 3:
            return preview
        hw = preview.shape[:2]
        if self._preview_alpha is None or self._preview_alpha.shape != hw:
            self._preview_alpha = imageops.resize(self._job_mask, hw)
        return np.dstack([preview, self._preview_alpha])

    def _on_finished(self, ev) -> None:
        kind = self.job[1] if self.job else ev.parameters.get("method")
        self.job = None
        secs = time.monotonic() - self._t_job
        self.prompt_panel.set_busy(False, f"done in {secs:.1f} s")
        self.canvas.show_preview(None)
        if kind == "diffedit_mask":
            mask = ev.extras.get("mask")
            if mask is not None and mask.shape == self.doc.mask.shape:
                self.doc.set_mask(mask, "DiffEdit mask")
                self.canvas.set_layer_visible("mask", True)
                self.status("DiffEdit mask is in the mask layer: touch it up, then Run.")
            return
        if kind == "invert":
            self.doc.inversion = ev.extras.get("inversion")
            self.doc.inversion_source = self._inverted_key
            self.status("Inverted: change the prompt and Run to re-edit.")
        if ev.image is None or ev.image.shape != self.doc.image.shape:
            return  # the document changed size while the job ran
        entry = self.doc.add_result(ev.image, project.plain(dict(ev.parameters)))
        self.history_panel.select(entry)

    def _on_failed(self, ev) -> None:
        self.job = None
        self.prompt_panel.set_busy(False, "failed")
        self.canvas.show_preview(None)
        self.show_error(ev.message)

    def _on_cancelled(self, ev) -> None:
        self.job = None
        self.prompt_panel.set_busy(False, "cancelled")
        self.canvas.show_preview(None)
        self.status("Cancelled; nothing was changed.")

    # ---- results --------------------------------------------------------------------------

    def apply_result(self, entry) -> None:
        if entry.image.shape != self.doc.image.shape:
            self.show_error("This result was made for an image of another size.")
            return
        self.doc.apply_result(entry)  # the image now carries the entry's parameters
        self.history_panel.select(None)
        self.status(f"Applied {entry.title} (Ctrl+Z to undo)")

    def rerun(self, entry) -> None:
        p = entry.parameters
        keys = ("prompt", "negative_prompt", "steps", "guidance", "strength", "seed")
        try:  # a result's parameters may come from a project file: checked like settings
            changes = {k: check_setting(k, p[k]) for k in keys if k in p}
        except SettingsError as e:
            self.show_error(f"This result's settings cannot be re-run: {e}")
            return
        ui = next((k for k, m in METHODS.items() if p.get("method") in m.engine), None)
        if ui:
            changes["method"] = ui
        self.doc.update_settings(**changes, seed_locked=True)
        self.run_method(ui or self.prompt_panel.current_method())
