"""The canvas: a QGraphicsView over four layers — image, colour strokes, mask, preview.

Layer items wrap the document's numpy arrays in QImages *without copying* and repaint
only the exposed rectangle, so a brush dab on a 4096² image redraws a few hundred pixels.
Zoom: wheel (around the cursor), ``fit``/``actual size``. Pan: middle button or space+drag.
"""

from __future__ import annotations

import math

import numpy as np
from PySide6.QtCore import QLineF, QPointF, QRect, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPen, QTransform, qRgba
from PySide6.QtWidgets import QGraphicsItem, QGraphicsScene, QGraphicsView

from engine import imageops

from . import tools
from .document import Document

HEAT_TINT = (255, 170, 0)  # a selected word's attention map; alpha follows its strength
HEAT_ALPHA = 0.75
OVERLAY_SIDE = 512  # overlays from small maps are upsampled to at most this, then stretched
MASK_TINT = (255, 40, 120)  # mask overlay colour (the user can pick another); alpha follows
MASK_ALPHA = 0.55  # the mask value; at mask 255: the image shows through, the mask stands out
OUTLINE_SIDE = 1024  # the mask's outline is traced on at most this many pixels per side
OUTLINE_DELAY_MS = 150  # after the mask last changed (not on every brush dab)


def mask_colours(tint=MASK_TINT, alpha: float = MASK_ALPHA) -> list[int]:
    """The mask layer's colour table: ``tint`` with alpha = ``alpha`` × the mask value."""
    return [qRgba(*tint, round(v * alpha)) for v in range(256)]


MASK_COLOURS = mask_colours()


def _runs(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, start, end) of every run of True along the rows of a 2-D bool array."""
    d = np.diff(np.pad(b.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    rows, starts = np.nonzero(d == 1)
    _, ends = np.nonzero(d == -1)
    return rows, starts, ends


def mask_edges(mask: np.ndarray, max_side: int = OUTLINE_SIDE) -> np.ndarray:
    """The outline of a mask (where it crosses 50 %) as line segments x0, y0, x1, y1 in
    image pixels (float32, N x 4), along pixel borders; a mask larger than ``max_side`` is
    traced on every f-th pixel. Runs along a row or column are one segment each."""
    h, w = mask.shape
    f = max(1, math.ceil(max(h, w) / max_side))
    m = np.pad(mask[::f, ::f] > 127, 1)
    vertical = m[1:-1, :-1] != m[1:-1, 1:]  # [y, x]: an edge left of cell x in row y
    horizontal = m[:-1, 1:-1] != m[1:, 1:-1]  # [y, x]: an edge above cell y in column x
    xs, y0, y1 = _runs(vertical.T)
    ys, x0, x1 = _runs(horizontal)
    v = np.stack([xs, y0, xs, y1], 1)
    hz = np.stack([x0, ys, x1, ys], 1)
    lines = np.concatenate([v, hz]).astype(np.float32) * f
    lines[:, 0::2] = lines[:, 0::2].clip(0, w)
    lines[:, 1::2] = lines[:, 1::2].clip(0, h)
    return lines


def wrap(arr: np.ndarray) -> QImage:
    """A QImage that shares memory with a C-contiguous uint8 array (HxW, HxWx3, HxWx4)."""
    h, w = arr.shape[:2]
    if arr.ndim == 2:
        img = QImage(arr.data, w, h, arr.strides[0], QImage.Format.Format_Indexed8)
        img.setColorTable(MASK_COLOURS)
        return img
    fmt = QImage.Format.Format_RGB888 if arr.shape[2] == 3 else QImage.Format.Format_RGBA8888
    return QImage(arr.data, w, h, arr.strides[0], fmt)


def mip_level(scale: float) -> int:
    """How many times to halve a layer before drawing it at ``scale``: as small as
    possible while it still has at least one pixel per screen pixel."""
    return max(0, int(math.floor(math.log2(1.0 / scale)))) if 0 < scale < 0.5 else 0


class LayerItem(QGraphicsItem):
    """Draws one numpy layer; ``refresh(rect)`` repaints just that rect.

    Zoomed out, it draws from a cached smaller copy (a mip level, area-averaged by Qt),
    so a full repaint at "fit" scales ~1 M pixels per layer instead of 16 M; the copy is
    updated by rectangle as the layer changes."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.array: np.ndarray | None = None
        self.qimage: QImage | None = None
        self.mip: tuple[int, QImage] | None = None  # (level, image at 1 / 2**level)
        self.cover: PreviewItem | None = None  # skip drawing while it hides this layer
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemUsesExtendedStyleOption, True)

    def set_array(self, arr: np.ndarray | None) -> None:
        self.prepareGeometryChange()
        self.array = arr  # keep the buffer alive as long as the QImage uses it
        self.qimage = None if arr is None else wrap(arr)
        self.mip = None
        self.update()

    def refresh(self, rect: QRect) -> None:
        if self.mip is not None:
            self._update_mip(self.mip[0], rect)
        self.update(QRectF(rect))

    def _update_mip(self, level: int, rect: QRect) -> QImage:
        f = 1 << level
        w, h = self.qimage.width(), self.qimage.height()
        if self.mip is None or self.mip[0] != level:
            fmt = QImage.Format.Format_ARGB32_Premultiplied
            self.mip = (level, QImage(-(-w // f), -(-h // f), fmt))
            rect = self.qimage.rect()
        x0, y0 = rect.left() // f * f, rect.top() // f * f  # align to whole mip pixels
        x1, y1 = min(w, -(-(rect.right() + 1) // f) * f), min(h, -(-(rect.bottom() + 1) // f) * f)
        part = self.qimage.copy(x0, y0, x1 - x0, y1 - y0).scaled(
            -(-(x1 - x0) // f),
            -(-(y1 - y0) // f),
            Qt.AspectRatioMode.IgnoreAspectRatio,
            Qt.TransformationMode.SmoothTransformation,
        )
        p = QPainter(self.mip[1])
        p.setCompositionMode(QPainter.CompositionMode.CompositionMode_Source)
        p.drawImage(x0 // f, y0 // f, part)
        p.end()
        return self.mip[1]

    def boundingRect(self) -> QRectF:
        if self.qimage is None:
            return QRectF()
        return QRectF(0, 0, self.qimage.width(), self.qimage.height())

    def paint(self, painter: QPainter, option, widget=None) -> None:
        if self.qimage is None or (self.cover is not None and self.cover.hides_layers()):
            return
        r = option.exposedRect.toAlignedRect().intersected(self.qimage.rect())
        if r.isEmpty():
            return
        scale = painter.worldTransform().m11()
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, scale < 1.0)
        level = mip_level(scale)
        if level == 0:
            painter.drawImage(QRectF(r), self.qimage, QRectF(r))
            return
        if self.mip is None or self.mip[0] != level:
            self._update_mip(level, self.qimage.rect())
        f = float(1 << level)
        src = QRectF(r.x() / f, r.y() / f, r.width() / f, r.height() / f)
        painter.drawImage(QRectF(r), self.mip[1], src)


class PreviewItem(QGraphicsItem):
    """Shows an image (x̂₀ mid-job, or a finished result) stretched over the image rect."""

    def __init__(self):
        super().__init__()
        self.qimage: QImage | None = None
        self.array: np.ndarray | None = None
        self.target = QRectF()

    def set_image(self, arr: np.ndarray | None, target: QRectF) -> None:
        self.prepareGeometryChange()
        self.target = QRectF(target)
        self.array = None if arr is None else np.ascontiguousarray(arr)
        self.qimage = None if arr is None else wrap(self.array)
        self.update()

    def boundingRect(self) -> QRectF:
        return self.target if self.qimage is not None else QRectF()

    def hides_layers(self) -> bool:
        """An opaque x̂₀ over the whole image: the layers below need not be drawn."""
        return self.qimage is not None and self.isVisible() and self.array.shape[2] == 3

    def paint(self, painter: QPainter, option, widget=None) -> None:
        if self.qimage is not None:
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
            painter.drawImage(self.target, self.qimage)


class Canvas(QGraphicsView):
    """Emits ``picked`` with an RGB tuple when the eyedropper clicks."""

    picked = Signal(tuple)
    zoom_changed = Signal(float)
    cursor_moved = Signal(int, int)
    layer_visibility_changed = Signal(str, bool)  # "preview", "mask", … and whether shown

    def __init__(self, doc: Document, parent=None):
        super().__init__(parent)
        self.doc = doc
        self.tool = tools.COLOUR
        self.erase_target = "strokes"  # the eraser works on the last brushed layer
        self.brush = tools.Brush()
        self.stroke: tools.Stroke | None = None
        self._pan_from: QPointF | None = None
        self._space = False
        self._cursor = QPointF(-1e9, -1e9)
        self.auto_fit = True  # keep fitting on resize until the user zooms
        self.mask_tint, self.mask_alpha = MASK_TINT, MASK_ALPHA
        self.show_outline = True  # the mask's edge as a line one screen pixel wide
        self.outline = np.zeros((0, 4), np.float32)
        self._outline_timer = QTimer(self)
        self._outline_timer.setSingleShot(True)
        self._outline_timer.setInterval(OUTLINE_DELAY_MS)
        self._outline_timer.timeout.connect(self.update_outline)
        self.setScene(QGraphicsScene(self))
        self.setBackgroundBrush(QColor(48, 48, 52))
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setViewportUpdateMode(QGraphicsView.ViewportUpdateMode.MinimalViewportUpdate)
        self.setMouseTracking(True)
        # the scene reaches half an image beyond every side, so the bars show at almost any
        # zoom; always shown, they cannot come and go with a fit (which changes the
        # viewport, which refits: a loop seen at some window sizes)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOn)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOn)
        self.layers = {name: LayerItem(name) for name in ("image", "strokes", "mask")}
        for z, item in enumerate(self.layers.values()):
            item.setZValue(z)
            self.scene().addItem(item)
        self.preview = PreviewItem()
        self.preview.setZValue(10)
        self.scene().addItem(self.preview)
        # over the x̂₀ preview: the local-blend mask as it forms, a word's attention map
        self.mask_preview = PreviewItem()
        self.mask_preview.setZValue(11)
        self.heat = PreviewItem()
        self.heat.setZValue(12)
        for item in (self.mask_preview, self.heat):
            self.scene().addItem(item)
        for item in self.layers.values():
            item.cover = self.preview
        doc.reset.connect(self._on_reset)
        doc.layer_changed.connect(self._on_layer_changed)
        self._on_reset()

    # ---- document ----------------------------------------------------------------------

    def _on_reset(self) -> None:
        self.cancel_stroke()
        for name, item in self.layers.items():
            item.set_array(self.doc.layer(name))
        self._apply_mask_colours()
        self.update_outline()
        for item in (self.preview, self.mask_preview, self.heat):
            item.set_image(None, QRectF())
        h, w = self.doc.size
        self.scene().setSceneRect(QRectF(-w * 0.5, -h * 0.5, w * 2.0, h * 2.0))
        self.auto_fit = True
        self.fit()

    def _on_layer_changed(self, name: str, rect: QRect) -> None:
        item = self.layers[name]
        if item.array is not self.doc.layer(name):
            item.set_array(self.doc.layer(name))
            if name == "mask":
                self._apply_mask_colours()
        item.refresh(rect)
        if name == "mask":
            self._outline_timer.start()  # traced once the mask stops changing

    def set_layer_visible(self, name: str, visible: bool) -> None:
        item = self.preview if name == "preview" else self.layers[name]
        if item.isVisible() != visible:
            item.setVisible(visible)
            if name == "mask":
                self.viewport().update()  # the outline goes with the mask
            self.layer_visibility_changed.emit(name, visible)

    def show_preview(self, arr: np.ndarray | None, box=None) -> None:
        """Show ``arr`` over the image, or over ``box`` (y0, x0, y1, x1) of it."""
        h, w = self.doc.size
        y0, x0, y1, x1 = box or (0, 0, h, w)
        self.preview.set_image(arr, QRectF(x0, y0, x1 - x0, y1 - y0))

    # ---- the mask's look --------------------------------------------------------------

    def set_mask_style(self, tint=None, alpha: float | None = None, outline=None) -> None:
        """The mask overlay's colour (RGB), opacity (0-1) and whether its outline shows."""
        if tint is not None:
            self.mask_tint = tuple(int(c) for c in tint)
        if alpha is not None:
            self.mask_alpha = float(min(max(alpha, 0.0), 1.0))
        if outline is not None:
            self.show_outline = bool(outline)
        self._apply_mask_colours()
        self.viewport().update()

    def _apply_mask_colours(self) -> None:
        item = self.layers["mask"]
        if item.qimage is not None:
            item.qimage.setColorTable(mask_colours(self.mask_tint, self.mask_alpha))
            item.mip = None  # the zoomed-out copy has the old colours
            item.update()

    def update_outline(self) -> None:
        self._outline_timer.stop()
        self.outline = mask_edges(self.doc.mask)
        self.viewport().update()

    def _overlay(self, m: np.ndarray) -> np.ndarray:
        """A float map in [0, 1] upsampled (bilinear) towards the document's shape, at most
        ``OVERLAY_SIDE`` on its long side; the item stretches it over the image."""
        h, w = self.doc.size
        f = min(1.0, OVERLAY_SIDE / max(h, w))
        hw = (max(1, round(h * f)), max(1, round(w * f)))
        return imageops.resize(np.clip(np.asarray(m, np.float32), 0, 1), hw)

    def _show_tinted(self, item, m: np.ndarray | None, tint, alpha: float) -> None:
        """A float map in [0, 1] (any size) as ``tint`` at ``alpha`` × its value, stretched
        over the image in ``item`` (None: hide)."""
        if m is None:
            item.set_image(None, QRectF())
            item.hide()
            return
        a = self._overlay(m)
        rgba = np.empty(a.shape + (4,), np.uint8)
        rgba[..., :3] = tint
        rgba[..., 3] = (a * 255 * alpha).round().astype(np.uint8)
        h, w = self.doc.size
        item.set_image(rgba, QRectF(0, 0, w, h))
        item.show()

    def show_mask_preview(self, m: np.ndarray | None) -> None:
        """Show a forming mask tinted like the mask layer, over the image; a preview only,
        the document's mask is not touched (None: hide)."""
        self._show_tinted(self.mask_preview, m, self.mask_tint, self.mask_alpha)

    def show_heat(self, m: np.ndarray | None) -> None:
        """Show a word's attention map as a tinted overlay over the image (None: hide)."""
        self._show_tinted(self.heat, m, HEAT_TINT, HEAT_ALPHA)

    # ---- zoom -------------------------------------------------------------------------

    @property
    def zoom(self) -> float:
        return self.transform().m11()

    def set_zoom(self, z: float, auto: bool = False) -> None:
        self.auto_fit = auto
        z = min(max(z, 0.02), 64.0)
        self.setTransform(QTransform.fromScale(z, z))
        self.zoom_changed.emit(z)

    def fit(self) -> None:
        h, w = self.doc.size
        vp = self.viewport().rect()
        if vp.width() < 10 or vp.height() < 10:
            return
        self.set_zoom(min((vp.width() - 16) / w, (vp.height() - 16) / h), auto=True)
        self.centerOn(w / 2, h / 2)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        if self.auto_fit:
            self.fit()

    def actual_size(self) -> None:
        self.set_zoom(1.0)

    def wheelEvent(self, event) -> None:
        if event.angleDelta().y():
            self.zoom_at(1.25 if event.angleDelta().y() > 0 else 0.8, event.position())

    def zoom_at(self, factor: float, pos: QPointF) -> None:
        """Zoom by ``factor`` keeping the scene point under viewport point ``pos`` in place.
        (AnchorUnderMouse reads the global cursor, which synthetic and tablet events lack.)"""
        anchor = self.mapToScene(pos.toPoint())
        self.set_zoom(self.zoom * factor)
        d = self.mapFromScene(anchor) - pos.toPoint()
        self.horizontalScrollBar().setValue(self.horizontalScrollBar().value() + d.x())
        self.verticalScrollBar().setValue(self.verticalScrollBar().value() + d.y())

    # ---- mouse ------------------------------------------------------------------------

    def image_pos(self, event) -> QPointF:
        return self.mapToScene(event.position().toPoint())

    def mousePressEvent(self, event) -> None:
        if event.button() == Qt.MouseButton.MiddleButton or (
            self._space and event.button() == Qt.MouseButton.LeftButton
        ):
            self._pan_from = event.position()
            self.viewport().setCursor(Qt.CursorShape.ClosedHandCursor)
            return
        if event.button() != Qt.MouseButton.LeftButton:
            return
        p = self.image_pos(event)
        if self.tool == tools.EYEDROPPER or event.modifiers() & Qt.KeyboardModifier.AltModifier:
            colour = tools.pick_colour(self.doc, p.x(), p.y())
            if colour is not None:
                self.picked.emit(colour)
            return
        layer, erase = {
            tools.COLOUR: ("strokes", False),
            tools.MASK: ("mask", False),
            tools.ERASER: (self.erase_target, True),
        }[self.tool]
        self.stroke = tools.Stroke(self.doc, layer, self.brush, erase)
        self.stroke.begin(p.x(), p.y())

    def mouseMoveEvent(self, event) -> None:
        if self._pan_from is not None:
            d = event.position() - self._pan_from
            self._pan_from = event.position()
            self.horizontalScrollBar().setValue(self.horizontalScrollBar().value() - int(d.x()))
            self.verticalScrollBar().setValue(self.verticalScrollBar().value() - int(d.y()))
            return
        p = self.image_pos(event)
        self._update_cursor(p)
        self.cursor_moved.emit(int(p.x()), int(p.y()))
        if self.stroke is not None:
            self.stroke.move(p.x(), p.y())

    def mouseReleaseEvent(self, event) -> None:
        if self._pan_from is not None:
            self._pan_from = None
            self.viewport().unsetCursor()
            return
        if self.stroke is not None and event.button() == Qt.MouseButton.LeftButton:
            stroke, self.stroke = self.stroke, None
            stroke.end()

    def cancel_stroke(self) -> None:
        if self.stroke is not None:
            stroke, self.stroke = self.stroke, None
            stroke.end()

    def keyPressEvent(self, event) -> None:
        if event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space = True
            self.viewport().setCursor(Qt.CursorShape.OpenHandCursor)
            return
        super().keyPressEvent(event)

    def keyReleaseEvent(self, event) -> None:
        if event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space = False
            self.viewport().unsetCursor()
            return
        super().keyReleaseEvent(event)

    # ---- brush outline ----------------------------------------------------------------

    def _update_cursor(self, p: QPointF) -> None:
        r = self.brush.size / 2 + 2
        old = self._cursor
        self._cursor = p
        for c in (old, p):
            self.scene().update(QRectF(c.x() - r, c.y() - r, 2 * r, 2 * r))

    def _draw_outline(self, painter: QPainter, rect: QRectF) -> None:
        """The mask's edge, one screen pixel wide at any zoom: white with black dashes."""
        lines = self.outline
        if not self.show_outline or not len(lines) or not self.layers["mask"].isVisible():
            return
        x0, y0, x1, y1 = rect.left(), rect.top(), rect.right(), rect.bottom()
        near = (
            (np.maximum(lines[:, 0], lines[:, 2]) >= x0)
            & (np.minimum(lines[:, 0], lines[:, 2]) <= x1)
            & (np.maximum(lines[:, 1], lines[:, 3]) >= y0)
            & (np.minimum(lines[:, 1], lines[:, 3]) <= y1)
        )
        segments = [QLineF(*map(float, row)) for row in lines[near]]
        if not segments:
            return
        pen = QPen(QColor(255, 255, 255), 0)
        painter.setPen(pen)
        painter.drawLines(segments)
        pen.setColor(QColor(0, 0, 0))
        pen.setStyle(Qt.PenStyle.DashLine)
        painter.setPen(pen)
        painter.drawLines(segments)

    def drawForeground(self, painter: QPainter, rect: QRectF) -> None:
        self._draw_outline(painter, rect)
        if self.tool == tools.EYEDROPPER or self._pan_from is not None:
            return
        r = self.brush.size / 2
        pen = QPen(QColor(255, 255, 255, 200), 0)
        painter.setPen(pen)
        painter.drawEllipse(self._cursor, r, r)
        pen.setColor(QColor(0, 0, 0, 160))
        pen.setStyle(Qt.PenStyle.DotLine)
        painter.setPen(pen)
        painter.drawEllipse(self._cursor, r, r)

    def leaveEvent(self, event) -> None:
        self._update_cursor(QPointF(-1e9, -1e9))
        super().leaveEvent(event)
