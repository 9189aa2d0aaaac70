"""Group commit: many concurrent commands, one database commit.

Callers submit commands from any thread and get a Future, or from an event loop with
`submit_async` and get an asyncio Future, answered together with the rest of its batch's futures
of that loop in one hop onto the loop (not one thread-safe wake-up per command). One writer
thread drains the queue, waits a short window for more, and hands up to `batch_max` commands
to `Ledger.execute_batch`, which applies them in order and commits once. Each Future then
receives its own result or its own DomainError. A storage failure fails the Futures of the
commands it kept from committing (their exception), never those of commands that committed.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from application.commands import Command, Result, TransferBatch
from application.ledger import Ledger
from application.ports import OutcomeRecorder
from domain.errors import DomainError

log = logging.getLogger(__name__)

Render = OutcomeRecorder


class CommitHooks:
    """Who wants to hear about each commit (metrics): registered by the composition root and the
    API before the writer starts, called on the writer thread after every successful commit."""

    def __init__(self) -> None:
        self._hooks: list[Callable[[int, int, float], None]] = []

    def add(self, hook: Callable[[int, int, float], None]) -> None:
        self._hooks.append(hook)

    def __call__(self, commands: int, weight: int, seconds: float) -> None:
        for hook in self._hooks:
            hook(commands, weight, seconds)


class Overloaded(Exception):
    """The writer's queue is full: shed load instead of growing without bound."""


class WriterStopped(Exception):
    pass


class GroupCommitWriter:
    def __init__(
        self,
        ledger: Ledger,
        *,
        window_s: float = 0.001,
        batch_max: int = 2000,
        queue_max: int = 100_000,
        on_commit: Callable[[int, int, float], None] | None = None,
    ) -> None:
        assert batch_max >= 1 and queue_max >= 1 and window_s >= 0
        self.ledger = ledger
        self.window_s = window_s
        self.batch_max = batch_max
        self.queue_max = queue_max
        self._on_commit = on_commit  # (commands, weight, seconds) for metrics
        self._queue: deque[tuple[Command, Render | None, Future[Any] | _LoopSlot]] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ---- callers ---------------------------------------------------------------------------

    def submit(self, command: Command, render: Render | None = None) -> Future[Any]:
        """Queues a command; the Future resolves to its Result or DomainError (not raised)."""
        future: Future[Any] = Future()
        self._enqueue(command, render, future)
        return future

    def submit_async(self, command: Command, render: Render | None = None) -> asyncio.Future[Any]:
        """`submit` from a coroutine: an asyncio Future of the running loop. Cancelled (a timeout)
        before the writer takes it, the command is not run."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._enqueue(command, render, _LoopSlot(loop, future))
        return future

    def _enqueue(self, command: Command, render: Render | None, slot: Future[Any] | _LoopSlot) -> None:
        with self._cond:
            if self._stopping:
                raise WriterStopped("the writer is shutting down")
            if len(self._queue) >= self.queue_max:
                raise Overloaded("too many commands waiting to be committed")
            self._queue.append((command, render, slot))
            self._cond.notify()

    def execute(self, command: Command, timeout_s: float = 30.0) -> Result:
        """Blocking convenience: raises the command's DomainError."""
        outcome = self.submit(command).result(timeout=timeout_s)
        if isinstance(outcome, DomainError):
            raise outcome
        return outcome

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> GroupCommitWriter:
        assert self._thread is None
        self._thread = threading.Thread(target=self._run, name="keel-group-commit", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stops taking commands, commits what is queued, then returns."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # ---- the writer thread -----------------------------------------------------------------

    def _take(self) -> list[tuple[Command, Render | None, Future[Any] | _LoopSlot]] | None:
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            if self.window_s and len(self._queue) < self.batch_max and not self._stopping:
                deadline = time.monotonic() + self.window_s
                while len(self._queue) < self.batch_max:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            taken = []
            weight = 0
            while self._queue and (not taken or weight + _weight(self._queue[0][0]) <= self.batch_max):
                item = self._queue.popleft()
                weight += _weight(item[0])
                taken.append(item)
            return taken

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            live = [b for b in batch if b[2].set_running_or_notify_cancel()]
            if not live:
                continue
            started = time.perf_counter()
            answers = _Answers()
            try:
                outcomes = self.ledger.execute_batch([b[0] for b in live], [b[1] for b in live])
            except Exception as e:  # storage failure: nothing of this batch was committed
                log.warning("group commit of %d commands failed: %s", len(live), type(e).__name__)
                for _, _, future in live:
                    answers.add(future, e, failed=True)
                answers.send()
                continue
            if self._on_commit is not None:
                self._on_commit(len(live), sum(_weight(b[0]) for b in live), time.perf_counter() - started)
            for (_, _, future), outcome in zip(live, outcomes, strict=True):
                # A BaseException that is not a DomainError: the store failed, this command did not commit.
                failed = isinstance(outcome, BaseException) and not isinstance(outcome, DomainError)
                answers.add(future, outcome, failed=failed)
            answers.send()


def _weight(command: Command) -> int:
    return len(command.items) if isinstance(command, TransferBatch) else 1


class _LoopSlot:
    """Where the answer of a command submitted from an event loop goes (`submit_async`)."""

    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]) -> None:
        self.loop = loop
        self.future = future

    def set_running_or_notify_cancel(self) -> bool:
        return not self.future.cancelled()  # cancelled by the caller's timeout: do not run it


class _Answers:
    """One batch's answers: thread futures at once, each loop's futures in one hop onto it."""

    def __init__(self) -> None:
        self._by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, bool]]] = {}

    def add(self, slot: Future[Any] | _LoopSlot, value: Any, *, failed: bool) -> None:
        if isinstance(slot, _LoopSlot):
            self._by_loop.setdefault(slot.loop, []).append((slot.future, value, failed))
        elif failed:
            slot.set_exception(value)
        else:
            slot.set_result(value)

    def send(self) -> None:
        for loop, items in self._by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, items)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                log.debug("event loop closed; %d answers dropped", len(items))


def _resolve(items: list[tuple[asyncio.Future[Any], Any, bool]]) -> None:
    for future, value, failed in items:
        if not future.done():  # a caller that timed out has cancelled its future
            if failed:
                future.set_exception(value)
            else:
                future.set_result(value)
