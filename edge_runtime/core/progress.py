"""A one-line progress count on stderr for long runs, without a dependency (the edge install
has no tqdm). Shown only where a person watches: stderr is a terminal and there are more than
MIN_ITEMS items; logs, pipes and tests get nothing, so their output stays the results alone."""

from __future__ import annotations

import sys
import time

MIN_ITEMS = 100
INTERVAL_S = 0.25  # redraws at most this often: a fast model must not spend its time printing


class Progress:
    def __init__(self, total: int, label: str, stream=None, min_items: int = MIN_ITEMS):
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.label, self.done = total, label, 0
        self.shown = False
        self.last = 0.0
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = total > min_items and bool(isatty and isatty())

    def update(self, n: int = 1):
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last >= INTERVAL_S or self.done >= self.total:
            self.last = now
            self.stream.write(f"\r{self.label} {self.done}/{self.total} ({100 * self.done // max(self.total, 1)}%)")
            self.stream.flush()
            self.shown = True

    def close(self):
        """Erase the line, so that what follows on stderr starts clean."""
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False

    def iterate(self, items):
        try:
            for x in items:
                yield x
                self.update()
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
