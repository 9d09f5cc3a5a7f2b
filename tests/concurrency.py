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
