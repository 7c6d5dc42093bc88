"""Tumbling drift windows that close by count or by time, and the persistence rule that calls for a retrain.

A window closes when it holds `window` records, or when `window_seconds` have passed since its first record arrived,
whichever comes first: under slow traffic a count-only window of 500 filled for hours while drift went unjudged.
A window is judged only on at least `min_window` records: PSI of a window of n records drawn from the reference
itself is about (bins - 1) / n (core.psi), and its tail is what raises false alarms. Measured on synthetic records
against a 5,000-row reference (2,000 no-drift windows per size, the largest PSI over the four features; docs/
monitoring.md): share above the 0.2 threshold 85% at 50 records, 11% at 100, 0.6% at 150, none at 200 (99th
percentile 0.14), none at 500 (0.06). Hence MIN_WINDOW = 200.

A window whose time ran out before it held `min_window` records is not closed: it is reported once (`on_extend`)
and stays open until its `min_window`-th record, when it is judged. Closing it anyway would throw away evidence:
traffic under `min_window` records per `window_seconds` would then never be judged at all, which is worse than the
count-only windows this replaces. A closed window whose lines held fewer than `min_window` valid prediction records
(broken lines are skipped by records.parse_records) is reported as `too_few` and is no evidence either way: it
neither extends nor breaks a drifted streak, and does not re-arm the trigger.

Time comes from an injected clock (`time.monotonic` in `drift watch`; a counter in the unit tests), and is the time
a record was *read*, not its `ts`: the predictor's and the monitor's clocks need not agree, and a backlog read at
start-up closes by count (its records arrive together).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sentimentops.steps.core.psi import DriftReference, window_psi
from sentimentops.steps.drift.records import parse_records

WINDOW = 500  # records: PSI noise 9/500 ~ 0.02, a tenth of the threshold (benchmarks/README.md: max 0.04 on IMDB)
# The DataDrift alert waits 5 minutes (`for: 5m`) and the cluster scrapes every 30 s: a judgment at least every 5
# minutes keeps the alert's delay the dominant one while traffic reaches MIN_WINDOW / WINDOW_SECONDS = 0.67/s.
WINDOW_SECONDS = 300.0
MIN_WINDOW = 200

JUDGED, TOO_FEW = "judged", "too_few"
OUTCOMES = (JUDGED, TOO_FEW)


@dataclass
class WindowResult:
    index: int
    records: int  # valid prediction records (broken lines are not counted)
    psi: dict[str, float]  # empty when the window was not judged
    drifted: list[str]
    model_versions: list[str]
    closed_by: str = "count"  # count | time
    seconds: float = 0.0  # from the window's first record to its close
    outcome: str = JUDGED  # judged | too_few

    @property
    def judged(self) -> bool:
        return self.outcome == JUDGED


@dataclass
class DriftMonitor:
    """Windows over records; decides when drift has persisted long enough to call for retraining."""

    reference: DriftReference
    window: int = WINDOW
    threshold: float = 0.2
    persist: int = 2
    on_window: Callable[[WindowResult], None] | None = None
    on_trigger: Callable[[str, WindowResult], None] | None = None
    window_seconds: float = WINDOW_SECONDS  # 0: close by count only
    min_window: int = MIN_WINDOW  # above `window` it is `window`: a full window is always judged
    on_extend: Callable[[int, float], None] | None = None  # (records, seconds) of a window kept open
    clock: Callable[[], float] = time.monotonic
    windows: int = 0
    streak: int = 0
    armed: bool = True
    triggers: list[str] = field(default_factory=list)
    _lines: list = field(default_factory=list)
    _started: float | None = None  # clock time of the open window's first record
    _extended: bool = False  # the open window's time ran out and that was reported

    @property
    def min_records(self) -> int:
        return min(self.min_window, self.window)

    @property
    def pending(self) -> int:
        return len(self._lines)

    def age(self, now: float | None = None) -> float:
        """Seconds since the open window's first record (0 when none is open)."""
        return 0.0 if self._started is None else (self.clock() if now is None else now) - self._started

    def _due(self, now: float) -> bool:
        return bool(self.window_seconds) and self._started is not None and now - self._started >= self.window_seconds

    def add(self, lines: Sequence[bytes | str]) -> list[WindowResult]:
        """Feeds the lines read now (none: only the clock moved) and returns the windows that closed."""
        now = self.clock()
        done: list[WindowResult] = []
        start = 0
        if self._due(now):
            # Its time is up: it closes once it holds min_records, taking from these lines only what it lacks.
            start = min(len(lines), max(0, self.min_records - len(self._lines)))
            self._lines.extend(lines[:start])
            if len(self._lines) >= self.min_records:
                done.append(self._close(self._lines, "time", now))
                self._lines, self._started, self._extended = [], None, False
            elif not self._extended:
                self._extended = True
                if self.on_extend:
                    self.on_extend(len(self._lines), self.age(now))
        if start >= len(lines):
            return done
        if not self._lines:
            self._started = now
        self._lines.extend(lines[start:])
        cut = 0
        # Walk by offset and cut the list once: slicing the rest off per window is quadratic on a big backlog.
        while len(self._lines) - cut >= self.window:
            done.append(self._close(self._lines[cut:cut + self.window], "count", now))
            cut += self.window
        if cut:
            del self._lines[:cut]
            self._started, self._extended = (now if self._lines else None), False
        return done

    def _close(self, lines: Sequence[bytes | str], closed_by: str, now: float) -> WindowResult:
        features, versions = parse_records(lines)
        seconds = self.age(now)
        if len(features) < self.min_records:  # broken lines: too few records to trust; no evidence either way
            result = WindowResult(self.windows, len(features), {}, [], sorted(set(versions)), closed_by, seconds,
                                  TOO_FEW)
            self.windows += 1
            if self.on_window:
                self.on_window(result)
            return result
        psi = window_psi(self.reference, features)
        drifted = sorted((f for f, v in psi.items() if v > self.threshold), key=lambda f: -psi[f])
        result = WindowResult(self.windows, len(features), psi, drifted, sorted(set(versions)), closed_by, seconds)
        self.windows += 1
        self.streak = self.streak + 1 if drifted else 0
        if not drifted:
            self.armed = True  # a clean window re-arms the trigger
        if self.on_window:
            self.on_window(result)
        if drifted and self.streak >= self.persist and self.armed:
            self.armed = False
            reason = self.reason(result)
            self.triggers.append(reason)
            if self.on_trigger:
                self.on_trigger(reason, result)
        return result

    def reason(self, result: WindowResult) -> str:
        parts = ", ".join(f"{f} PSI {result.psi[f]:.2f}" for f in result.drifted)
        closed = f" in {result.seconds:.0f} s" if result.closed_by == "time" else ""
        version = f" (model {','.join(result.model_versions)})" if result.model_versions else ""
        return (f"drift: {parts} > {self.threshold:g} for {self.streak} window(s) of {result.records}{closed}"
                f"{version}")
