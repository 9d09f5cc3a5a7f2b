"""`manage.py setup_demo` (`make run`): the admin / admin superuser exists only in development."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command


@pytest.mark.django_db
def test_no_admin_with_a_known_password_outside_development(tmp_path: Path, settings) -> None:
    settings.DEBUG = False
    call_command("setup_demo", key_file=str(tmp_path / "demo_key"))
    assert not get_user_model().objects.filter(username="admin").exists()
    assert (tmp_path / "demo_key").read_text().strip()  # the demo merchant still is


@pytest.mark.django_db
def test_development_gets_the_admin_user(tmp_path: Path, settings) -> None:
    settings.DEBUG = True
    call_command("setup_demo", key_file=str(tmp_path / "demo_key"))
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser and admin.check_password("admin")
