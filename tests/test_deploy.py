"""Production settings pass `manage.py check --deploy`, and the image is built the way README says."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # A process of its own: settings are read once, at start, from its environment alone (none of the tests').
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "ENV_FILE": ""}
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=120,
    )


def test_the_example_production_settings_pass_check_deploy() -> None:
    # .env.example is what a deployment copies: with a real secret key it must be clean as it stands.
    result = check_deploy({"ENV_FILE": str(ROOT / ".env.example"), "SECRET_KEY": secrets.token_urlsafe(50)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_refuses_development_defaults() -> None:
    result = check_deploy({"DEBUG": "0", "SECRET_KEY": secrets.token_urlsafe(50)})
    assert result.returncode != 0
    for check in ("payments_site.W001", "payments_site.W002", "security.W008"):  # hosts, notify URL, redirect
        assert check in result.stderr, result.stderr


def test_the_image_installs_dependencies_first_collects_static_files_and_runs_unprivileged() -> None:
    lines = (line.strip() for line in (ROOT / "docker" / "Dockerfile").read_text().splitlines())
    text = "\n".join(line for line in lines if line and not line.startswith("#"))
    steps = text.replace("\\\n", " ").splitlines()  # one instruction a line, continuations joined

    def index(pattern: str) -> int:
        found = [i for i, step in enumerate(steps) if re.match(pattern, step)]
        assert found, pattern
        return found[0]

    assert steps[0] == "FROM python:3.11-slim"
    # requirements.txt alone, installed, and only then the code: a code change keeps the dependency layer.
    assert index(r"COPY requirements\.txt ") < index(r"RUN pip install -r requirements\.txt") < index(r"COPY \. ")
    assert index(r"COPY \. ") < index(r"RUN .*manage\.py collectstatic")
    user = index(r"USER ")
    assert steps[user].split()[1] not in ("root", "0")
    assert not any(step.startswith("RUN ") for step in steps[user:])  # nothing after it runs as root
    assert steps[-1].startswith('CMD ["gunicorn"')
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".env", ".git", ".venv", ".dev"} <= set(ignored)  # no secrets or local state in the image


def test_every_setting_read_from_the_environment_is_in_the_example() -> None:
    # .env.example is the list of what a deployment may set: a new setting belongs there too.
    read = set(re.findall(r'env\.\w+\(\s*"([A-Z][A-Z0-9_]*)"', (ROOT / "payments_site" / "settings.py").read_text()))
    documented = set(re.findall(r"^(?:# )?([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.MULTILINE))
    assert read - documented == set()
