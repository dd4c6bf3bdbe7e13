"""File actions of the main window: open, paste, drop, save, export, recovery, close.

Kept apart from ``app.py`` so each file reads in one sitting. Dialogs go through
``ask_open_path`` / ``ask_save_path`` / ``ask`` so tests can answer them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from PySide6.QtCore import QBuffer, QIODevice
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QApplication, QFileDialog, QMessageBox

from engine import metadata
from engine.images import check_output

from . import project, recent
from .files import (
    IMAGE_FILTER,
    MAX_PIXELS,
    FileError,
    load_image,
    load_image_bytes,
    read_parameters,
    save_image,
)
from .files import settings_from_parameters as from_a1111
from .methods import SettingsError, check_setting

PROJECT_FILTER = f"Diffusion Editor project (*{project.PROJECT_SUFFIX})"
OPEN_FILTER = (
    f"Images and projects (*.png *.jpg *.jpeg *.webp *.bmp *.tif *.tiff "
    f"*{project.PROJECT_SUFFIX});;{IMAGE_FILTER};;{PROJECT_FILTER}"
)
Btn = QMessageBox.StandardButton


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def qimage_to_rgb(img: QImage, name: str = "pasted image") -> np.ndarray:
    """A clipboard or dropped image → RGB through the one image loader (as PNG bytes), so
    transparency, size limits and errors are the same as for a file."""
    if img.width() * img.height() > MAX_PIXELS:  # before encoding it, which takes long
        raise FileError(
            f"The {name} is {img.width()}x{img.height()}; images up to 8192x8192 pixels are "
            "supported."
        )
    buf = QBuffer()
    buf.open(QIODevice.OpenModeFlag.WriteOnly)
    if not img.save(buf, "PNG", 100):  # quality 100: least compression, fastest
        raise FileError(f"The {name} could not be read.")
    return load_image_bytes(bytes(buf.data()), name)


def png_settings(params: dict[str, str] | None) -> tuple[dict, dict, list[str]]:
    """An image's A1111 parameters → (settings for the panel, checked against the panel's
    ranges; the parameters in our names, describing the image; sentences for bad fields)."""
    if not params:
        return {}, {}, []
    problems: list[str] = []
    settings = {}
    for key, v in from_a1111(params, problems).items():
        try:
            settings[key] = check_setting(key, v)
        except SettingsError as e:
            problems.append(str(e))
    # LoRA tags are the model's state, not words of the prompt (Edit prompt replays it)
    return settings, metadata.describe_parameters(params), problems


class FileActions:
    """Mixin for MainWindow (expects ``doc``, ``show_error``, ``status``, ``bridge``)."""

    # ---- dialogs (replaceable in tests) --------------------------------------------------

    def start_folder(self) -> str:
        """Where a file dialog opens: the folder of the open picture (or project), else the
        folder last used, else the current one."""
        for p in (self.doc.project_path, self.doc.path):
            if p and os.path.isdir(os.path.dirname(os.path.abspath(p))):
                return os.path.dirname(os.path.abspath(p))
        return recent.last_folder()

    def ask_open_path(self, title: str, filt: str) -> str | None:
        path, _ = QFileDialog.getOpenFileName(self, title, self.start_folder(), filt)
        return path or None

    def ask_save_path(self, title: str, filt: str, suggested: str = "") -> str | None:
        folder = self.start_folder()
        if folder and suggested and not os.path.isabs(suggested):
            suggested = os.path.join(folder, suggested)
        path, _ = QFileDialog.getSaveFileName(self, title, suggested or folder, filt)
        return path or None

    def refresh_recent(self) -> None:
        """The File › Open Recent menu from the remembered files."""
        menu = getattr(self, "recent_menu", None)
        if menu is None:
            return
        menu.clear()
        paths = recent.files()
        for i, path in enumerate(paths):
            a = menu.addAction(f"&{(i + 1) % 10} {Path(path).name}")
            a.setToolTip(path)
            a.setData(path)
            a.triggered.connect(lambda _=False, p=path: self.open_path(p))
        menu.setEnabled(bool(paths))

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

    def _import_inversion(self, data: dict, name: str) -> int | None:
        """A read project's inversion handed to the engine that keeps it (checked last, by
        the engine); its id, or None if the project has none."""
        if not data["inversion"]:
            return None
        return self.bridge.import_inversion(data["inversion"]["data"], f"The inversion in {name}")

    def open_dialog(self) -> None:
        path = self.ask_open_path("Open image or project", OPEN_FILTER)
        if path:
            self.open_path(path)

    def open_path(self, path: str) -> bool:
        """Open an image or a project. On any error the current work is left untouched."""
        name = Path(path).name
        inversion, note = None, ""
        try:  # read and check everything first; the document changes only after
            if path.endswith(project.PROJECT_SUFFIX):
                data = project.read_project(path)
                inversion = self._import_inversion(data, name)
            else:
                image = load_image(path)
                settings, described, problems = png_settings(read_parameters(path))
        except FileError as e:
            self.show_error(str(e))
            return False
        if not self.confirm_discard():
            if inversion is not None:
                self.bridge.discard_inversion(inversion)
            return False
        self.drop_job()
        self.banner_host.hide()  # an error about the previous file no longer applies
        if path.endswith(project.PROJECT_SUFFIX):
            project.load_into(self.doc, data, path, inversion)
        else:
            self.doc.set_image(image)
            self.doc.history.clear()
            self.doc.history_changed.emit()
            self.doc.path, self.doc.project_path = path, None
            self.doc.update_settings(**settings)
            self.doc.describe(described)
            self.doc.mark_saved()
            if problems:
                unused = " ".join(problems)
                self.show_error(f"{name}: settings in its parameters not used: {unused}")
            note = self._missing_loras(described.get("loras", []))
        recent.remember(path)
        self.refresh_recent()
        self.status(f"Opened {name}{note}", 15000 if note else 6000)
        return True

    def _missing_loras(self, loras: list[dict]) -> str:
        """For an image made with LoRAs the model does not have now, a sentence naming
        them (its settings reproduce it only with them); "" otherwise."""
        info = self.bridge.model_info
        have = {(n, float(w)) for n, w in (info.loras if info else ())}
        missing = [x for x in loras if (x["name"], float(x["weight"])) not in have]
        if not missing:
            return ""
        listed = ", ".join(f"{x['name']} ×{float(x['weight']):g}" for x in missing)
        return f". It was made with {listed}, not loaded now (Model › Add LoRA…)"

    def _replace_document(self, image: np.ndarray) -> bool:
        """``image`` as a new, unnamed document with no results (unsaved work asked about
        first); False when the user keeps the current one."""
        if not self.confirm_discard():
            return False
        self.drop_job()
        self.doc.set_image(image)
        self.doc.history.clear()
        self.doc.history_changed.emit()
        self.doc.path = self.doc.project_path = None
        return True

    def new_document(self, width: int, height: int) -> bool:
        """A blank white canvas of ``width`` x ``height`` px (unsaved work asked about)."""
        if not self._replace_document(np.full((int(height), int(width), 3), 255, np.uint8)):
            return False
        self.banner_host.hide()
        self.doc.mark_saved()  # nothing on a blank canvas to lose
        self.status(f"New {width}x{height} canvas")
        return True

    def open_array(self, image: np.ndarray, name: str) -> bool:
        if not self._replace_document(image):
            return False
        self.doc.mark_dirty()  # an image from outside a project: not saved anywhere yet
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
        self._open_qimage(img, "pasted image")

    def _open_qimage(self, img: QImage, name: str) -> None:
        try:
            image = qimage_to_rgb(img, name)
        except FileError as e:
            self.show_error(str(e))
            return
        self.open_array(image, name)

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
            self._open_qimage(QImage(mime.imageData()), "dropped image")
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

    def _writable(self, path: str, what: str) -> bool:
        """Say why ``path`` cannot be written (missing or read-only folder, a folder) before
        any work is done."""
        try:
            check_output(path, what=what)
        except FileError as e:
            self.show_error(str(e))
            return False
        return True

    def _write_project(self, path: str) -> bool:
        if not self._writable(path, "project"):
            return False
        inversion = None  # kept by the engine; a project without it if the engine dropped it
        if self.doc.inversion is not None:
            inversion = self.bridge.export_inversion(self.doc.inversion)
        try:
            project.save_project(self.doc, path, inversion)
        except FileError as e:
            self.show_error(str(e))
            return False
        recent.remember(path)
        self.refresh_recent()
        self.status(f"Saved {Path(path).name}")
        return True

    def export_png(self) -> bool:
        """Export the image layer, or the result shown over it if the user says so; the
        PNG carries generation parameters only if they made exactly the pixels written."""
        image, params, what = self.doc.image, self.doc.image_parameters(), "the image layer"
        entry = self.history_panel.current()
        if entry is not None and self.canvas.preview.isVisible():
            answer = self.ask(
                "Export which image?",
                f"The result “{entry.title}” is shown over the image but is not applied. "
                "Yes exports that result; No exports the image underneath, without it.",
                Btn.Yes | Btn.No | Btn.Cancel,
                Btn.Yes,
            )
            if answer == Btn.Cancel:
                return False
            if answer == Btn.Yes:
                image, params, what = entry.image, entry.parameters, f"the result {entry.title}"
            else:
                what = "the image layer, without the unapplied result"
        stem = Path(self.doc.path).stem if self.doc.path else "image"
        path = self.ask_save_path("Export image", IMAGE_FILTER, f"{stem}-edit.png")
        if not path or not self._writable(path, "exported image"):
            return False
        if self.doc.path and _same_file(path, self.doc.path):
            answer = self.ask(
                "Replace the original?",
                f"{Path(path).name} is the picture this work was opened from. Replace it?",
                Btn.Yes | Btn.No,
                Btn.No,
            )
            if answer != Btn.Yes:
                return False
        try:
            save_image(image, path, params)
        except FileError as e:
            self.show_error(str(e))
            return False
        recent.remember(path)
        self.refresh_recent()
        self.status(f"Exported {what} to {Path(path).name}")
        return True

    # ---- recovery & close -----------------------------------------------------------------

    def offer_recovery(self) -> bool:
        """Offer, newest first, each autosave of an editor that did not exit cleanly.

        Yes recovers one into this window (the rest stay on disk for the next start), No
        deletes the one shown, Cancel keeps it and stops asking. Nothing unseen is deleted.
        A damaged autosave is reported once and moved aside, and the others are still
        offered. One older than its saved project says so, and is recovered without the
        project's path, so Ctrl+S cannot put the older state over the newer project."""
        try:
            entries = project.recoverable()
        except OSError:  # no autosave folder (Autosaver said why): nothing to recover
            return False
        damaged: list[str] = []
        recovered = False
        for i, entry in enumerate(entries):
            try:
                data = project.read_project(entry["path"])
                inversion = self._import_inversion(data, Path(entry["path"]).name)
            except FileError as e:
                damaged.append(f"{Path(entry['path']).name} ({e})")
                folder = project.set_aside(entry)
                continue
            answer = self.ask(
                "Recover unsaved work?",
                self._recovery_text(entry, i, entries),
                Btn.Yes | Btn.No | Btn.Cancel,
                Btn.Yes,
            )
            if answer != Btn.Yes and inversion is not None:
                self.bridge.discard_inversion(inversion)
            if answer == Btn.No:
                project.discard_recovery(entry)
                continue
            if answer == Btn.Yes:
                newer = bool(entry.get("newer_project"))
                self.drop_job()
                path = None if newer else entry.get("project_path")
                project.load_into(self.doc, data, path, inversion)
                self.doc.mark_dirty()  # recovered work is not saved anywhere the user chose
                # the old autosave goes only once this session's own autosave holds the
                # work: a crash in the next minute must not lose what was just recovered
                self.autosaver.save_now(wait=True)
                if self.autosaver.path.exists():
                    project.discard_recovery(entry)
                recovered = True
            break
        left = len(project.recoverable())
        if damaged:
            self.show_error(
                f"{len(damaged)} autosave(s) could not be read and were moved to {folder}: "
                + "; ".join(damaged)
            )
        if recovered or left:
            more = f" {left} other autosave(s) will be offered at the next start." if left else ""
            self.status(("Recovered unsaved work from the autosave." if recovered else "") + more)
        return recovered

    @staticmethod
    def _recovery_text(entry: dict, i: int, entries: list) -> str:
        def when(t: float) -> str:
            return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))

        name = Path(entry.get("project_path") or entry.get("source_path") or "untitled").name
        count = f" ({i + 1} of {len(entries)})" if len(entries) > 1 else ""
        text = (
            f"The editor did not close cleanly. Recover the autosave of “{name}” from "
            f"{when(entry['time'])}{count}?"
        )
        if entry.get("newer_project"):
            text += (
                f"\n\n{name} was saved later, at {when(entry['newer_project'])}: this autosave "
                "is an older state. Recovered, it opens as untitled so that saving cannot "
                "replace the newer project."
            )
        return text + "\n\nYes: recover it. No: delete it. Cancel: keep it for the next start."

    def closeEvent(self, event) -> None:
        if not self.confirm_discard():
            event.ignore()
            return
        self.shutdown()
        event.accept()
