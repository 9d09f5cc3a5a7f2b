"""Settings for the bench baseline (bench/api_create.py): the project's settings, only the URLs differ."""

from payments_site.settings import *  # noqa: F401,F403

ROOT_URLCONF = "bench.baseline_urls"
