"""``bulk``'s scheduler with fake workers (no Ray): rows as they land, lazy chunks, bounded
retries and splits, start failures counted per worker, hung workers, stopping, and
``--ship-bytes``. What Ray itself does (a killed worker, a killed driver, two nodes) is in
tests/test_bulk.py, on real Ray."""

from __future__ import annotations

import threading
from collections import deque

import pytest

from bulk.ray_session import BulkError
from bulk.scheduler import END, IN_FLIGHT, INIT_RETRIES, TASK_RETRIES, Scheduler, WorkerDied
from runtime.engine import Item
from runtime.engine.plan import make_row


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeWorker:
    def __init__(self, slot: int, init_failed: bool) -> None:
        self.slot, self.init_failed, self.incarnation, self.stopping = slot, init_failed, 0, False


class FakeStream:
    def __init__(self, backend: "FakeBackend", worker: FakeWorker, items: list[Item]) -> None:
        self.backend, self.worker, self.incarnation = backend, worker, worker.incarnation
        self.queue = deque(items)
        self.beats = 0

    def ready(self) -> bool:
        if self.worker.init_failed or self.incarnation != self.worker.incarnation or not self.queue:
            return True
        return self.backend.behaviour(self.queue[0]) not in ("hang", "slow")


class FakeBackend:
    """Workers that return a row per item, unless the item's name says otherwise:
    ``crash`` kills the worker each time it is run, ``crash-once`` the first time, ``hang``
    never finishes (until the worker is killed), ``hang-once`` the first time, ``slow`` sends
    heartbeats with progress for a while, then its row. ``start_fails``: slot -> how many
    starts fail."""

    def __init__(self, clock: Clock, start_fails: dict[int, int] | None = None, slow_beats: int = 0,
                 stuck_beats: bool = False) -> None:
        self.clock, self.start_fails = clock, dict(start_fails or {})
        self.slow_beats, self.stuck_beats = slow_beats, stuck_beats
        self.runs: dict[str, int] = {}  # item -> times it was started
        self.submitted: list[tuple[int, list[str], dict | None]] = []
        self.killed: list[int] = []
        self.stopped: list[int] = []
        self.once: set[str] = set()
        self.streams: list[FakeStream] = []

    def behaviour(self, item: Item) -> str:
        name = item.source
        for kind in ("crash-once", "hang-once"):
            if kind in name:
                return kind.split("-")[0] if name not in self.once else "ok"
        for kind in ("crash", "hang", "slow"):
            if kind in name:
                return kind
        return "ok"

    def start(self, slot: int) -> FakeWorker:
        failing = self.start_fails.get(slot, 0) > 0
        if failing:
            self.start_fails[slot] -= 1
        return FakeWorker(slot, failing)

    def submit(self, worker: FakeWorker, items: list[Item], blobs: dict | None) -> FakeStream:
        self.submitted.append((worker.slot, [i.source for i in items], blobs))
        self.streams.append(FakeStream(self, worker, items))
        return self.streams[-1]

    def wait(self, streams: list, timeout: float) -> list:
        ready = [s for s in streams if s.ready()]
        slow = [s for s in streams if s.queue and self.behaviour(s.queue[0]) == "slow"]
        if not ready and not slow:
            self.clock.now += timeout  # nothing came: time passes
            assert self.clock.now < 100_000, "the scheduler waits for ever on a worker that does nothing"
        return ready + [s for s in slow if s not in ready]

    def take(self, stream: FakeStream) -> list:
        try:
            return [self.next(stream)]
        except WorkerDied as exc:
            return [exc]

    def next(self, stream: FakeStream):
        worker = stream.worker
        if worker.init_failed:
            raise WorkerDied("RuntimeError: cannot start", init_failed=True)
        if stream.incarnation != worker.incarnation:
            raise WorkerDied("ActorUnavailableError: the actor is unavailable")
        if not stream.queue or worker.stopping:
            return END
        item = stream.queue[0]
        kind = self.behaviour(item)
        if kind == "slow" and stream.beats < self.slow_beats:
            stream.beats += 1
            self.clock.now += 30
            return {"heartbeat": 0 if self.stuck_beats else stream.beats}
        stream.queue.popleft()
        self.runs[item.source] = self.runs.get(item.source, 0) + 1
        self.once.add(item.source)
        if kind == "crash":
            worker.incarnation += 1  # the process died: every stream on it goes with it
            raise WorkerDied("ActorUnavailableError: the actor is unavailable")
        return make_row(item, "done", "digest")

    def stop(self, worker: FakeWorker) -> None:
        worker.stopping = True
        self.stopped.append(worker.slot)

    def kill(self, worker: FakeWorker) -> None:
        self.killed.append(worker.slot)
        self.once |= {s.queue[0].source for s in self.streams if s.worker is worker and s.queue}
        worker.incarnation += 1


class Todo:
    """The plan's todo as the scheduler sees it: a length, and items read as it goes."""

    def __init__(self, names: list[str]) -> None:
        self.names, self.read = names, 0

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self):
        for name in self.names:
            self.read += 1
            yield Item(name, name, name.endswith(".mp4"), {"heatmap": f"/out/{name}.heatmap.png"})


def run(backend, names, workers=2, limit=4, stop=None, **kw):
    scheduler = Scheduler(backend, workers, "digest", clock=backend.clock, **kw)
    batches: list[list[dict]] = []
    todo = Todo(names)
    scheduler.run(todo, limit, batches.append, stop)
    rows = [r for b in batches for r in b]
    return rows, batches, todo


def test_every_input_once_rows_as_they_land_and_chunks_made_as_the_plan_is_read():
    backend = FakeBackend(Clock())
    names = [f"{i:03d}.jpg" for i in range(200)]
    reads = []
    scheduler = Scheduler(backend, 3, "digest", clock=backend.clock)
    todo = Todo(names)
    batches: list = []

    def on_rows(rows):
        reads.append(todo.read)
        batches.append(rows)

    scheduler.run(todo, 4, on_rows)
    rows = [r for b in batches for r in b]
    assert sorted(r["input"] for r in rows) == names and {r["status"] for r in rows} == {"done"}
    assert max(len(b) for b in batches) <= 3 * IN_FLIGHT  # a row per stream per turn, not a chunk's worth
    assert reads[0] <= 3 * IN_FLIGHT * 4  # the plan is read as chunks go out, not all at once
    assert all(v == 1 for v in backend.runs.values())


def test_an_input_that_kills_its_worker_fails_alone_after_bounded_tries_and_nothing_done_is_redone():
    backend = FakeBackend(Clock())
    names = ["a.jpg", "b.jpg", "crash.jpg", "d.jpg", "e.jpg", "f.jpg", "g.jpg", "h.jpg"]
    rows, _, _ = run(backend, names, workers=1, limit=4)
    by = {r["input"]: r for r in rows}
    assert len(rows) == len(by) == 8
    assert by["crash.jpg"]["status"] == "failed" and by["crash.jpg"]["error"] == (
        f"crash.jpg: the worker process died on each of {TASK_RETRIES + 1} tries with this input alone "
        "(a crash, out of memory, or a hang); skipped")
    assert backend.runs["crash.jpg"] == 2 * (TASK_RETRIES + 1)  # with what was left of its chunk, then alone
    assert backend.runs["a.jpg"] == backend.runs["b.jpg"] == 1  # rows already in were never redone
    assert {r["status"] for i, r in by.items() if i != "crash.jpg"} == {"done"}


def test_start_failures_are_counted_per_worker_not_per_chunk():
    """Transient start failures on several workers (each with two chunks queued) do not
    end the job; a worker that never starts is retired and the others do its share."""
    backend = FakeBackend(Clock(), start_fails={0: 1, 3: 2, 7: INIT_RETRIES, 9: 99})
    names = [f"{i:03d}.jpg" for i in range(300)]
    rows, _, _ = run(backend, names, workers=10, limit=4)
    assert sorted(r["input"] for r in rows) == names and {r["status"] for r in rows} == {"done"}


def test_a_job_whose_workers_never_start_stops_with_one_line():
    backend = FakeBackend(Clock(), start_fails={0: 99, 1: 99})
    with pytest.raises(BulkError, match=rf"^workers could not start \({INIT_RETRIES + 1} tries each\): "
                                        "RuntimeError: cannot start$"):
        run(backend, [f"{i}.jpg" for i in range(20)], workers=2)


def test_a_hung_worker_is_killed_and_its_inputs_run_again():
    backend = FakeBackend(Clock())
    rows, _, _ = run(backend, ["a.jpg", "hang-once.jpg", "c.jpg", "d.jpg"], workers=1, limit=4, stall_timeout=5)
    assert backend.killed == [0] and {r["status"] for r in rows} == {"done"} and len(rows) == 4
    backend = FakeBackend(Clock())
    rows, _, _ = run(backend, ["a.jpg", "hang.jpg", "c.jpg"], workers=1, limit=4, stall_timeout=5)
    by = {r["input"]: r for r in rows}
    assert by["hang.jpg"]["error"].startswith("hang.jpg: the worker hung (no progress for 5 s) on each of 4 tries")
    assert by["a.jpg"]["status"] == by["c.jpg"]["status"] == "done"


def test_heartbeats_with_progress_keep_a_long_input_alive_and_stuck_ones_do_not():
    backend = FakeBackend(Clock(), slow_beats=20)  # 20 heartbeats 30 s apart: 600 s of progress
    rows, _, _ = run(backend, ["slow.mp4", "b.jpg"], workers=1, limit=2, stall_timeout=100)
    assert backend.killed == [] and {r["status"] for r in rows} == {"done"}
    backend = FakeBackend(Clock(), slow_beats=20, stuck_beats=True)  # alive, but nothing moves
    run(backend, ["slow.mp4", "b.jpg"], workers=1, limit=2, stall_timeout=100)
    assert backend.killed and backend.killed[0] == 0


def test_stopping_asks_every_worker_to_stop_and_starts_nothing_new():
    backend = FakeBackend(Clock())
    stop = threading.Event()
    names = [f"{i:03d}.jpg" for i in range(100)]
    scheduler = Scheduler(backend, 2, "digest", clock=backend.clock)
    got: list = []

    def on_rows(rows):
        got.extend(rows)
        stop.set()

    scheduler.run(Todo(names), 4, on_rows, stop)
    assert sorted(backend.stopped) == [0, 1]
    assert len(got) < 2 * IN_FLIGHT * 4 and len(backend.submitted) == 2 * IN_FLIGHT  # nothing submitted after


def test_ship_bytes_fails_an_unreadable_input_alone_and_never_ships_videos(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"jpeg bytes")
    (tmp_path / "clip.mp4").write_bytes(b"a video")
    names = [str(tmp_path / "a.jpg"), str(tmp_path / "gone.jpg"), str(tmp_path / "clip.mp4")]
    backend = FakeBackend(Clock())
    rows, _, _ = run(backend, names, workers=1, limit=4, ship_bytes=True)
    by = {r["input"]: r for r in rows}
    assert by[names[1]]["status"] == "failed" and by[names[1]]["error"] == f"{names[1]}: cannot be read (No such file or directory)"
    assert by[names[0]]["status"] == by[names[2]]["status"] == "done"
    assert [n for _, sent, _ in backend.submitted for n in sent] == [names[0], names[2]]
    assert {k: v for _, _, blobs in backend.submitted for k, v in blobs.items()} == {names[0]: b"jpeg bytes"}
