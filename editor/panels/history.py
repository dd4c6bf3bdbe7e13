"""Results history strip: thumbnails of finished jobs; apply, compare, discard, re-run."""

from __future__ import annotations

import re

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QIcon, QImage, QPixmap
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListView,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..document import Document, HistoryEntry, thumbnail

THUMB = 88


def icon_for(entry: HistoryEntry) -> QIcon:
    small = thumbnail(entry.image, THUMB)
    h, w = small.shape[:2]
    img = QImage(small.data, w, h, small.strides[0], QImage.Format.Format_RGB888).copy()
    return QIcon(QPixmap.fromImage(img))


RESIZE_TIP = (
    "The model made this result at its working size and it was resized to the canvas "
    "(Lanczos). Upscaled results are softer: File › New at the model's native size gives "
    "the sharpest ones."
)


def resize_note(entry: HistoryEntry | None) -> str:
    """ "Made at 128×128, upscaled ×4.0 to 512×512" for a resized result (its "resized"
    parameter: "upscaled from 128x128 to 512x512"); "" otherwise."""
    resized = entry.parameters.get("resized", "") if entry is not None else ""
    m = re.fullmatch(r"(\w+) from (\d+)x(\d+) to (\d+)x(\d+)", str(resized))
    if m is None:
        return ""
    way, (ww, wh, w, h) = m[1], (int(v) for v in m.groups()[1:])
    return f"Made at {ww}×{wh}, {way} ×{max(w / ww, ww / w):.1f} to {w}×{h}"


class HistoryPanel(QWidget):
    selected = Signal(object)  # HistoryEntry or None
    apply_requested = Signal(object)
    rerun_requested = Signal(object)
    compare_toggled = Signal(bool)

    def __init__(self, doc: Document, parent=None):
        super().__init__(parent)
        self.doc = doc
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        self.list = QListWidget()
        self.list.setViewMode(QListView.ViewMode.IconMode)
        self.list.setFlow(QListView.Flow.LeftToRight)
        self.list.setWrapping(False)
        self.list.setIconSize(QSize(THUMB, THUMB))
        self.list.setMovement(QListView.Movement.Static)
        self.list.setFixedHeight(THUMB + 44)
        self.list.setSpacing(4)
        lay.addWidget(self.list)
        row = QHBoxLayout()
        self.apply = QPushButton("Apply")
        self.apply.setToolTip(
            "Put the selected result into the picture, replacing it (Ctrl+Z undoes it)"
        )
        self.compare = QPushButton("Compare")
        self.compare.setCheckable(True)
        self.compare.setToolTip(
            "Show the picture without the selected result, to compare (or hold C)"
        )
        self.discard = QPushButton("Discard")
        self.discard.setToolTip("Remove the selected result from this list (the picture stays)")
        self.rerun = QPushButton("Re-run")
        self.rerun.setToolTip(
            "Run again with exactly this result's prompt, settings and seed (the seed is "
            "then locked)"
        )
        for b in (self.apply, self.compare, self.discard, self.rerun):
            row.addWidget(b)
        # how the selected result reached the canvas: the resize step made visible
        self.size_info = QLabel()
        self.size_info.setObjectName("result_size")
        row.addWidget(self.size_info)
        row.addStretch(1)
        lay.addLayout(row)
        self.list.currentItemChanged.connect(lambda *_: self._on_select())
        self.apply.clicked.connect(lambda: self._emit(self.apply_requested))
        self.rerun.clicked.connect(lambda: self._emit(self.rerun_requested))
        self.discard.clicked.connect(self._discard)
        self.compare.toggled.connect(self.compare_toggled)
        doc.history_changed.connect(self.reload)
        self.reload()
        self.setMaximumHeight(self.sizeHint().height())  # the canvas gets the rest

    def current(self) -> HistoryEntry | None:
        item = self.list.currentItem()
        if item is None:
            return None
        eid = item.data(Qt.ItemDataRole.UserRole)
        return next((e for e in self.doc.history if e.id == eid), None)

    def reload(self) -> None:
        keep = self.current()
        self.list.blockSignals(True)
        self.list.clear()
        for e in self.doc.history:
            item = QListWidgetItem(icon_for(e), e.title)
            item.setData(Qt.ItemDataRole.UserRole, e.id)
            item.setToolTip(e.tooltip())
            self.list.addItem(item)
            if keep is not None and e.id == keep.id:
                self.list.setCurrentItem(item)
        self.list.blockSignals(False)
        self._on_select()

    def select(self, entry: HistoryEntry | None) -> None:
        for i in range(self.list.count()):
            item = self.list.item(i)
            if entry is not None and item.data(Qt.ItemDataRole.UserRole) == entry.id:
                self.list.setCurrentItem(item)
                return
        self.list.setCurrentItem(None)

    def _on_select(self) -> None:
        entry = self.current()
        for b in (self.apply, self.compare, self.discard, self.rerun):
            b.setEnabled(entry is not None)
        self.size_info.setText(resize_note(entry))
        self.size_info.setToolTip(RESIZE_TIP if self.size_info.text() else "")
        self.selected.emit(entry)

    def _emit(self, signal) -> None:
        entry = self.current()
        if entry is not None:
            signal.emit(entry)

    def _discard(self) -> None:
        entry = self.current()
        if entry is not None:
            self.list.setCurrentItem(None)
            self.doc.remove_result(entry)
