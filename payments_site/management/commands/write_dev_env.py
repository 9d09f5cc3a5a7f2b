"""`python manage.py write_dev_env`: the development settings in ``.env``, which settings.py reads when present.

`make run` calls it so that a new shell needs no exports: `python manage.py createsuperuser` or
`create_merchant` use the database, secret key and channel keys of the running processes, which honcho starts
with the same file. Development only: DEBUG=1, a secret key made here (kept across runs), and the channels'
development keys (made and kept by channels/management/commands/generate_dev_keys.py).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand

from channels.management.commands.generate_dev_keys import dev_channel_env

# Taken from the environment of `make run` when set there (it exports them), so a new shell uses the same.
FROM_ENVIRONMENT = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "PUBLIC_BASE_URL", "WEB_PORT")
HEADER = "# Development settings, written by `make run` (manage.py write_dev_env). Never commit; never deploy.\n"


def read_env_file(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    lines = (line.strip() for line in path.read_text().splitlines())
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


class Command(BaseCommand):
    help = "Write .env with development settings: DEBUG=1, a secret key and the channels' development keys."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--path", default=".env")
        parser.add_argument("--keys-dir", default=".dev/keys")

    def handle(self, *args: Any, path: str, keys_dir: str, **options: Any) -> None:
        env_path = Path(path)
        previous = read_env_file(env_path)  # lines a developer added are kept
        values = {
            **previous,
            "DEBUG": "1",
            "SECRET_KEY": previous.get("SECRET_KEY") or secrets.token_urlsafe(50),
            **{name: os.environ[name] for name in FROM_ENVIRONMENT if os.environ.get(name)},
            **dev_channel_env(Path(keys_dir).resolve()),
        }
        env_path.write_text(HEADER + "".join(f"{name}={value}\n" for name, value in values.items()))
        env_path.chmod(0o600)
        self.stdout.write(f"development settings written to {env_path}")
