"""Tool options and layers: brush size/hardness/colour, mask operations, layer visibility."""

from __future__ import annotations

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


class ToolsPanel(QWidget):
    def __init__(self, doc: Document, canvas: Canvas, parent=None):
        super().__init__(parent)
        self.doc, self.canvas = doc, canvas
        lay = QVBoxLayout(self)
        brush = QGroupBox("Brush")
        form = QFormLayout(brush)
        self.size = QSlider(Qt.Orientation.Horizontal)
        self.size.setRange(1, 500)
        self.size.setToolTip("Brush diameter in image pixels ([ and ])")
        self.hardness = QSlider(Qt.Orientation.Horizontal)
        self.hardness.setRange(0, 100)
        self.hardness.setToolTip("Edge hardness: 100 is a hard edge")
        self.colour = QPushButton()
        self.colour.setToolTip("Stroke colour (Alt+click or I to pick from the canvas)")
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
        self.amount.setToolTip("Pixels for grow, shrink and feather")
        grid.addWidget(self.amount, 0, 0, 1, 2)
        ops = [
            ("Grow", lambda: doc.grow_mask(self.amount.value())),
            ("Shrink", lambda: doc.shrink_mask(self.amount.value())),
            ("Feather", lambda: doc.feather_mask(self.amount.value())),
            ("Invert", doc.invert_mask),
        ]
        for i, (name, fn) in enumerate(ops):
            b = QPushButton(name)
            b.setObjectName(f"mask_{name.lower()}")
            b.clicked.connect(lambda _=False, fn=fn: fn())
            grid.addWidget(b, 1 + i // 2, i % 2)
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
        self.sync()

    def sync(self) -> None:
        b = self.canvas.brush
        self.size.setValue(int(round(b.size)))
        self._on_size(self.size.value())
        self.hardness.setValue(int(round(b.hardness * 100)))
        self.set_colour(b.colour)

    def _on_size(self, v: int) -> None:
        self.canvas.brush.size = float(v)
        self.size_label.setText(f"{v} px")

    def set_colour(self, rgb: tuple) -> None:
        self.canvas.brush.colour = tuple(int(c) for c in rgb)
        self.colour.setStyleSheet(f"background-color: rgb{tuple(self.canvas.brush.colour)};")

    def _choose_colour(self) -> None:
        c = QColorDialog.getColor(QColor(*self.canvas.brush.colour), self, "Stroke colour")
        if c.isValid():
            self.set_colour((c.red(), c.green(), c.blue()))

    def step_size(self, factor: float) -> None:
        new = max(1, int(round(self.canvas.brush.size * factor)))
        if new == int(round(self.canvas.brush.size)) and factor != 1:
            new += 1 if factor > 1 else -1  # always move, even at tiny sizes
        self.size.setValue(max(1, new))
        self.canvas.brush.size = float(self.size.value())
