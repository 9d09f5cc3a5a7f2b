"""Run requests truly at once, for the race tests."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from django.db import connection


def run_together(count: int, request: Callable[[int], Any]) -> list[Any]:
    """Run ``request(i)`` in ``count`` threads released at once; each thread has its own DB connection."""
    barrier = threading.Barrier(count)
    answers: list[Any] = [None] * count

    def work(i: int) -> None:
        try:
            barrier.wait()
            answers[i] = request(i)
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def run_pooled(count: int, threads: int, request: Callable[[int], Any]) -> list[Any]:
    """Run ``request(i)`` for ``i`` in ``range(count)`` on ``threads`` threads released at once, each taking the
    next ``i`` as it finishes one: ``count`` requests with at most ``threads`` database connections."""
    barrier = threading.Barrier(threads)
    answers: list[Any] = [None] * count
    errors: list[BaseException] = []
    indices = iter(range(count))
    lock = threading.Lock()

    def work() -> None:
        try:
            barrier.wait()
            while True:
                with lock:
                    i = next(indices, None)
                if i is None:
                    return
                try:
                    answers[i] = request(i)
                except BaseException as exc:  # noqa: BLE001 (reported to the caller below)
                    errors.append(exc)
        finally:
            connection.close()

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    if errors:
        raise errors[0]
    return answers
