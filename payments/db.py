"""New rows written by one SQL statement: the order-create hot path.

An API create writes three rows: the order, its log row and the answer stored for its Idempotency-Key. With
``Model.save()`` in ``transaction.atomic()`` that is BEGIN, three INSERTs and COMMIT: five round trips to
PostgreSQL, each one paid in both processes. Written as one data-modifying CTE per row, it is a single
statement: one round trip, and still all or nothing, since a statement is atomic. A unique violation on
any row writes none of them, and the caller sees ``IntegrityError`` as with ``save()``.

Values are prepared by each field as ``save()`` does (``pre_save`` fills ``auto_now`` fields,
``get_db_prep_save`` adapts JSON). A ``pg_notify`` can ride along: PostgreSQL sends it only if the statement
commits (``payments.outbox``).
"""

from __future__ import annotations

import contextlib
from functools import cache

import psycopg
from django.db import IntegrityError, connection, models, transaction

from payments import outbox


# Fields whose Python value psycopg adapts as Django would: their get_db_prep_save() changes nothing (an aware
# datetime, a str, an int, a bool), so it is skipped. Others (JSON) go through it.
_AS_IS = {"CharField", "IntegerField", "BigIntegerField", "PositiveIntegerField", "PositiveSmallIntegerField",
          "BooleanField", "DateTimeField", "ForeignKey"}


@cache
def _insert_sql(model: type[models.Model]) -> tuple[list[tuple[models.Field, bool]], str]:
    fields = [field for field in model._meta.local_concrete_fields if not field.primary_key]
    quote = connection.ops.quote_name
    columns = ", ".join(quote(field.column) for field in fields)
    values = ", ".join(["%s"] * len(fields))
    pk = quote(model._meta.pk.column)
    sql = f"INSERT INTO {quote(model._meta.db_table)} ({columns}) VALUES ({values}) RETURNING {pk}"
    return [(field, field.get_internal_type() in _AS_IS) for field in fields], sql


class Insert:
    """Rows to INSERT together. ``add`` prepares a row's values at once, so a row added later may carry
    what an earlier one became (an order's timestamps in the answer stored for its request)."""

    def __init__(self) -> None:
        self._rows: list[models.Model] = []
        self._statements: list[str] = []
        self._params: list[object] = []

    def add(self, row: models.Model) -> models.Model:
        if row.pk is not None:
            raise ValueError(f"{row!r} is already saved")
        fields, sql = _insert_sql(type(row))
        for field, as_is in fields:
            value = field.pre_save(row, True)  # fills auto_now fields, as save() does
            self._params.append(value if as_is else field.get_db_prep_save(value, connection))
        self._statements.append(sql)
        self._rows.append(row)
        return row

    def run(self, *, notify_task: str | None = None) -> None:
        """Write every row, or none. With ``notify_task``, ``payments.outbox`` enqueues that task for the
        first row, once the statement has committed."""
        ctes = ", ".join(f"r{i} AS ({sql})" for i, sql in enumerate(self._statements))
        ids = ", ".join(f"(SELECT * FROM r{i})" for i in range(len(self._rows)))
        params = list(self._params)
        if notify_task:
            ids += ", pg_notify(%s, %s || (SELECT * FROM r0))"
            params += [outbox.CHANNEL, outbox.payload_prefix(notify_task)]
        # Inside a caller's transaction, a savepoint keeps a violation from aborting it; outside one (a
        # request, in autocommit) the statement is its own transaction and needs no BEGIN or COMMIT.
        with transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext():
            with connection.cursor() as django_cursor, connection.wrap_database_errors:
                # Django's cursors bind parameters on the client, quoting each value in Python, and never
                # prepare. This statement runs for every order: bound on the server and prepared once per
                # connection, it costs both processes less. (Prepared statements, like the advisory locks
                # in payments.idempotency, need a session-pooled or direct connection.)
                with psycopg.Cursor(django_cursor.cursor.connection) as cursor:
                    cursor.execute(f"WITH {ctes} SELECT {ids}", params, prepare=True)
                    row_ids = cursor.fetchone()
        for row, row_id in zip(self._rows, row_ids):
            row.pk = row_id
            row._state.adding = False
            row._state.db = connection.alias


def violated_constraint(exc: IntegrityError) -> str | None:
    """The name of the constraint an ``IntegrityError`` is about, as PostgreSQL reports it."""
    diag = getattr(exc.__cause__, "diag", None)
    return getattr(diag, "constraint_name", None)
