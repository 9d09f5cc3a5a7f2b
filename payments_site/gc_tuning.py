"""Python's cyclic garbage collector, set for long-running servers once a process has started.

Two costs, measured with ``make bench-e2e`` (gc callbacks timing each collection, 2 cores, 80-95 paid/s):

- A full collection walks every object the process holds: some 80 ms of CPU for a worker or web process,
  most of it the modules, classes and settings loaded at start, which live as long as the process. With the GIL
  held, every thread of the process waits meanwhile. ``gc.freeze()`` moves what exists at the end of start-up
  out of the collector's sight (it is never garbage), so later collections walk only what came after.
- A request or a task leaves cyclic garbage behind: Django REST framework's request, view and response refer to
  each other (about a hundred objects per API request), which only the collector frees. Python's default, a
  young collection every 700 allocations, also walks every live object of the requests in flight, again and
  again, and promotes them toward the full collections. With ``GC_GEN0_THRESHOLD`` (10,000) allocations between
  young collections, most of a request's objects are gone before one runs.

Together they took the web's collections from 8-9 % of its CPU to 3-4 %, and a charges worker's from 1.6-2.6 % to
nothing measurable: about 0.4 ms of the project's CPU per paid order in the collector itself (the alternated runs
moved by 0.5-2.8 ms, bench/results/e2e-2026-12-06-2cores.txt), and no more pauses of 80 ms. The garbage is still
collected, at the cost of some 10,000 objects held a little longer; peak memory under load did not change.

Web processes tune in ``wsgi.py``, Celery's in ``celery.py`` (worker, pool child, beat), and the long-running
management commands when Django is ready (``apps.py``). Anything else (tests, migrations, a shell) is left as
Python sets it.
"""

from __future__ import annotations

import gc

from django.conf import settings


def tune_after_startup() -> None:
    """Freeze what start-up made and space out the young collections. Call once the process has loaded
    everything it serves with (the URLconf and its views, the tasks), and again in a forked child."""
    gc.collect()  # start-up's own garbage is freed, not frozen for the life of the process
    gc.freeze()
    threshold = settings.GC_GEN0_THRESHOLD
    if threshold > 0:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(threshold, gen1, gen2)
