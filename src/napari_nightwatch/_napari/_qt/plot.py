"""A small line plot drawn with QPainter, for spectra and loss curves.

Hand-written because the runtime dependencies carry no plotting library for Qt
(matplotlib and pyqtgraph are not among them) and the plots needed are simple: a
few curves, a log or linear y axis, labelled vertical markers.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget


class LinePlot(QWidget):
    """Curves ``(x, y)`` with optional log-y axis and vertical markers ``(x, label, rgb)``."""

    def __init__(self, parent: QWidget | None = None, log_y: bool = False, x_label: str = "", y_label: str = "") -> None:
        super().__init__(parent)
        self.setMinimumHeight(150)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.log_y = log_y
        self.x_label = x_label
        self.y_label = y_label
        self.title = ""
        self.curves: dict[str, tuple[np.ndarray, np.ndarray, tuple[int, int, int]]] = {}
        self.markers: list[tuple[float, str, tuple[int, int, int]]] = []

    def set_curve(self, name: str, x, y, rgb: tuple[int, int, int] = (230, 230, 230)) -> None:
        self.curves[name] = (np.asarray(x, float), np.asarray(y, float), rgb)
        self.update()

    def clear(self) -> None:
        self.curves.clear()
        self.markers.clear()
        self.update()

    def set_markers(self, markers: list[tuple[float, str, tuple[int, int, int]]]) -> None:
        self.markers = list(markers)
        self.update()

    def _y(self, y: np.ndarray) -> np.ndarray:
        return np.log10(np.maximum(y, 0) + 1.0) if self.log_y else y

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt name)
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.fillRect(self.rect(), QColor(20, 20, 24))
        left, right, top, bottom = 48, 8, 18 if self.title else 8, 24
        area = QRectF(left, top, max(10, self.width() - left - right), max(10, self.height() - top - bottom))
        p.setPen(QPen(QColor(120, 120, 120)))
        p.drawRect(area)
        if self.title:
            p.setPen(QColor(220, 220, 220))
            p.drawText(QRectF(left, 0, area.width(), top), Qt.AlignmentFlag.AlignLeft, self.title)
        xs = [c[0] for c in self.curves.values() if len(c[0])]
        ys = [self._y(c[1]) for c in self.curves.values() if len(c[1])]
        if not xs:
            p.end()
            return
        x0 = min(float(np.nanmin(x)) for x in xs)
        x1 = max(float(np.nanmax(x)) for x in xs)
        y0 = min(float(np.nanmin(y)) for y in ys)
        y1 = max(float(np.nanmax(y)) for y in ys)
        if not x1 > x0:
            x1 = x0 + 1.0
        if not y1 > y0:
            y1 = y0 + 1.0

        def to_px(x, y):
            return (area.left() + (x - x0) / (x1 - x0) * area.width(),
                    area.bottom() - (y - y0) / (y1 - y0) * area.height())

        # labels of neighbouring lines are staggered over four rows so they stay readable
        for i, (mx, label, rgb) in enumerate(sorted(self.markers)):
            if x0 <= mx <= x1:
                px, _ = to_px(mx, y0)
                p.setPen(QPen(QColor(*rgb), 1, Qt.PenStyle.DashLine))
                p.drawLine(QPointF(px, area.top()), QPointF(px, area.bottom()))
                p.drawText(QPointF(px + 2, area.top() + 12 + 12 * (i % 4)), label)
        for x, y, rgb in self.curves.values():
            if len(x) < 1:
                continue
            yy = self._y(y)
            path = QPainterPath()
            for i, (a, b) in enumerate(zip(x, yy, strict=False)):
                if not (np.isfinite(a) and np.isfinite(b)):
                    continue
                pt = QPointF(*to_px(a, b))
                if i == 0 or path.elementCount() == 0:
                    path.moveTo(pt)
                else:
                    path.lineTo(pt)
            p.setPen(QPen(QColor(*rgb), 1.3))
            p.drawPath(path)
        p.setPen(QColor(200, 200, 200))
        p.drawText(QPointF(area.left(), self.height() - 6), f"{x0:.3g}")
        p.drawText(QRectF(area.right() - 60, self.height() - 20, 60, 16), Qt.AlignmentFlag.AlignRight, f"{x1:.3g}")
        p.drawText(QRectF(area.left(), self.height() - 20, area.width(), 16), Qt.AlignmentFlag.AlignHCenter, self.x_label)
        top_label = f"{10 ** y1 - 1:.3g}" if self.log_y else f"{y1:.3g}"
        bot_label = f"{10 ** y0 - 1:.3g}" if self.log_y else f"{y0:.3g}"
        p.drawText(QRectF(0, area.top(), left - 4, 14), Qt.AlignmentFlag.AlignRight, top_label)
        p.drawText(QRectF(0, area.bottom() - 14, left - 4, 14), Qt.AlignmentFlag.AlignRight, bot_label)
        p.end()
