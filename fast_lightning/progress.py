"""Progress reporting that suits where the output goes.

On a terminal: a live tqdm bar. Anywhere else (CI logs, ``make ... > log``): one plain line per 10% of the work
or per 30 s, whichever comes first, so a log holds a dozen readable lines instead of hundreds of carriage-return
updates. Every long loop in the package reports through :func:`progress`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

LINE_EVERY_SECONDS = 30.0
LINE_EVERY_FRACTION = 0.10


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class SparseProgress:
    """The tqdm calls the package uses (``update``, ``set_postfix_str``, ``close``, iteration), as sparse lines."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, initial: int = 0,
                 desc: str = "", unit: str = "it", file: TextIO | None = None,
                 every_seconds: float = LINE_EVERY_SECONDS, every_fraction: float = LINE_EVERY_FRACTION) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.initial = total, int(initial), int(initial)
        self.desc, self.unit, self.file = desc, unit, file
        self.every_seconds, self.every_fraction = every_seconds, every_fraction
        self.start = self._last_time = time.monotonic()
        self._next_fraction = every_fraction
        if total:
            while self._next_fraction <= self.n / total:
                self._next_fraction += every_fraction
        self.postfix = ""
        self.closed = False

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    def _line(self, final: bool = False) -> str:
        elapsed = time.monotonic() - self.start
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        eta = ""
        if self.total and rate > 0 and not final:
            eta = f", ETA {(self.total - self.n) / rate / 60:.1f} min"
        post = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {done} {self.unit}{pct}, {rate:.2f} {self.unit}/s, {elapsed / 60:.1f} min{eta}{post}"

    def _emit(self, final: bool = False) -> None:
        print(self._line(final), file=self.file or sys.stderr, flush=True)
        self._last_time = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        now = time.monotonic()
        due = now - self._last_time >= self.every_seconds
        if self.total:
            while self.n / self.total >= self._next_fraction - 1e-9:
                self._next_fraction += self.every_fraction
                due = True
        if due and not (self.total and self.n >= self.total):
            self._emit()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.n > self.initial:
                self._emit(final=True)


def progress(iterable: Iterable | None = None, *, disable: bool = False, **kwargs: Any):
    """A tqdm bar on a terminal, :class:`SparseProgress` lines elsewhere, or the bare iterable when disabled."""
    if disable:
        return iterable if iterable is not None else SparseProgress(total=kwargs.get("total"), file=_NullFile())
    if is_terminal():
        from tqdm.auto import tqdm

        return tqdm(iterable, dynamic_ncols=True, **kwargs)
    kwargs = {k: v for k, v in kwargs.items() if k in ("total", "initial", "desc", "unit")}
    return SparseProgress(iterable, **kwargs)


class _NullFile:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass
