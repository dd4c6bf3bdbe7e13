"""File actions of the main window: open, paste, drop, save, export, recovery, close.

Kept apart from ``app.py`` so each file reads in one sitting. Dialogs go through
``ask_open_path`` / ``ask_save_path`` / ``ask`` so tests can answer them.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QApplication, QFileDialog, QMessageBox

from . import project
from .files import IMAGE_FILTER, FileError, load_image, read_parameters, save_image
from .files import settings_from_parameters as from_a1111

PROJECT_FILTER = f"Diffusion Editor project (*{project.PROJECT_SUFFIX})"
OPEN_FILTER = (
    f"Images and projects (*.png *.jpg *.jpeg *.webp *.bmp *.tif *.tiff "
    f"*{project.PROJECT_SUFFIX});;{IMAGE_FILTER};;{PROJECT_FILTER}"
)
Btn = QMessageBox.StandardButton


def qimage_to_rgb(img: QImage) -> np.ndarray:
    img = img.convertToFormat(QImage.Format.Format_RGB888)
    h, w, bpl = img.height(), img.width(), img.bytesPerLine()
    raw = np.frombuffer(img.constBits(), np.uint8, count=h * bpl).reshape(h, bpl)
    return np.ascontiguousarray(raw[:, : w * 3].reshape(h, w, 3))


class FileActions:
    """Mixin for MainWindow (expects ``doc``, ``show_error``, ``status``, ``bridge``)."""

    # ---- dialogs (replaceable in tests) --------------------------------------------------

    def ask_open_path(self, title: str, filt: str) -> str | None:
        path, _ = QFileDialog.getOpenFileName(self, title, "", filt)
        return path or None

    def ask_save_path(self, title: str, filt: str, suggested: str = "") -> str | None:
        path, _ = QFileDialog.getSaveFileName(self, title, suggested, filt)
        return path or None

    def ask(self, title: str, text: str, buttons, default):
        return QMessageBox.question(self, title, text, buttons, default)

    # ---- open ----------------------------------------------------------------------------

    def confirm_discard(self) -> bool:
        """True if there are no unsaved changes, or the user saved or discarded them."""
        if not self.doc.is_modified():
            return True
        answer = self.ask(
            "Unsaved changes",
            "The current work has unsaved changes. Save them first?",
            Btn.Save | Btn.Discard | Btn.Cancel,
            Btn.Save,
        )
        if answer == Btn.Save:
            return self.save_project()
        return answer == Btn.Discard

    def open_dialog(self) -> None:
        path = self.ask_open_path("Open image or project", OPEN_FILTER)
        if path:
            self.open_path(path)

    def open_path(self, path: str) -> bool:
        """Open an image or a project. On any error the current work is left untouched."""
        try:
            if path.endswith(project.PROJECT_SUFFIX):
                data = project.read_project(path)
            else:
                image = load_image(path)
                params = read_parameters(path)
        except FileError as e:
            self.show_error(str(e))
            return False
        if not self.confirm_discard():
            return False
        self.bridge.cancel()
        if path.endswith(project.PROJECT_SUFFIX):
            project.load_into(self.doc, data, path)
        else:
            self.doc.set_image(image)
            self.doc.history.clear()
            self.doc.history_changed.emit()
            self.doc.path, self.doc.project_path = path, None
            if params:
                self.doc.update_settings(**from_a1111(params))
            self.doc.mark_saved()
        self.status(f"Opened {Path(path).name}")
        return True

    def open_array(self, image: np.ndarray, name: str) -> bool:
        if not self.confirm_discard():
            return False
        self.bridge.cancel()
        self.doc.set_image(image)
        self.doc.history.clear()
        self.doc.history_changed.emit()
        self.doc.path = self.doc.project_path = None
        self.doc.mark_dirty()
        self.status(f"Opened {name}")
        return True

    def paste(self) -> None:
        mime = QApplication.clipboard().mimeData()
        if mime is not None and mime.hasUrls():
            local = [u.toLocalFile() for u in mime.urls() if u.isLocalFile()]
            if local:
                self.open_path(local[0])
                return
        img = QApplication.clipboard().image()
        if img.isNull():
            self.show_error("The clipboard holds no image.")
            return
        self.open_array(qimage_to_rgb(img), "pasted image")

    def dragEnterEvent(self, event) -> None:
        mime = event.mimeData()
        if mime.hasUrls() or mime.hasImage():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        mime = event.mimeData()
        local = [u.toLocalFile() for u in mime.urls() if u.isLocalFile()]
        if local:
            self.open_path(local[0])
        elif mime.hasImage():
            self.open_array(qimage_to_rgb(QImage(mime.imageData())), "dropped image")
        event.acceptProposedAction()

    # ---- save ------------------------------------------------------------------------------

    def save_project(self) -> bool:
        if not self.doc.project_path:
            return self.save_project_as()
        return self._write_project(self.doc.project_path)

    def save_project_as(self) -> bool:
        stem = Path(self.doc.path).stem if self.doc.path else "untitled"
        path = self.ask_save_path("Save project", PROJECT_FILTER, stem + project.PROJECT_SUFFIX)
        if not path:
            return False
        if not path.endswith(project.PROJECT_SUFFIX):
            path += project.PROJECT_SUFFIX
        return self._write_project(path)

    def _write_project(self, path: str) -> bool:
        try:
            project.save_project(self.doc, path)
        except FileError as e:
            self.show_error(str(e))
            return False
        self.status(f"Saved {Path(path).name}")
        return True

    def export_png(self) -> bool:
        stem = Path(self.doc.path).stem if self.doc.path else "image"
        path = self.ask_save_path("Export image", IMAGE_FILTER, f"{stem}-edit.png")
        if not path:
            return False
        try:
            save_image(self.doc.image, path, self.export_parameters())
        except FileError as e:
            self.show_error(str(e))
            return False
        self.status(f"Exported {Path(path).name}")
        return True

    def export_parameters(self) -> dict:
        if self.last_applied is not None:
            return dict(self.last_applied)
        s = self.doc.settings
        keys = ("prompt", "negative_prompt", "method", "steps", "guidance", "seed", "strength")
        h, w = self.doc.size
        info = self.bridge.engine.model_info
        return {
            **{k: s[k] for k in keys},
            "size": f"{w}x{h}",
            "model": info.name if info else "",
        }

    # ---- recovery & close -----------------------------------------------------------------

    def offer_recovery(self) -> bool:
        """Offer the newest autosave of an editor that did not exit cleanly."""
        entries = project.recoverable()
        if not entries:
            return False
        entry = entries[0]
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.get("time", 0)))
        name = Path(entry.get("project_path") or entry.get("source_path") or "untitled").name
        answer = self.ask(
            "Recover unsaved work?",
            f"The editor did not close cleanly. Recover the autosave of “{name}” from {when}?",
            Btn.Yes | Btn.No,
            Btn.Yes,
        )
        if answer != Btn.Yes:
            for e in entries:
                project.discard_recovery(e)
            return False
        try:
            data = project.read_project(entry["path"])
        except FileError as e:
            self.show_error(f"The autosave could not be recovered: {e}")
            return False
        project.load_into(self.doc, data, entry.get("project_path"))
        self.doc.mark_dirty()  # recovered work is not saved anywhere the user chose
        for e in entries:
            project.discard_recovery(e)
        self.status("Recovered unsaved work from the autosave")
        return True

    def closeEvent(self, event) -> None:
        if not self.confirm_discard():
            event.ignore()
            return
        self.shutdown()
        event.accept()
