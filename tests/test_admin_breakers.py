"""The admin page of the circuit breakers: staff see each channel account's state, ops (and superusers) force it."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from channels.breaker import SharedBreaker
from payments.models import TransitionLog
from tests.admin_support import staff_groups, staff_user

URL = "/admin/breakers/"


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.django_db
def test_superuser_forces_a_breaker_open_and_back_to_auto(sandbox_breaker: SharedBreaker) -> None:
    ops = logged_in(User.objects.create_superuser("ops", "ops@example.com", "x"))
    page = ops.get(URL)
    assert page.status_code == 200
    assert sandbox_breaker.account in page.content.decode() and "force_open" in page.content.decode()

    answer = ops.post(URL, {"key": sandbox_breaker.key, "mode": "force_open"})
    assert answer.status_code == 302
    assert sandbox_breaker.status()["effective"] == "open"
    assert not sandbox_breaker.before_call().allowed

    ops.post(URL, {"key": sandbox_breaker.key, "mode": "auto"})
    assert sandbox_breaker.status()["mode"] == "auto" and sandbox_breaker.before_call().allowed


@pytest.mark.django_db
def test_other_staff_see_the_states_but_cannot_force_them(sandbox_breaker: SharedBreaker) -> None:
    staff = logged_in(User.objects.create_user("support", "s@example.com", "x", is_staff=True))
    assert staff.get(URL).status_code == 200
    assert staff.post(URL, {"key": sandbox_breaker.key, "mode": "force_open"}).status_code == 403
    assert sandbox_breaker.status()["mode"] == "auto"
    assert logged_in(User.objects.create_user("merchant", "m@example.com", "x")).get(URL).status_code == 302


@pytest.mark.django_db
def test_ops_force_a_breaker_and_it_is_logged(sandbox_breaker: SharedBreaker) -> None:
    staff_groups()
    ops = logged_in(staff_user("olga", "ops"))
    assert 'value="force_open"' in ops.get(URL).content.decode()
    assert ops.post(URL, {"key": sandbox_breaker.key, "mode": "force_open"}).status_code == 302
    assert sandbox_breaker.status()["mode"] == "force_open"
    row = TransitionLog.objects.get(object_type="breaker")
    assert (row.detail["by"], row.detail["outcome"]) == ("olga", "force_open")
    for name, group in (("fiona", "finance"), ("sam", "support")):
        other = logged_in(staff_user(name, group))
        assert 'value="force_open"' not in other.get(URL).content.decode()
        assert other.post(URL, {"key": sandbox_breaker.key, "mode": "auto"}).status_code == 403
    assert sandbox_breaker.status()["mode"] == "force_open"
