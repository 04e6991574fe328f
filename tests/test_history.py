"""History: bounded ring buffers per GPU, process identity and tree."""

from __future__ import annotations

from builders import GIB, UUID0, UUID1, gpu, make_snapshot
from hypothesis import given, settings
from hypothesis import strategies as st
from vramwatch.detectors._series import view
from vramwatch.history import POINT_BYTES, History, Series, Track
from vramwatch.model import ProcessKey, ProcessMeta, ProcessSample, Snapshot


def test_series_keeps_the_newest_points_in_order() -> None:
    """A full ring overwrites its oldest points and still returns time order."""
    s = Series(4)
    for i in range(10):
        s.append(float(i), float(i * 10))
    w = s.window()
    assert w.t == (6.0, 7.0, 8.0, 9.0)
    assert w.v == (60.0, 70.0, 80.0, 90.0)


def test_series_window_seconds_cuts_before_the_newest_point() -> None:
    """window(seconds) keeps points no older than `seconds` before the newest one."""
    s = Series(100)
    for i in range(10):
        s.append(float(i), 1.0)
    assert s.window(3).t == (6.0, 7.0, 8.0, 9.0)


@given(st.lists(st.integers(0, 80 * GIB), min_size=1, max_size=300), st.integers(2, 64))
def test_series_holds_at_most_capacity(values: list[int], capacity: int) -> None:
    """Whatever is appended, a series never holds more than its capacity and ends with the last value."""
    s = Series(capacity)
    for i, v in enumerate(values):
        s.append(float(i), float(v))
    assert len(s) == min(len(values), capacity)
    assert s.window().v[-1] == float(values[-1])


def test_reused_pid_gets_its_own_series() -> None:
    """A pid reused with a new start time is a new identity: the old run's history is not merged into it."""
    h = History(window_seconds=100)
    h.add(make_snapshot(0, {42: 5 * GIB}, starts={42: 1.0}))
    h.add(make_snapshot(1, {42: 1 * GIB}, starts={42: 2.0}))
    old = h.process_window(ProcessKey(42, 1.0), UUID0)
    new = h.process_window(ProcessKey(42, 2.0), UUID0)
    assert old.v == (5.0 * GIB,)
    assert new.v == (1.0 * GIB,)


def test_exited_process_is_forgotten_after_retain_seconds() -> None:
    """Tracks of processes not seen for retain_seconds are dropped, returning their memory."""
    h = History(window_seconds=100, retain_seconds=10)
    h.add(make_snapshot(0, {1: GIB, 2: GIB}))
    for t in range(1, 13):
        h.add(make_snapshot(t, {1: GIB}))
    keys = {k.pid for k, _ in h.processes}
    assert keys == {1}


def test_unknown_process_memory_is_not_recorded_as_zero() -> None:
    """A process with used_bytes None leaves no point: unknown is not 0."""
    h = History()
    h.add(make_snapshot(0, {7: None}))
    assert len(h.process_window(ProcessKey(7, 107.0), UUID0)) == 0


def test_tracks_are_bounded_by_max_tracks() -> None:
    """More processes than max_tracks evicts the least recently seen instead of growing without bound."""
    h = History(window_seconds=10, max_tracks=8)
    for t in range(20):
        h.add(make_snapshot(t, {100 + t: GIB}))
    assert len(h.processes) + len(h.trees) <= 8


def test_capacity_bytes_is_what_the_rings_allocate() -> None:
    """The advertised bound is POINT_BYTES per point for every series that can exist."""
    h = History(window_seconds=3600, interval_seconds=1.0, max_tracks=100)
    assert h.points == 3601
    assert h.capacity_bytes(gpus=2) == POINT_BYTES * 3601 * (4 + 100)


@settings(deadline=None)  # a few hundred appends and scans per example: slow on a loaded CI runner, not wrong
@given(
    st.lists(st.integers(0, 40), min_size=1, max_size=400),
    st.integers(2, 80),
    st.data(),
)
def test_series_staircases_answer_like_a_scan(values: list[int], capacity: int, data: st.DataObject) -> None:
    """The least and the most since any point, read from the staircases, equal a scan of the live points."""
    s = Series(capacity)
    for i, v in enumerate(values):
        s.append(float(i), float(v))
        _t, vals, first, end = s.storage()
        live = list(vals[first:end])
        assert live == [float(x) for x in values[max(0, i + 1 - capacity) : i + 1]]
        k = data.draw(st.integers(first, end - 1))
        assert s.suffix_min(k) == min(vals[k:end])
        assert s.suffix_max(k) == max(vals[k:end])


@settings(deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=300), st.integers(2, 60))
def test_staircases_hold_exactly_the_points_no_later_point_reaches(values: list[int], capacity: int) -> None:
    """After every append (a held value takes the newest point's place), each staircase holds exactly the live
    points that every later point lies strictly above (below), after none but dropped points, and the carried run
    starts where a scan says."""
    s = Series(capacity)
    for i, v in enumerate(values):
        s.append(float(i), float(v))
        _t, vals, first, end = s.storage()
        base = s.appended - end
        live = range(first, end)
        mins = [k for k in live if all(vals[k] < vals[j] for j in range(k + 1, end))]
        maxs = [k for k in live if all(vals[k] > vals[j] for j in range(k + 1, end))]
        for steps, want in ((s._mins, mins), (s._maxs, maxs)):
            at = [k - base for k in steps]
            assert [k for k in at if k >= first] == want
            assert at == sorted(at)  # (so the dropped steps are the oldest, which every lookup skips)
            assert all(k >= 0 for k in at)  # (and they still index the arrays)
        run = end - 1
        while run > 0 and vals[run - 1] == vals[end - 1]:
            run -= 1
        assert max(s.run_start(), 0) == run


@settings(deadline=None)
@given(st.lists(st.integers(0, 50), min_size=3, max_size=200), st.integers(3, 60), st.data())
def test_view_of_a_series_answers_like_a_view_of_its_copy(
    values: list[int], capacity: int, data: st.DataObject
) -> None:
    """A View over a series (no copy) and a View over copied arrays give the same answers to every lookup."""
    from vramwatch.detectors._series import View

    s = Series(capacity)
    for i, v in enumerate(values):
        s.append(float(i), float(v))
    live, copy = View.of(s), View(*s.arrays())
    t0 = data.draw(st.floats(-5, len(values) + 5, allow_nan=False))
    t1 = data.draw(st.floats(-5, len(values) + 5, allow_nan=False))
    for a, b in ((live, copy), (live.since(t0), copy.since(t0)), (live.before(t1), copy.before(t1))):
        assert list(a.t) == list(b.t)
        assert list(a.v) == list(b.v)
        if len(b):
            assert (a.min(), a.max(), a.now, a.first, a.tail_max(2)) == (
                min(b.v),
                max(b.v),
                b.t[-1],
                b.t[0],
                max(b.v[-2:]),
            )
    assert live.min_between(t0, t1) == copy.min_between(t0, t1)
    assert live.max_between(t0, t1) == copy.max_between(t0, t1)
    assert live.value_at(t0) == copy.value_at(t0)


def test_a_view_stays_true_after_the_series_moves_on() -> None:
    """Points appended (and old ones dropped, arrays compacted) after a View was made do not change its answers."""
    from vramwatch.detectors._series import View

    s = Series(20)
    for i in range(20):
        s.append(float(i), float(100 - i))
    before = View.of(s)
    snapshot = (list(before.t), list(before.v), before.min(), before.max())
    for i in range(20, 200):
        s.append(float(i), 0.0)
    assert (list(before.t), list(before.v), before.min(), before.max()) == snapshot
    assert View.of(s).min() == 0.0
    assert len(s) == 20


def test_a_series_stays_within_the_bytes_its_capacity_promises() -> None:
    """However long it runs, a rising series (the staircase's worst case) holds no more than POINT_BYTES a point."""
    s = Series(3601)
    for i in range(20_000):
        s.append(float(i), float(i))
        t, v, _first, _end = s.storage()
        held = t.itemsize * len(t) + v.itemsize * len(v) + 8 * (len(s._mins) + len(s._maxs))
        assert held <= POINT_BYTES * s.capacity + 16


@settings(deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=300), st.integers(2, 60), st.data())
def test_carried_run_and_low_points_answer_like_a_scan(values: list[int], capacity: int, data: st.DataObject) -> None:
    """`holds_since` (the series' carried run) and `low_since` (its staircase) give a scan's answers."""
    from vramwatch.detectors._series import View, view

    s = Series(capacity)
    for i, v in enumerate(values):
        s.append(float(i), float(v))
        live, copy = view(s), View(*s.arrays())
        t0 = data.draw(st.floats(-5, i + 5, allow_nan=False))
        assert live.holds_since(t0) == copy.holds_since(t0)
        tail = [x for t, x in zip(copy.t, copy.v, strict=True) if t >= t0]
        assert live.holds_since(t0) == (len(set(tail)) <= 1)

        def kept(value: float, before: float | None, after: float | None) -> bool:
            return before is None or after is None or value * 2 >= before

        low = live.low_since(t0, kept)
        assert low == copy.low_since(t0, kept)
        assert (low is None) == (not tail)
        assert low is None or low[0] == min(tail)


@settings(deadline=None)
@given(
    st.lists(st.integers(0, 6), min_size=3, max_size=150),
    st.lists(st.integers(0, 6), min_size=1, max_size=150),
    st.integers(3, 40),
    st.data(),
)
def test_a_view_of_a_series_that_moved_on_answers_as_the_series_was(
    before: list[int], after: list[int], capacity: int, data: st.DataObject
) -> None:
    """A view made before later appends (a scrape reading the last tick's rates) answers every lookup from its
    points as they were, as a copy of them does, through appends, dropped points and compactions."""
    from vramwatch.detectors._series import View, view

    s = Series(capacity)
    for i, v in enumerate(before):
        s.append(float(i), float(v))
    t0 = data.draw(st.floats(-5, len(before) + 5, allow_nan=False))
    made = view(s).since(t0)
    copy = View(*s.arrays()).since(t0)
    for i, v in enumerate(after, start=len(before)):
        s.append(float(i), float(v))
    assert made._live(made._j) is None  # the staircases moved on: a scan of its own points

    def kept(value: float, before: float | None, after: float | None) -> bool:
        return before is None or after is None or value * 2 >= before

    t1 = data.draw(st.floats(-5, len(before) + 5, allow_nan=False))
    assert list(made.t) == list(copy.t)
    assert made.still() == copy.still()
    assert made.holds_since(t1) == copy.holds_since(t1)
    assert made.low_since(t1, kept) == copy.low_since(t1, kept)
    if len(copy):
        assert (made.min(), made.max(), made.tail_max(2)) == (copy.min(), copy.max(), copy.tail_max(2))
    if len(copy.since(t1)):
        assert made.since(t1).min() == copy.since(t1).min()
    x = float(data.draw(st.integers(-1, 7)))
    assert made.last_below(x) == copy.last_below(x)
    now = View(*s.arrays())
    assert view(s).last_below(x) == now.last_below(x)  # the live staircase, after the compactions


class _UnsharedHistory(History):
    """The reference: every tree appends to a series of its own (History.add before trees shared their root's)."""

    def add(self, snap: Snapshot) -> None:
        self.previous, self.latest = self.latest, snap
        trees: dict[tuple[ProcessKey, str], tuple[int, ProcessMeta]] = {}
        for p in snap.processes:
            if p.used_bytes is None:
                continue
            self._touch(self.processes, (p.key, p.gpu_uuid), snap.t, p.meta).series.append(snap.t, p.used_bytes)
            tk = (p.tree_key, p.gpu_uuid)
            prev = trees.get(tk)
            trees[tk] = ((prev[0] if prev else 0) + p.used_bytes, p.meta)
        for tk, (total, meta) in trees.items():
            self._touch(self.trees, tk, snap.t, meta).series.append(snap.t, total)
        self._prune(snap.t)


def _answers(s: Series) -> tuple[object, ...]:
    """What a detector can ask of a series: its points, and the staircases' answers from every point on."""
    live = view(s)
    kept = lambda *_: True  # noqa: E731
    t, v = s.arrays()
    per_point = [
        (p.min(), p.max(), p.still(), p.low_since(p.first, kept), live.last_below(x))
        for p, x in ((live.since(tk), vk) for tk, vk in zip(t, v, strict=True))
    ]
    return tuple(t), tuple(v), s.run_start() - len(s._t) + len(s), tuple(per_point)


def _assert_alike(shared: History, reference: History) -> None:
    """Both histories hold the same tracks, stamped alike, whose series answer alike."""
    for table, ref in ((shared.processes, reference.processes), (shared.trees, reference.trees)):
        assert table.keys() == ref.keys()
        for key, track in table.items():
            other = ref[key]
            assert (track.first_seen, track.last_seen, track.meta) == (other.first_seen, other.last_seen, other.meta)
            assert _answers(track.series) == _answers(other.series)


# Per tick, per pid present: (bytes or None, root pid or None, start generation, GPU). Roots 1 and 2 are processes
# that may be on a GPU themselves (their workers join their tree), 9 a launcher that never is.
_tick = st.dictionaries(
    st.integers(1, 6),
    st.tuples(
        st.one_of(st.none(), st.sampled_from([0, 1, 2, 3]).map(lambda k: k * GIB)),
        st.sampled_from([None, 1, 2, 9]),
        st.integers(0, 1),
        st.sampled_from([UUID0, UUID1]),
    ),
    max_size=5,
)


@settings(deadline=None, max_examples=150)
@given(st.lists(_tick, min_size=1, max_size=40), st.integers(2, 12), st.integers(2, 40), st.integers(2, 30))
def test_trees_sharing_their_roots_series_answer_like_trees_of_their_own(
    ticks: list[dict[int, tuple[int | None, int | None, int, str]]], capacity: int, max_tracks: int, retain: int
) -> None:
    """Whatever joins, leaves, reuses a pid or is evicted, every track's series answers as if no tree shared one."""
    shared = History(window_seconds=capacity - 1, retain_seconds=retain, max_tracks=max_tracks)
    reference = _UnsharedHistory(window_seconds=capacity - 1, retain_seconds=retain, max_tracks=max_tracks)
    for t, procs in enumerate(ticks):
        metas = {
            pid: ProcessMeta(
                pid=pid,
                start_time=100.0 * gen + pid,
                root_pid=root,
                root_start_time=None if root is None else 100.0 * gen + root,
            )
            for pid, (_, root, gen, _) in procs.items()
        }
        snap = Snapshot(
            t=float(t),
            wall_time=1.7e9 + t,
            gpus=(gpu(used=GIB), gpu(1, used=GIB)),
            processes=tuple(ProcessSample(uuid, used, metas[pid]) for pid, (used, _, _, uuid) in procs.items()),
        )
        shared.add(snap)
        reference.add(snap)
        _assert_alike(shared, reference)


class _FourPassHistory(History):
    """The reference for `_lone_roots`: every process through `_add_processes`, as History.add did before it."""

    def _lone_roots(
        self, listed: list[ProcessSample]
    ) -> tuple[list[tuple[ProcessSample, Track, Track]], list[ProcessSample]]:
        return [], listed


def _assert_same(made: History, reference: History) -> None:
    """The same tracks in the same order, stamped alike, holding the same points, sharing series alike."""
    for table, ref in ((made.processes, reference.processes), (made.trees, reference.trees)):
        assert list(table) == list(ref)
        for track, other in zip(table.values(), ref.values(), strict=True):
            assert (track.first_seen, track.last_seen) == (other.first_seen, other.last_seen)
            assert track.meta is other.meta
            mine, theirs = track.series, other.series
            assert (mine.arrays(), mine.appended, mine.run_start()) == (
                theirs.arrays(),
                theirs.appended,
                theirs.run_start(),
            )
            assert _answers(mine) == _answers(theirs)  # (every staircase lookup, from every point on)

    def sharing(h: History) -> set[tuple[ProcessKey, str]]:
        return {k for k, tr in h.trees.items() if k in h.processes and h.processes[k].series is tr.series}

    assert sharing(made) == sharing(reference)


# Per tick: pids that arrive, pids that leave, a shift of everyone's bytes, which of two equal metas the even pids
# carry, and now and then one pid listed again. A population that persists from tick to tick is what a card holds:
# most trees are their root alone since their track began, and near `max_tracks` the arrivals evict tracks that were
# seen at the last tick, where the order of the stamps tells. Pids 1-16 are their own roots; 17-20 workers of 1
# (which may be on the card too), 21-24 of a launcher that never is.
_change = st.tuples(
    st.sets(st.integers(1, 24), max_size=5),
    st.sets(st.integers(1, 24), max_size=4),
    st.integers(0, 2),
    st.booleans(),
    st.lists(st.integers(1, 24), max_size=1),
)


def _root_of(pid: int, other: bool) -> int | None:
    if other and pid % 4 == 2:  # (listed again so: once its own root, once a worker of 1)
        return 1
    return 1 if 17 <= pid <= 20 else 99 if pid > 20 else None


@settings(deadline=None, max_examples=200)
@given(st.lists(_change, min_size=1, max_size=30), st.integers(16, 44))
def test_the_lone_roots_shortcut_leaves_the_history_as_four_passes_would(
    changes: list[tuple[set[int], set[int], int, bool, list[int]]], max_tracks: int
) -> None:
    """The one pass over the trees that are their root alone (`_lone_roots`) leaves every track, its order, its stamps,
    its points and its sharing as History.add's four passes did, with workers joining, a pid listed twice and
    evictions."""
    made = History(window_seconds=7, retain_seconds=5, max_tracks=max_tracks)
    reference = _FourPassHistory(window_seconds=7, retain_seconds=5, max_tracks=max_tracks)
    metas = {
        (pid, other): ProcessMeta(
            pid=pid,
            start_time=float(pid),
            name="b" if other else "a",
            root_pid=_root_of(pid, other),
            root_start_time=_root_of(pid, other),
        )
        for pid in range(1, 25)
        for other in (False, True)
    }
    present: list[int] = []
    for t, (arrive, leave, shift, other, again) in enumerate(changes):
        present = [pid for pid in present if pid not in leave] + sorted(arrive - set(present))
        which = {pid: other and pid % 2 == 0 for pid in present}
        processes = tuple(
            ProcessSample(UUID0, ((pid + shift) % 3 + 1) * GIB, metas[pid, which[pid]]) for pid in present
        )
        processes += tuple(ProcessSample(UUID0, GIB, metas[pid, not which[pid]]) for pid in again if pid in which)
        snap = Snapshot(t=float(t), wall_time=1.7e9 + t, gpus=(gpu(used=GIB),), processes=processes)
        made.add(snap)
        reference.add(snap)
        _assert_same(made, reference)


def test_near_max_tracks_an_arrival_evicts_what_four_passes_would() -> None:
    """A worker listed before two lone roots makes a track when the history is full: the eviction must drop the track
    that four passes would (the least recently stamped: a lone root's tree not yet stamped), so the shortcut is not
    taken when the arrivals could reach max_tracks."""
    made = History(window_seconds=7, max_tracks=5)
    reference = _FourPassHistory(window_seconds=7, max_tracks=5)
    two, three = (ProcessMeta(pid=pid, start_time=float(pid)) for pid in (2, 3))
    worker = ProcessMeta(pid=17, start_time=17.0, root_pid=1, root_start_time=1.0)
    for t, metas in enumerate([(two, three), (worker, two, three), (worker, two, three)]):
        snap = Snapshot(
            t=float(t),
            wall_time=0.0,
            gpus=(gpu(used=GIB),),
            processes=tuple(ProcessSample(UUID0, GIB, m) for m in metas),
        )
        made.add(snap)
        reference.add(snap)
        _assert_same(made, reference)


def test_a_lone_root_listed_again_as_a_worker_is_not_taken_as_alone() -> None:
    """A lone root that a tick also lists as another's worker is no tree of its root alone at that tick: the shortcut
    leaves it to the four passes, which split its tree's series from its own."""
    made, reference = History(window_seconds=7), _FourPassHistory(window_seconds=7)
    alone = ProcessMeta(pid=2, start_time=2.0)
    as_worker = ProcessMeta(pid=2, start_time=2.0, name="b", root_pid=1, root_start_time=1.0)
    for t, metas in enumerate([(alone,), (as_worker, alone), (alone,)]):
        processes = tuple(ProcessSample(UUID0, (1 + (m is as_worker)) * GIB, m) for m in metas)
        snap = Snapshot(t=float(t), wall_time=0.0, gpus=(gpu(used=GIB),), processes=processes)
        made.add(snap)
        reference.add(snap)
        _assert_same(made, reference)


def test_a_lone_root_shares_its_series_until_a_worker_joins() -> None:
    """A process that is its own tree appends once for both; when a worker joins, the tree's series goes its own way."""
    h = History(window_seconds=100)
    root = ProcessMeta(pid=10, start_time=5.0, root_pid=10, root_start_time=5.0)
    worker = ProcessMeta(pid=11, start_time=6.0, root_pid=10, root_start_time=5.0)
    for t in range(3):
        h.add(Snapshot(t=float(t), wall_time=0.0, gpus=(gpu(used=GIB),), processes=(ProcessSample(UUID0, GIB, root),)))
    key = (ProcessKey(10, 5.0), UUID0)
    assert h.trees[key].series is h.processes[key].series
    both = (ProcessSample(UUID0, GIB, root), ProcessSample(UUID0, 2 * GIB, worker))
    h.add(Snapshot(t=3.0, wall_time=0.0, gpus=(gpu(used=3 * GIB),), processes=both))
    assert h.trees[key].series is not h.processes[key].series
    assert h.tree_window(*key).v == (GIB, GIB, GIB, 3 * GIB)
    assert h.process_window(*key).v == (GIB, GIB, GIB, GIB)


def test_a_process_listed_twice_in_two_trees_keeps_apart_from_its_own_tree() -> None:
    """A snapshot listing one process twice (its own root, then another's worker) gives both tracks what they had
    without sharing: the process both points, its own tree only its root's."""
    own = ProcessMeta(pid=1, start_time=1.0)
    moved = ProcessMeta(pid=1, start_time=1.0, root_pid=2, root_start_time=2.0)
    ticks = [((UUID0, GIB, own),), ((UUID0, 2 * GIB, own), (UUID0, 3 * GIB, moved))]
    shared, reference = History(window_seconds=100), _UnsharedHistory(window_seconds=100)
    for t, samples in enumerate(ticks):
        snap = Snapshot(
            t=float(t), wall_time=0.0, gpus=(gpu(used=GIB),), processes=tuple(ProcessSample(*s) for s in samples)
        )
        shared.add(snap)
        reference.add(snap)
    key = (ProcessKey(1, 1.0), UUID0)
    assert shared.process_window(*key).v == reference.process_window(*key).v == (GIB, 2 * GIB, 3 * GIB)
    assert shared.tree_window(*key).v == reference.tree_window(*key).v == (GIB, 2 * GIB)
    assert shared.trees[key].series is not shared.processes[key].series
