"""Progress that reads well in a terminal and in a log file.

On a terminal it is a tqdm bar. Anywhere else (a log file, CI, ``nohup``) carriage-return redraws would pile up
as one unreadable line, so it writes a plain line instead: a first one with the measured speed and the expected
duration once a few steps have run, then one every ``interval`` seconds, and a last one with the total time.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, TypeVar

from tqdm import tqdm

T = TypeVar("T")
ESTIMATE_AFTER_STEPS = 3  # steps timed before the first estimate (the first one is often slower: warm-up)


def format_duration(seconds: float) -> str:
    """``1 h 02 min``, ``6 min 30 s`` or ``42 s``."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def counted(count: int, noun: str) -> str:
    """``1 image``, ``4 images``, ``5 classes``."""
    if count == 1:
        return f"{count} {noun}"
    return f"{count} {noun}{'es' if noun.endswith(('s', 'x', 'ch', 'sh')) else 's'}"


class Progress:
    """A progress reporter over ``total`` steps; ``update(n, **figures)`` after each step, ``close()`` at the end.

    ``enabled=False`` reports nothing; ``stream`` (default stderr) decides between the bar and plain lines.
    """

    def __init__(self, total: int | None, desc: str, unit: str = "it", initial: int = 0, enabled: bool = True,
                 interval: float = 30.0, stream: IO[str] | None = None) -> None:
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.stream = stream or sys.stderr
        self.interval, self.done, self.initial = interval, initial, initial
        self.figures: dict[str, str] = {}
        self.terminal = enabled and self.stream.isatty()
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True) \
            if self.terminal else None
        self.start = self.last_line = time.perf_counter()
        self.estimated = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1, **figures) -> None:
        self.done += n
        self.figures.update({key: str(value) for key, value in figures.items()})
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            if figures:
                self.bar.set_postfix(self.figures, refresh=False)
        now = time.perf_counter()
        if not self.estimated and self.done - self.initial >= ESTIMATE_AFTER_STEPS and self.total:
            self.estimated = True
            self._write(f"{self.desc}: {self._rate(now)}; expected duration "
                        f"{format_duration(self._remaining(now) + now - self.start)}")
            self.last_line = now
        elif self.bar is None and now - self.last_line >= self.interval:
            self._write(self._status(now))
            self.last_line = now

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self.enabled = False
            return
        now = time.perf_counter()
        if self.done > self.initial:
            self._write(f"{self.desc}: {self.done}{'/' + str(self.total) if self.total else ''} {self._units()} "
                        f"in {format_duration(now - self.start)} ({self._rate(now)})" + self._figures())
        self.enabled = False

    def _status(self, now: float) -> str:
        if self.total:
            head = f"{self.done}/{self.total} {self._units()} ({100 * self.done / self.total:.0f}%)"
            tail = f", ETA {format_duration(self._remaining(now))}"
        else:
            head, tail = f"{self.done} {self._units()}", ""
        return f"{self.desc}: {head}, {self._rate(now)}{tail}" + self._figures()

    def _units(self) -> str:
        """The unit after the count of steps, plural unless there is one step in all ("12/12 images", "1/1 image");
        tqdm's "it" stays as it is."""
        return self.unit if self.unit == "it" or (self.total or self.done) == 1 else f"{self.unit}s"

    def _figures(self) -> str:
        return "".join(f", {key} {value}" for key, value in self.figures.items())

    def _per_second(self, now: float) -> float:
        return (self.done - self.initial) / max(now - self.start, 1e-9)

    def _rate(self, now: float) -> str:
        per_second = self._per_second(now)
        return f"{per_second:.2f} {self.unit}/s" if per_second >= 1 else f"{1 / per_second:.2f} s/{self.unit}"

    def _remaining(self, now: float) -> float:
        return max(self.total - self.done, 0) / self._per_second(now)

    def _write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it", enabled: bool = True,
             interval: float = 30.0, stream: IO[str] | None = None) -> Iterator[T]:
    """Iterate ``items`` while reporting progress (see ``Progress``)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    with Progress(total, desc, unit, enabled=enabled, interval=interval, stream=stream) as reporter:
        for item in items:
            yield item
            reporter.update(1)
