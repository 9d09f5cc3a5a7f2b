"""payments_site.db_backend: a connection that ran a statement a moment ago is not health-checked; an idle one is."""

from __future__ import annotations

import pytest
from django.db import connections

from payments_site.db_backend.base import FRESH_S, DatabaseWrapper


@pytest.mark.django_db
def test_only_an_idle_connection_is_health_checked() -> None:
    wrapper = connections["default"]
    assert isinstance(wrapper, DatabaseWrapper)
    checks: list[bool] = []
    real_check = wrapper.is_usable

    def counted_check() -> bool:
        checks.append(True)
        return real_check()

    wrapper.is_usable = counted_check  # type: ignore[method-assign]
    try:
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT 1")
        wrapper.health_check_done = False  # as at the start of the next request or task
        wrapper.close_if_health_check_failed()
        assert checks == [] and wrapper.health_check_done

        wrapper._used_at -= FRESH_S + 1  # the same connection, idle for longer than FRESH_S
        wrapper.health_check_done = False
        wrapper.close_if_health_check_failed()
        assert checks == [True] and wrapper.connection is not None  # checked, and healthy
    finally:
        del wrapper.is_usable
