"""A one-line progress display on stderr (redrawn with \\r; silent when not a terminal)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 24
REDRAW_EVERY = 0.2  # seconds: often enough to watch, rarely enough to cost nothing


def bar(fraction: float, width: int = WIDTH) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


class Progress:
    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self._last_draw = 0.0
        self._width = 0

    def show(self, fraction: float, detail: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last_draw < REDRAW_EVERY):
            return
        self._last_draw = now
        line = f"{self.label} {bar(fraction)} {detail}"
        # Pad over the previous line's leftovers.
        self.stream.write("\r" + line.ljust(self._width))
        self.stream.flush()
        self._width = len(line)

    def close(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
        self._width = 0
