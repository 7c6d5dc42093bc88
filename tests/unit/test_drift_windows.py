"""sentimentops.steps.drift.windows: windows close by count or by time, whichever comes first; a window is judged
only on at least min_window records, and one that is not judged is no evidence either way. The clock is injected,
so the table below drives time without sleeping."""
from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from sentimentops.steps.core.client import free_port
from sentimentops.steps.core.config import load_settings
from sentimentops.steps.core.processes import spawn, stop, wait_for
from sentimentops.steps.core.psi import build_reference, window_psi
from sentimentops.steps.drift.cli import DriftSettings
from sentimentops.steps.drift.records import parse_records
from sentimentops.steps.drift.windows import MIN_WINDOW, WINDOW, WINDOW_SECONDS, DriftMonitor
from tests.unit.test_drift import records


@pytest.fixture(scope="module")
def reference():
    """The reference of tests/unit/test_drift.py: 5,000 synthetic records with the predictor's fields."""
    return build_reference(parse_records(records(np.random.default_rng(1), 5000))[0], source="unit")


DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def monitor_with_clock(reference, **kwargs) -> tuple[DriftMonitor, Clock, list]:
    clock, extended = Clock(), []
    monitor = DriftMonitor(reference, clock=clock, on_extend=lambda n, s: extended.append((n, s)), **kwargs)
    return monitor, clock, extended


# (case, monitor settings, steps: (time, records to add; 0 = only the clock moved),
#  closed windows: (closed_by, records, seconds), records still pending, windows reported as extended)
CASES = [
    ("a full window closes at once", {}, [(0, 500)], [("count", 500, 0)], 0, 0),
    ("full windows, the rest waits for its time", {}, [(0, 1200), (299, 0), (300, 0)],
     [("count", 500, 0), ("count", 500, 0), ("time", 200, 300)], 0, 0),
    ("by time, counted from the window's first record", {}, [(0, 100), (200, 150), (299, 0), (300, 0)],
     [("time", 250, 300)], 0, 0),
    ("count first when traffic is fast", {}, [(0, 300), (100, 200)], [("count", 500, 100)], 0, 0),
    ("the next window starts with its own first record", {}, [(0, 600), (250, 0), (350, 100), (550, 0)],
     [("count", 500, 0), ("time", 200, 350)], 0, 0),
    ("a short window stays open until its min_window-th record", {},
     [(0, 50), (300, 0), (400, 0), (500, 200), (799, 0), (800, 0)],
     [("time", 200, 500)], 50, 2),
    ("time is up: the window takes only what it lacks, the rest fills the next", {}, [(0, 150), (300, 1000)],
     [("time", 200, 300), ("count", 500, 0)], 450, 0),
    ("window_seconds 0: by count only", {"window_seconds": 0}, [(0, 250), (10**6, 0)], [], 250, 0),
    ("min_window above window is window", {"window": 100, "min_window": 200},
     [(0, 50), (300, 0), (301, 60)], [("time", 100, 301)], 10, 1),
    ("min_window below window: judged at min_window", {"min_window": 20}, [(0, 20), (300, 0)],
     [("time", 20, 300)], 0, 0),
]


@pytest.mark.parametrize(("case", "settings", "steps", "closed", "pending", "extended"), CASES,
                         ids=[c[0] for c in CASES])
def test_windows_close_by_count_or_time(reference, case, settings, steps, closed, pending, extended):
    monitor, clock, reported = monitor_with_clock(reference, **settings)
    lines = records(np.random.default_rng(10), sum(n for _, n in steps))
    results, used = [], 0
    for at, n in steps:
        clock.now = float(at)
        results += monitor.add(lines[used:used + n])
        used += n
    assert [(r.closed_by, r.records, r.seconds) for r in results] == closed
    assert all(r.judged for r in results) and [r.index for r in results] == list(range(len(results)))
    assert monitor.pending == pending and len(reported) == extended


def test_an_extended_window_is_reported_once_with_its_age(reference):
    monitor, clock, reported = monitor_with_clock(reference)
    monitor.add(records(np.random.default_rng(11), 30))
    for clock.now in (299.0, 300.0, 301.0, 900.0):
        assert monitor.add([]) == []
    assert reported == [(30, 300.0)] and monitor.age() == 900.0


def broken(n: int) -> list[str]:
    return ['{"input_tokens": "not a number"}'] * n


def test_a_window_of_too_few_valid_records_is_not_judged(reference):
    """Lines that are not prediction records are skipped: a full window of mostly broken lines is reported as
    too_few, with no PSI (before, it scored PSI 0 for every feature: a clean window that reset the streak)."""
    seen = []
    monitor, _, _ = monitor_with_clock(reference, on_window=seen.append)
    (result,) = monitor.add(records(np.random.default_rng(12), 150) + broken(350))
    assert (result.outcome, result.records, result.psi, result.judged) == ("too_few", 150, {}, False)
    assert seen == [result] and monitor.windows == 1


def test_untrusted_windows_neither_extend_nor_break_a_drifted_streak(reference):
    rng = np.random.default_rng(13)
    fired = []
    monitor, clock, _ = monitor_with_clock(reference, persist=2, on_trigger=lambda r, w: fired.append((r, w.index)))
    drifted = monitor.add(records(rng, 500, length_mean=25))
    assert drifted[0].drifted and monitor.streak == 1
    assert monitor.add(records(rng, 100) + broken(400))[0].outcome == "too_few"  # in between: no evidence
    assert monitor.streak == 1 and not fired
    clock.now = 300.0
    monitor.add(records(rng, 30, length_mean=25))  # slow traffic: this window waits for min_window ...
    clock.now = 900.0
    assert monitor.add([]) == [] and monitor.streak == 1
    (second,) = monitor.add(records(rng, 170, length_mean=25))  # ... and is judged at its 200th record
    assert (second.closed_by, second.records, second.index) == ("time", 200, 2)
    assert [i for _, i in fired] == [2] and monitor.streak == 2
    assert "for 2 window(s) of 200 in 600 s (model 3)" in fired[0][0]
    # an untrusted window does not re-arm the trigger either: only a clean judged window does
    monitor.add(broken(500))
    monitor.add(records(rng, 500, length_mean=25))
    assert len(fired) == 1
    monitor.add(records(rng, 500))
    assert monitor.streak == 0 and monitor.armed
    monitor.add(records(rng, 1000, length_mean=25))
    assert len(fired) == 2 and fired[1][0].endswith("for 2 window(s) of 500 (model 3)")


def test_no_false_alarm_at_the_minimum_window(reference):
    """MIN_WINDOW is where PSI noise stops crossing the threshold on windows drawn from the reference itself
    (windows.py: 11% of windows of 100 records crossed 0.2, none of 2,000 of 200)."""
    rng = np.random.default_rng(14)
    worst = [max(window_psi(reference, parse_records(records(rng, MIN_WINDOW))[0]).values()) for _ in range(200)]
    assert max(worst) < 0.2
    small = [max(window_psi(reference, parse_records(records(rng, 100))[0]).values()) for _ in range(200)]
    assert max(small) > 0.2  # half the size is not safe: the gate is not stricter than it needs to be


def test_settings_defaults_are_the_windows_and_every_profile_keeps_them():
    for profile in ("local", "gke"):
        s = load_settings(DriftSettings, env={"SENTIMENTOPS_PROFILE": profile})
        assert (s.window, s.window_seconds, s.min_window) == (WINDOW, WINDOW_SECONDS, MIN_WINDOW) == (500, 300, 200)
    s = load_settings(DriftSettings, env={"SENTIMENTOPS_DRIFT_WINDOW_SECONDS": "0", "SENTIMENTOPS_DRIFT_MIN_WINDOW": "50"})
    assert (s.window_seconds, s.min_window) == (0, 50)


def scrape(port: int) -> dict[str, float]:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return {}
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("sentiment_drift")}


def scraped(port: int, name: str, value: float):
    """A check for wait_for: the scraped metrics once `name` reads `value`."""
    def check() -> dict[str, float] | None:
        metrics = scrape(port)
        return metrics if metrics.get(name) == value else None
    return check


@pytest.mark.slow  # a server process: left out of `make test-fast`
def test_watch_closes_slow_windows_by_time_and_waits_for_min_window(tmp_path, reference):
    """A real `drift watch` fed a records file: 150 records close by time (1 s) and are judged; 40 are too few when
    their second is up, so the window waits (reported), and closes at its 100th record."""
    ref_path, log = tmp_path / "drift_reference.json", tmp_path / "predictions.jsonl"
    reference.write(ref_path)
    rng = np.random.default_rng(15)
    log.write_text("\n".join(records(rng, 150, length_mean=25)) + "\n")
    port, out_path = free_port(), tmp_path / "watch.log"
    judged = 'sentiment_drift_windows_total{outcome="judged"}'
    with out_path.open("w") as out:
        proc = spawn([sys.executable, "-m", "sentimentops.steps.cli", "drift", "watch", "--records", str(log),
                      "--reference", str(ref_path), "--window", "500", "--window-seconds", "1", "--min-window", "100",
                      "--persist", "1", "--port", str(port), "--poll-seconds", "0.1", "--max-seconds", "120"],
                     stdout=out, stderr=subprocess.STDOUT)
    try:
        m = wait_for(scraped(port, judged, 1), 60, "the first window closing by time", [proc])
        assert m["sentiment_drift_last_window_records"] == 150 and m["sentiment_drift_last_window_seconds"] >= 1
        assert m['sentiment_drift_psi{feature="input_tokens"}'] > 0.2
        assert m['sentiment_drift_triggers_total{outcome="no_webhook"}'] == 1
        with log.open("a") as fh:
            fh.write("\n".join(records(rng, 40)) + "\n")
        m = wait_for(scraped(port, "sentiment_drift_windows_extended_total", 1), 60, "the short window reported",
                     [proc])
        assert m[judged] == 1 and m["sentiment_drift_window_records"] == 40
        with log.open("a") as fh:
            fh.write("\n".join(records(rng, 60)) + "\n")
        m = wait_for(scraped(port, judged, 2), 60, "the short window judged at its 100th record", [proc])
        assert m["sentiment_drift_last_window_records"] == 100
        assert m['sentiment_drift_windows_total{outcome="too_few"}'] == 0
        assert m['sentiment_drift_psi{feature="input_tokens"}'] < 0.2  # the unshifted records: a clean window
        documented = re.findall(r"^\| `(sentiment_drift_[a-z_]+)` \|", DOCS.read_text(), flags=re.MULTILINE)
        assert len(documented) >= 7 and all(any(re.match(rf"{n}[{{]|{n}$", k) for k in m) for n in documented), (
            documented, sorted(m))
    finally:
        stop(proc, grace_s=30)
    out = out_path.read_text()
    assert out.count('"closed_by": "time"') == 2 and "it stays open until it holds them" in out, out
