"""A small pool of spawned worker processes that survives the loss of a worker.

Each worker runs ``init(*initargs(slot))`` once, says it is ready, then takes one task at a time
through its own pipe and sends back the result (or the exception it raised). The parent hands a
task to an idle worker only, and waits on every worker's pipe and process sentinel together
(:func:`multiprocessing.connection.wait`), so it always knows which task each worker holds. A
worker that dies (the OOM killer, ``kill -9``) costs its own task only: ``on_lost(task, exitcode,
pid)`` is called and a replacement worker is started in the same slot (so with the same
``initargs``, e.g. the same GPU); the other workers are never touched. Workers that keep dying
before they take a task stop the pool with a :class:`UserError`.

Everything a worker sends goes through its own pipe (no queue shared by the workers, whose lock a
killed worker could take along): progress events too, with :func:`report`. Workers ignore SIGINT:
on Ctrl-C (or any exception) the parent kills every worker at once and reaps it.
"""
from __future__ import annotations

import multiprocessing as mp
import pickle
import signal
import threading
import traceback
from collections import deque
from multiprocessing.connection import wait

from benchmark.core.errors import UserError

_CONN = None                     # in a worker: its end of the pipe to the parent
_SEND = threading.Lock()         # one message at a time on that pipe (progress may come from threads)


def report(event) -> None:
    """In a worker: send ``event`` to the parent's ``on_event``."""
    with _SEND:
        _CONN.send(("event", event))


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker (the ``__cause__`` of the re-raised one)."""


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives a trip through pickle, else a plain exception with its message."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 -- any failure to round-trip
        kind = UserError if isinstance(exc, UserError) else RuntimeError
        return kind(f"{type(exc).__name__}: {exc}" if kind is RuntimeError else str(exc))


def _worker_main(conn, init, initargs, target) -> None:
    global _CONN
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C is the parent's to handle
    _CONN = conn
    try:
        init(*initargs)
        message = ("ready", None)
        while True:
            with _SEND:
                conn.send(message)
            task = conn.recv()
            if task is None:                          # no more work
                return
            try:
                message = ("result", target(*task))
            except BaseException as exc:             # noqa: BLE001 -- the parent decides
                message = ("raise", (_portable(exc), traceback.format_exc()))
    except BaseException as exc:                      # noqa: BLE001 -- init failed: tell the parent
        with _SEND:
            conn.send(("raise", (_portable(exc), traceback.format_exc())))


class _Worker:
    def __init__(self, ctx, slot: int, init, initargs, target):
        self.slot, self.task, self.ready = slot, None, False
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, init, initargs, target), daemon=True,
                                name=f"grid-worker-{slot}")
        self.proc.start()
        child.close()

    def stop(self, kill: bool) -> None:
        if kill and self.proc.is_alive():
            self.proc.kill()
        self.proc.join(None if kill else 10)
        if self.proc.is_alive():                      # did not exit when asked to: no waiting on it
            self.proc.kill()
            self.proc.join()
        self.conn.close()


class WorkerPool:
    """``size`` workers; ``initargs(slot)`` gives a worker's init arguments (a replacement gets its
    slot's), ``target(*task)`` runs a task in a worker. ``max_early_deaths``: consecutive deaths of
    workers before their first task that stop the pool."""

    def __init__(self, size: int, init, initargs, target, max_early_deaths: int = 3, context=None):
        self.size, self.init, self.initargs, self.target = size, init, initargs, target
        self.max_early_deaths = max_early_deaths
        self.ctx = context or mp.get_context("spawn")   # fork after torch has started threads can deadlock

    def run(self, tasks, on_result, on_lost, on_event=None, tick=None, every: float = 0.5) -> None:
        """Run every task: ``on_result(task, result)`` as results come, ``on_lost(task, exitcode,
        pid)`` for a task whose worker died, ``on_event(event)`` for what workers :func:`report`,
        ``tick()`` at least every ``every`` seconds. An exception raised in a worker is raised here."""
        pending, workers, early = deque(tasks), {}, 0
        try:
            for slot in range(min(self.size, len(pending))):
                workers[slot] = self._start(slot)
            while pending or any(w.task is not None for w in workers.values()):
                for w in workers.values():
                    if w.ready and w.task is None and pending:
                        w.task, early = pending.popleft(), 0
                        try:
                            w.conn.send(w.task)
                        except OSError:               # it died just now: the task goes to another
                            pending.appendleft(w.task)
                            w.task, w.ready = None, False
                            w.proc.kill()
                ready = set(wait([w.conn for w in workers.values()] + [w.proc.sentinel for w in workers.values()],
                                 timeout=every))
                for slot, w in list(workers.items()):
                    dead = w.proc.sentinel in ready
                    if w.conn in ready or dead:
                        dead = self._read(w, on_result, on_event) or dead
                    if not dead:
                        continue
                    w.stop(kill=True)
                    if w.task is not None:
                        on_lost(w.task, w.proc.exitcode, w.proc.pid)
                    elif not w.ready:
                        early += 1
                        if early >= self.max_early_deaths:
                            raise UserError(
                                f"{early} grid worker processes in a row died while starting (last exit code "
                                f"{w.proc.exitcode}), before taking a run: the machine may be out of memory "
                                "(see dmesg); use fewer --jobs, or free memory, and run the same command again")
                    del workers[slot]
                    if pending:
                        workers[slot] = self._start(slot)
                if tick is not None:
                    tick()
        except BaseException:
            for w in workers.values():               # stop now: each run resumes from its last checkpoint
                w.stop(kill=True)
            raise
        for w in workers.values():
            try:
                w.conn.send(None)
            except OSError:
                pass
        for w in workers.values():
            w.stop(kill=False)

    def _start(self, slot: int) -> _Worker:
        return _Worker(self.ctx, slot, self.init, self.initargs(slot), self.target)

    @staticmethod
    def _read(w: _Worker, on_result, on_event) -> bool:
        """Handle every message waiting on a worker's pipe; True when the pipe is closed (it died)."""
        while True:
            try:
                if not w.conn.poll():
                    return False
                kind, payload = w.conn.recv()
            except (EOFError, OSError):
                return True
            if kind == "ready":
                w.ready = True
            elif kind == "event":
                if on_event is not None:
                    on_event(payload)
            elif kind == "result":
                task, w.task = w.task, None
                on_result(task, payload)
            else:                                     # "raise": an exception in the worker
                exc, text = payload
                if isinstance(exc, UserError):
                    raise exc
                raise exc from RemoteTraceback(text)
