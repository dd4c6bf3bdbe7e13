"""File › New: a blank canvas of a chosen size, with the model's native size one click away
and what the model will work at said before anything runs."""

from __future__ import annotations

from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from engine import imageops

MIN_SIDE, MAX_SIDE = 8, 8192  # what the engine accepts (and the loader: 8192² at most)
VAE_FACTOR = 8  # SD-class models: sides are worked on in multiples of 8


def size_note(h: int, w: int, native: int | None) -> str:
    """What the model does with a canvas of h x w: the size it works at and how results
    reach the canvas (upscaled, downscaled or as they are)."""
    if not native:
        return f"Canvas {w}×{h}."
    wh, ww = imageops.working_size(h, w, native, VAE_FACTOR)
    text = f"Canvas {w}×{h} · model works at {ww}×{wh}"
    scale = (h * w / (wh * ww)) ** 0.5
    if scale > 1.05:
        return f"{text}\nresults upscaled ×{scale:.1f} (softer)"
    if scale < 0.95:
        return f"{text}\nresults downscaled ×{1 / scale:.1f}"
    return f"{text}\nits native size: nothing resized"


class NewDocumentDialog(QDialog):
    """Width and height in px; "Native size" sets both to the model's native size."""

    def __init__(self, parent, size: tuple[int, int], native: int | None):
        super().__init__(parent)
        self.setWindowTitle("New canvas")
        self.native = native
        lay = QVBoxLayout(self)
        form = QFormLayout()
        self.width_box, self.height_box = QSpinBox(), QSpinBox()
        for box, v, name in (
            (self.width_box, size[1], "width"),
            (self.height_box, size[0], "height"),
        ):
            box.setObjectName(f"new_{name}")
            box.setRange(MIN_SIDE, MAX_SIDE)
            box.setSuffix(" px")
            box.setValue(int(v))
            box.setToolTip(
                f"Canvas {name} in pixels. The model works at about its native size and "
                "results are resized to the canvas, so far larger canvases look softer."
            )
            box.valueChanged.connect(self._update_note)
        form.addRow("Width", self.width_box)
        form.addRow("Height", self.height_box)
        lay.addLayout(form)
        self.native_button = QPushButton(
            f"Model's native size ({native}×{native})" if native else "Model's native size"
        )
        self.native_button.setObjectName("new_native")
        self.native_button.setEnabled(bool(native))
        self.native_button.setToolTip(
            "Start at the size the model was trained at: the sharpest results, nothing resized"
        )
        self.native_button.clicked.connect(self.use_native)
        lay.addWidget(self.native_button)
        self.note = QLabel()
        self.note.setObjectName("new_note")
        lay.addWidget(self.note)
        self.buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        lay.addWidget(self.buttons)
        self._update_note()

    def use_native(self) -> None:
        if self.native:
            self.width_box.setValue(self.native)
            self.height_box.setValue(self.native)

    def chosen(self) -> tuple[int, int]:
        """(width, height)."""
        return self.width_box.value(), self.height_box.value()

    def _update_note(self) -> None:
        w, h = self.chosen()
        self.note.setText(size_note(h, w, self.native))
