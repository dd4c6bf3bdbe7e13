"""Tool options and layers: brush size/hardness/colour, mask operations and look, layer
visibility (the checkboxes follow the canvas, also when a job shows its preview)."""

from __future__ import annotations

import math

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QCheckBox,
    QColorDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..canvas import Canvas
from ..document import Document

SIZE_MIN, SIZE_MAX = 1, 500  # brush diameter, px
SLIDER_STEPS = 1000  # the size slider is logarithmic: equal moves change the size by equal ratios


def size_to_slider(size: float) -> int:
    size = min(max(size, SIZE_MIN), SIZE_MAX)
    return round(SLIDER_STEPS * math.log(size / SIZE_MIN) / math.log(SIZE_MAX / SIZE_MIN))


def slider_to_size(v: int) -> int:
    return max(SIZE_MIN, round(SIZE_MIN * (SIZE_MAX / SIZE_MIN) ** (v / SLIDER_STEPS)))


LAYER_TIPS = {
    "preview": "Show the running job's preview or the selected result over the picture",
    "mask": "Show the mask (where masked methods change the picture)",
    "strokes": "Show the colour strokes (SDEdit uses them even when hidden)",
    "image": "Show the picture itself",
}


class ToolsPanel(QWidget):
    def __init__(self, doc: Document, canvas: Canvas, parent=None):
        super().__init__(parent)
        self.doc, self.canvas = doc, canvas
        lay = QVBoxLayout(self)
        brush = QGroupBox("Brush")
        form = QFormLayout(brush)
        self.size = QSlider(Qt.Orientation.Horizontal)
        self.size.setObjectName("brush_size")
        self.size.setRange(0, SLIDER_STEPS)
        self.size.setSingleStep(10)
        self.size.setPageStep(100)
        self.size.setToolTip(
            "Brush diameter in picture pixels, from 1 to 500; the slider moves finely at small "
            "sizes. [ and ] make it a little smaller or bigger."
        )
        self.hardness = QSlider(Qt.Orientation.Horizontal)
        self.hardness.setRange(0, 100)
        self.hardness.setToolTip(
            "How sharp the brush's edge is: 100 paints a hard edge, lower fades it out "
            "(soft masks blend edits in more gently)."
        )
        self.colour = QPushButton()
        self.colour.setToolTip(
            "Colour of the colour brush (SDEdit turns rough colour strokes into a picture). "
            "Alt+click or I picks a colour from the canvas."
        )
        self.size_label = QLabel()
        self.size_label.setMinimumWidth(48)
        size_row = QHBoxLayout()
        size_row.addWidget(self.size, 1)
        size_row.addWidget(self.size_label)
        form.addRow("Size", size_row)
        form.addRow("Hardness", self.hardness)
        form.addRow("Colour", self.colour)
        lay.addWidget(brush)

        mask = QGroupBox("Mask")
        grid = QGridLayout(mask)
        self.amount = QSpinBox()
        self.amount.setRange(1, 256)
        self.amount.setValue(8)
        self.amount.setPrefix("by ")
        self.amount.setSuffix(" px")
        self.amount.setToolTip("How many pixels Grow, Shrink and Feather move the mask's edge")
        grid.addWidget(self.amount, 0, 0, 1, 2)
        ops = [
            ("Grow", lambda: doc.grow_mask(self.amount.value()), "Make the mask bigger"),
            ("Shrink", lambda: doc.shrink_mask(self.amount.value()), "Make the mask smaller"),
            (
                "Feather",
                lambda: doc.feather_mask(self.amount.value()),
                "Soften the mask's edge, so the edit fades into the picture",
            ),
            ("Invert", doc.invert_mask, "Swap masked and unmasked: edit everything else"),
        ]
        for i, (name, fn, tip) in enumerate(ops):
            b = QPushButton(name)
            b.setObjectName(f"mask_{name.lower()}")
            b.setToolTip(f"{tip} (undoable)")
            b.clicked.connect(lambda _=False, fn=fn: fn())
            grid.addWidget(b, 1 + i // 2, i % 2)
        # how the mask looks: colour, opacity, outline
        self.mask_colour = QPushButton()
        self.mask_colour.setObjectName("mask_colour")
        self.mask_colour.setToolTip(
            "Colour the mask is shown in: pick one that stands out against the picture"
        )
        self.mask_opacity = QSlider(Qt.Orientation.Horizontal)
        self.mask_opacity.setObjectName("mask_opacity")
        self.mask_opacity.setRange(0, 100)
        self.mask_opacity.setToolTip(
            "How strongly the mask colour covers the picture (0: only the outline shows)"
        )
        self.mask_outline = QCheckBox("Outline")
        self.mask_outline.setObjectName("mask_outline")
        self.mask_outline.setToolTip("Draw the mask's edge as a dashed line, at any zoom")
        grid.addWidget(self.mask_colour, 3, 0)
        grid.addWidget(self.mask_outline, 3, 1)
        grid.addWidget(self.mask_opacity, 4, 0, 1, 2)
        lay.addWidget(mask)

        layers = QGroupBox("Layers")
        v = QVBoxLayout(layers)
        self.visible: dict[str, QCheckBox] = {}
        for name, label, clearable in (
            ("preview", "Preview / result", False),
            ("mask", "Mask", True),
            ("strokes", "Colour strokes", True),
            ("image", "Image", False),
        ):
            row = QHBoxLayout()
            cb = QCheckBox(label)
            cb.setChecked(True)
            cb.setToolTip(LAYER_TIPS[name])
            cb.toggled.connect(lambda on, n=name: canvas.set_layer_visible(n, on))
            self.visible[name] = cb
            row.addWidget(cb, 1)
            if clearable:
                clear = QPushButton("Clear")
                clear.setObjectName(f"clear_{name}")
                clear.setToolTip(f"Clear the {label.lower()} layer (undoable)")
                clear.clicked.connect(lambda _=False, n=name: doc.clear_layer(n))
                row.addWidget(clear)
            v.addLayout(row)
        lay.addWidget(layers)
        lay.addStretch(1)

        self.size.valueChanged.connect(self._on_size)
        self.hardness.valueChanged.connect(lambda v: setattr(canvas.brush, "hardness", v / 100))
        self.colour.clicked.connect(self._choose_colour)
        self.mask_colour.clicked.connect(self._choose_mask_colour)
        self.mask_opacity.valueChanged.connect(lambda v: canvas.set_mask_style(alpha=v / 100))
        self.mask_outline.toggled.connect(lambda on: canvas.set_mask_style(outline=on))
        canvas.layer_visibility_changed.connect(self._follow_layer)
        self.sync()

    def sync(self) -> None:
        b = self.canvas.brush
        self.set_size(b.size)
        self.hardness.setValue(int(round(b.hardness * 100)))
        self.set_colour(b.colour)
        c = self.canvas
        self.mask_opacity.setValue(round(c.mask_alpha * 100))
        self.mask_outline.setChecked(c.show_outline)
        self._show_mask_colour()

    def _follow_layer(self, name: str, visible: bool) -> None:
        """A layer shown or hidden elsewhere (a job's preview, Compare, hold C)."""
        cb = self.visible.get(name)
        if cb is not None and cb.isChecked() != visible:
            cb.blockSignals(True)
            cb.setChecked(visible)
            cb.blockSignals(False)

    def set_size(self, size: float) -> None:
        """Set the brush size in px (the slider follows, on its logarithmic scale)."""
        size = int(min(max(round(size), SIZE_MIN), SIZE_MAX))
        self.size.blockSignals(True)
        self.size.setValue(size_to_slider(size))
        self.size.blockSignals(False)
        self.canvas.brush.size = float(size)
        self.size_label.setText(f"{size} px")

    def _on_size(self, v: int) -> None:
        size = slider_to_size(v)
        self.canvas.brush.size = float(size)
        self.size_label.setText(f"{size} px")

    def set_colour(self, rgb: tuple) -> None:
        self.canvas.brush.colour = tuple(int(c) for c in rgb)
        self.colour.setStyleSheet(f"background-color: rgb{tuple(self.canvas.brush.colour)};")

    def _choose_colour(self) -> None:
        c = QColorDialog.getColor(QColor(*self.canvas.brush.colour), self, "Stroke colour")
        if c.isValid():
            self.set_colour((c.red(), c.green(), c.blue()))

    def _show_mask_colour(self) -> None:
        rgb = tuple(self.canvas.mask_tint)
        self.mask_colour.setText("Mask colour")
        text = "black" if sum(rgb) > 380 else "white"
        self.mask_colour.setStyleSheet(f"background-color: rgb{rgb}; color: {text};")

    def _choose_mask_colour(self) -> None:
        c = QColorDialog.getColor(QColor(*self.canvas.mask_tint), self, "Mask colour")
        if c.isValid():
            self.canvas.set_mask_style(tint=(c.red(), c.green(), c.blue()))
            self._show_mask_colour()

    def step_size(self, direction: int) -> None:
        """One fine step ([ and ]): about 10 % of the size, at least 1 px."""
        size = int(round(self.canvas.brush.size))
        self.set_size(size + direction * max(1, round(size * 0.1)))
