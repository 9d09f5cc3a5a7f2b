"""`make run`'s .env: a new shell's manage.py works without exports, and the tests never read one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from django.conf import settings
from django.core.management import call_command

from payments_site.management.commands.write_dev_env import read_env_file

ROOT = Path(__file__).resolve().parents[1]


def settings_of_new_shell(env: dict[str, str], *names: str) -> list[str]:
    """The given settings, as a `manage.py` started with nothing but ``env`` sees them."""
    code = f"from django.conf import settings; print(*(getattr(settings, n) for n in {names!r}), sep='\\n')"
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT, env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **env},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()[-len(names):]  # after any log line of start-up


def test_the_tests_read_no_env_file() -> None:
    # A developer's .env says DEBUG=1: under pytest it is never read, nor by the processes tests start.
    assert settings.ENV_FILE == "" and os.environ["ENV_FILE"] == ""
    assert settings.DEBUG is False


def test_a_new_shell_reads_the_development_env_file_and_exports_win(tmp_path: Path) -> None:
    call_command("write_dev_env", path=str(tmp_path / ".env"), keys_dir=str(tmp_path / "keys"))
    env_file = {"ENV_FILE": str(tmp_path / ".env")}
    # No DEBUG and no SECRET_KEY in the environment: without the file this fails ("SECRET_KEY must be set").
    debug, secret_key, alipay_key = settings_of_new_shell(
        env_file, "DEBUG", "SECRET_KEY", "ALIPAY_APP_PRIVATE_KEY_PATH"
    )
    written = read_env_file(tmp_path / ".env")
    assert debug == "True" and secret_key == written["SECRET_KEY"]
    assert Path(alipay_key).is_file()
    assert settings_of_new_shell({**env_file, "LOG_LEVEL": "WARNING"}, "LOG_LEVEL") == ["WARNING"]


def test_write_dev_env_keeps_its_secret_key_and_the_lines_a_developer_added(tmp_path: Path) -> None:
    path, keys = tmp_path / ".env", str(tmp_path / "keys")
    call_command("write_dev_env", path=str(path), keys_dir=keys)
    first = read_env_file(path)
    assert first["DEBUG"] == "1" and len(first["SECRET_KEY"]) >= 50
    assert path.stat().st_mode & 0o077 == 0  # secrets: the owner's only
    path.write_text(path.read_text() + "SENTRY_DSN=https://key@sentry.example/1\n")
    call_command("write_dev_env", path=str(path), keys_dir=keys)
    second = read_env_file(path)
    assert second["SECRET_KEY"] == first["SECRET_KEY"]
    assert second["SANDBOX_SECRET"] == first["SANDBOX_SECRET"]  # the channels' keys are kept too
    assert second["SENTRY_DSN"] == "https://key@sentry.example/1"
