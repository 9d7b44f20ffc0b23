"""Runs that take turns: several trainings in one process, each in its own thread, exactly one running
at any moment.

A run works until it calls its ``hand_over`` (the benchmarks do it after every step, or after every
epoch), then waits while the others each take a turn in ring order. So a step of one variant is
measured within a second of the same step of every other variant in the ring, under the same load
of the machine; nothing of another run executes while a run holds the turn (the others are blocked
on a condition variable, using no CPU). A run that ends, or fails, leaves the ring; the others go on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

HandOver = Callable[[], None]
"""Gives the turn to the next run in the ring and returns when it comes back."""

Body = Callable[[HandOver], None]
"""One run: it receives its ``hand_over`` and calls it wherever it lets the others work."""


class Lockstep:
    """Turn-taking between ``count`` runs, in index order, starting with run 0."""

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError(f"a lockstep needs at least one run, got {count}.")
        self._condition = threading.Condition()
        self._turn = 0
        self._done = [False] * count

    def _next(self, index: int) -> int:
        count = len(self._done)
        for step in range(1, count + 1):
            candidate = (index + step) % count
            if not self._done[candidate]:
                return candidate
        return index

    def _wait(self, index: int) -> None:
        self._condition.wait_for(lambda: self._turn == index)

    def hand_over(self, index: int) -> None:
        """Run ``index`` lets the next unfinished run work, and waits for its turn to come back."""
        with self._condition:
            self._turn = self._next(index)
            self._condition.notify_all()
            self._wait(index)

    def _enter(self, index: int) -> None:
        with self._condition:
            self._wait(index)

    def _leave(self, index: int) -> None:
        with self._condition:
            self._done[index] = True
            self._turn = self._next(index)
            self._condition.notify_all()

    def run(self, bodies: Sequence[Body]) -> None:
        """Run ``bodies`` (one per index) in threads taking turns; re-raise the first failure."""
        if len(bodies) != len(self._done):
            raise ValueError(f"this lockstep takes {len(self._done)} runs, got {len(bodies)}.")
        errors: list[BaseException] = []

        def work(index: int, body: Body) -> None:
            self._enter(index)
            try:
                body(lambda: self.hand_over(index))
            except BaseException as error:
                errors.append(error)
            finally:
                self._leave(index)

        threads = [
            threading.Thread(target=work, args=(i, body), name=f"lockstep-{i}", daemon=True)
            for i, body in enumerate(bodies)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
