"""Progress lines for long work outside Lightning's loops (selector fitting, test scoring, profiling), through
the ``ldrop.progress`` logger.

Like Lightning's logger, ``ldrop.progress`` gets a stderr handler when the application configured no logging.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from types import TracebackType

__all__ = ["Phase", "heartbeat", "note"]

log = logging.getLogger("ldrop.progress")
#: The phases open now, innermost last: :func:`heartbeat` speaks for the innermost.
_open: list[Phase] = []


class _StderrHandler(logging.StreamHandler):
    """A stream handler writing to the *current* ``sys.stderr`` (test runners and notebooks replace it)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the current stderr is always used
        pass

    def emit(self, record: logging.LogRecord) -> None:
        # Like Lightning's own lines, only the process of global rank 0 speaks (its rank, where Lightning is loaded:
        # the ONNX runtime runs without it); with LDROP_DEBUG=1 every rank does, its rank first.
        ranks = sys.modules.get("lightning.fabric.utilities.rank_zero")
        if (rank := getattr(getattr(ranks, "rank_zero_only", None), "rank", 0)) != 0:
            if os.environ.get("LDROP_DEBUG", "0") in ("", "0"):
                return
            record = logging.makeLogRecord({**record.__dict__, "msg": f"[rank {rank}] {record.getMessage()}", "args": ()})
        tqdm = sys.modules.get("tqdm.std")  # live tqdm bars (Lightning's default) are cleared, then redrawn
        if tqdm is None:
            super().emit(record)
            return
        with tqdm.tqdm.external_write_mode(file=self.stream):
            super().emit(record)


def _make_visible() -> None:
    """INFO lines of ``ldrop.progress`` reach stderr unless the application configured logging itself."""
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)
    if not log.hasHandlers():  # no handler on it, on "ldrop" or on the root logger
        log.addHandler(_StderrHandler())
        log.propagate = False


def _plural(unit: str, count: int | None) -> str:
    if count == 1:
        return unit
    return unit + ("es" if unit.endswith(("ch", "sh", "s", "x")) else "s")


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


class Phase:
    """Lines for one long phase: a start line, throttled step lines and an end line, each with elapsed time.

    ``with Phase("greedy subset search", total=11, unit="layer removal") as phase:`` then
    ``phase.step(detail)`` per step and ``phase.done(summary)``; a step line shows at most every ``interval``
    seconds. A ``quiet`` phase says nothing (no start line) until its first step or beat line, then speaks as
    any phase: a fast one is silent.
    """

    def __init__(self, title: str, total: int | None = None, unit: str = "step", interval: float = 10.0,
                 quiet: bool = False) -> None:
        self.title = title
        self.quiet = quiet
        self.total = total
        self.unit = unit
        self.interval = float(interval)
        self.count = 0
        self.summary = ""
        self.start = self._last = 0.0

    def __enter__(self) -> Phase:
        _make_visible()
        self.start = self._last = time.perf_counter()
        of = f" ({self.total} {_plural(self.unit, self.total)})" if self.total is not None else ""
        if not self.quiet:
            log.info("%s%s ...", self.title, of)
        _open.append(self)
        return self

    def beat(self) -> None:
        """A line if ``interval`` has passed since the last one, without a step: work inside one long step."""
        now = time.perf_counter()
        if now - self._last >= self.interval:
            self._last, self.quiet = now, False
            done = f"{self.count}/{self.total}" if self.total is not None else str(self.count)
            log.info("%s: %s %s, %s, still working", self.title, done, _plural(self.unit, self.count),
                     _seconds(now - self.start))

    def step(self, detail: str = "", steps: int = 1) -> None:
        """``steps`` more steps done; a line if ``interval`` has passed since the last one (or this is the last)."""
        self.count += steps
        now = time.perf_counter()
        last = self.total is not None and self.count >= self.total and not self.quiet
        if now - self._last < self.interval and not last:
            return
        self._last, self.quiet = now, False
        done = f"{self.count}/{self.total}" if self.total is not None else str(self.count)
        log.info("%s: %s %s, %s%s", self.title, done, _plural(self.unit, self.count), _seconds(now - self.start),
                 f" ({detail})" if detail else "")

    def done(self, summary: str) -> None:
        """What the phase found, shown in its end line."""
        self.summary = summary

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self not in _open:  # ended already (a callback's phase ends at the epoch's end or on an exception)
            return
        _open.remove(self)
        if self.quiet:
            return
        elapsed = _seconds(time.perf_counter() - self.start)
        if kind is None:
            log.info("%s: done in %s%s", self.title, elapsed, f": {self.summary}" if self.summary else "")
        else:
            log.info("%s: stopped after %s by %s", self.title, elapsed, kind.__name__)


def heartbeat() -> None:
    """Inside a loop of the innermost open :class:`Phase` (a validation pass within one of its steps): a line
    if its ``interval`` has passed, so a step of many minutes is not minutes of silence."""
    if _open:
        _open[-1].beat()


def note(message: str) -> None:
    """One progress line outside a :class:`Phase` (a summary, a child process still at work)."""
    _make_visible()
    log.info("%s", message)
