"""A PNG bar chart of spend per day, written by hand with ``zlib`` (no plotting library).

matplotlib would add tens of megabytes and a slow import to the server for one small picture;
a bar chart is a few rectangles and a handful of digits, so it is drawn here on an RGB grid and
encoded as a standard PNG (8-bit RGB, filter 0, one IDAT chunk).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from decimal import Decimal

__all__ = ["PNG_SIGNATURE", "spend_chart_png"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
Color = tuple[int, int, int]
_WHITE: Color = (255, 255, 255)
_AXIS: Color = (120, 120, 120)
_GRID: Color = (230, 230, 230)
_BAR: Color = (54, 122, 209)
_TEXT: Color = (40, 40, 40)

# A 3x5 pixel font for the labels (digits, '$', '.', '-'); each row is 3 bits, left to right.
_FONT: dict[str, tuple[int, ...]] = {
    "0": (7, 5, 5, 5, 7), "1": (2, 6, 2, 2, 7), "2": (7, 1, 7, 4, 7), "3": (7, 1, 7, 1, 7),
    "4": (5, 5, 7, 1, 1), "5": (7, 4, 7, 1, 7), "6": (7, 4, 7, 5, 7), "7": (7, 1, 2, 2, 2),
    "8": (7, 5, 7, 5, 7), "9": (7, 5, 7, 1, 7), ".": (0, 0, 0, 0, 2), "-": (0, 0, 7, 0, 0),
    "$": (3, 6, 2, 3, 6), " ": (0, 0, 0, 0, 0),
}  # fmt: skip


class _Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = [bytearray(_WHITE * width) for _ in range(height)]

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        """Fill ``[x0, x1) x [y0, y1)``, clipped to the canvas."""
        x0, x1 = max(0, x0), min(self.width, x1)
        for y in range(max(0, y0), min(self.height, y1)):
            self.pixels[y][x0 * 3 : x1 * 3] = bytes(color) * max(0, x1 - x0)

    def text(self, x: int, y: int, text: str, color: Color = _TEXT, scale: int = 2) -> None:
        """Draw ``text`` with its top-left corner at (x, y); unknown characters are skipped."""
        for ch in text:
            for row, bits in enumerate(_FONT.get(ch, _FONT[" "])):
                for col in range(3):
                    if bits & (4 >> col):
                        px, py = x + col * scale, y + row * scale
                        self.rect(px, py, px + scale, py + scale, color)
            x += 4 * scale

    def png(self) -> bytes:
        """Encode as PNG."""
        raw = b"".join(b"\x00" + bytes(row) for row in self.pixels)  # filter type 0 per row
        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (
            PNG_SIGNATURE
            + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(raw, 9))
            + _chunk(b"IEND", b"")
        )


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _label(amount: Decimal) -> str:
    if amount == 0:
        return "$0"
    return f"${amount:,.2f}".replace(",", "") if amount >= 1 else f"${amount:.4f}".rstrip("0")


def spend_chart_png(days: Sequence[tuple[str, Decimal]], *, width: int = 640, height: int = 300) -> bytes:
    """A bar per ``(ISO date, spend)``, the tallest labelled with its amount, days labelled by number.

    An empty list or a period with no spend still gives a valid (empty) chart.
    """
    canvas = _Canvas(width, height)
    left, right, top, bottom = 70, width - 16, 20, height - 30
    peak = max((amount for _, amount in days), default=Decimal(0))
    # Horizontal grid at quarters of the peak, labelled on the left.
    for i in range(5):
        y = bottom - (bottom - top) * i // 4
        canvas.rect(left, y, right, y + 1, _GRID if i else _AXIS)
        if peak > 0:
            canvas.text(4, y - 5, _label(peak * i / 4), scale=2)
    canvas.rect(left, top, left + 1, bottom + 1, _AXIS)
    if days:
        slot = (right - left) / len(days)
        bar = max(1, int(slot * 0.7))
        for i, (day, amount) in enumerate(days):
            x = left + int(slot * i + (slot - bar) / 2)
            h = int((bottom - top) * amount / peak) if peak > 0 else 0
            canvas.rect(x, bottom - h, x + bar, bottom, _BAR)
            canvas.text(x + bar // 2 - 7, bottom + 8, day[-2:], scale=2)  # day of the month
    return canvas.png()
