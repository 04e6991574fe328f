"""Process rates read on another thread (a scrape, the live page) while the tick appends to the same series."""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from builders import GIB, UUID0, gpu
from vramwatch.detectors.analysis import analyze
from vramwatch.detectors.config import DetectorConfig
from vramwatch.detectors.growth import Rate
from vramwatch.history import History
from vramwatch.model import ProcessKey, ProcessMeta, ProcessSample, Snapshot

MIB = 1 << 20
CONFIG = DetectorConfig(rate_report_seconds=60.0, noise_bytes=8 * MIB, min_rise_bytes=64 * MIB)
PROCESSES = 48
TICKS = 160

Rates = Mapping[tuple[ProcessKey, str], Rate]


def _snapshots() -> Iterator[Snapshot]:
    """Processes whose memory moves at most ticks (so that their rates are read from views, not computed at the
    tick): sawtooths on floors that creep, step and drop back, each a little differently."""
    rng = random.Random(12)  # noqa: S311 - reproducible workload, not secrets
    floors = [rng.randrange(1, 8) * GIB for _ in range(PROCESSES)]
    for n in range(TICKS):
        t = 1000.0 + n
        procs = []
        for pid in range(1, PROCESSES + 1):
            step = rng.choice((0, 0, 1, 2, -1)) * MIB * rng.randrange(1, 40)
            floor = floors[pid - 1] = max(GIB, floors[pid - 1] + step)
            used = floor + (rng.randrange(0, 512) * MIB if n % rng.randrange(2, 6) == 0 else 0)
            procs.append(ProcessSample(UUID0, used, ProcessMeta(pid=pid, start_time=10.0 + pid)))
        total = sum(p.used_bytes or 0 for p in procs) + 300 * MIB
        yield Snapshot(t=t, wall_time=1.7e9 + t, gpus=(gpu(used=total, total=600 * GIB),), processes=tuple(procs))


def _reference() -> list[dict[tuple[ProcessKey, str], Rate]]:
    """Each tick's rates, read at that tick on the tick's own thread (before any later append)."""
    history, out = History(window_seconds=600), []
    for snap in _snapshots():
        history.add(snap)
        out.append(dict(analyze(history, CONFIG).process_growth.items()))
    return out


@contextmanager
def _switching_often() -> Iterator[None]:
    """Threads switch every microsecond, so that a reader lands inside an append as often as it can."""
    was = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(was)


def test_rates_read_while_the_next_ticks_append_are_their_own_ticks_rates() -> None:
    """A rate read on another thread is the rate of the tick that published it, bit for bit, whether the read
    came before the next append, during it, or after it (the history's lock, then a scan of the view's points)."""
    reference = _reference()
    history = History(window_seconds=600)
    published: list[tuple[int, Rates]] = []
    added = [0]  # ticks whose append has begun
    done = threading.Event()
    reads: list[tuple[int, tuple[ProcessKey, str], Rate, bool]] = []
    failed: list[BaseException] = []
    reading = threading.Semaphore(0)

    def reader() -> None:
        try:
            read()
        except BaseException as exc:  # (an append torn under a reader raises too: IndexError)
            failed.append(exc)

    def read() -> None:
        seen = -1
        while not done.is_set() or seen < len(published) - 1:
            if not published or published[-1][0] == seen:
                continue
            n, rates = published[-1]
            seen = n
            keys = list(rates)
            if not keys:
                reading.release()
            for i, key in enumerate(keys):
                moved = added[0] > n + 1  # the next tick's append had begun when this read did
                reads.append((n, key, rates[key], moved))
                if i == 0:
                    reading.release()  # the next append may begin: it will overlap the reads that follow

    thread = threading.Thread(target=reader)
    with _switching_often():
        thread.start()
        for n, snap in enumerate(_snapshots()):
            while n and thread.is_alive() and not reading.acquire(timeout=0.05):
                pass
            added[0] = n + 1
            history.add(snap)
            published.append((n, analyze(history, CONFIG).process_growth))
        done.set()
        thread.join()
    assert not failed, failed
    wrong = [(n, key) for n, key, rate, _ in reads if rate != reference[n][key]]
    assert not wrong, f"{len(wrong)} of {len(reads)} rates differ, first {wrong[0]}"
    moved = sum(1 for *_, m in reads if m)
    assert moved > 0, len(reads)  # reads that overlapped the next append happened
    assert len(reads) - moved > 0, len(reads)  # and reads before it


def _started(target: Callable[[], object]) -> tuple[threading.Thread, threading.Event]:
    """`target` on a thread of its own, and an event set once it returned."""
    finished = threading.Event()

    def run() -> None:
        target()
        finished.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, finished


def test_an_append_waits_for_a_reader_that_holds_the_history_lock() -> None:
    """`History.add` changes no series while another thread holds `History.lock`, and goes on once it is let go."""
    history, snaps = History(window_seconds=600), list(_snapshots())[:2]
    history.add(snaps[0])
    with history.lock:
        thread, finished = _started(lambda: history.add(snaps[1]))
        assert not finished.wait(0.2)
        assert history.latest is snaps[0]
    thread.join(5)
    assert finished.is_set()
    assert history.latest is snaps[1]


def test_a_rate_read_on_another_thread_waits_for_an_append_in_progress() -> None:
    """A rate computed when read takes `History.lock`, so it waits while the tick holds it (an append)."""
    history, alone = History(window_seconds=600), History(window_seconds=600)
    for snap in list(_snapshots())[:20]:
        history.add(snap)
        alone.add(snap)
    rates = analyze(history, CONFIG).process_growth
    got: dict[tuple[ProcessKey, str], Rate] = {}
    with history.lock:
        thread, finished = _started(lambda: got.update(rates.items()))
        assert not finished.wait(0.2)  # (a rate computed at the tick needs no lock: this one was not)
    thread.join(5)
    assert finished.is_set()
    assert got == dict(analyze(alone, CONFIG).process_growth.items())
