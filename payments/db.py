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
from django_fsm import FSMField

from payments import outbox

# The field classes this module knows how to write, exactly (a subclass may prepare values differently, so it
# is not taken for its parent). AS_IS: psycopg adapts the Python value as Django would, since their
# get_db_prep_save() changes nothing (a str, an int, a bool, an aware datetime, a foreign key's id); so it
# is skipped. PREPARED: their value goes through get_db_prep_save() (JSON). Any other field is refused when
# the model is first written: check how Django prepares it, then add it to one of the two.
AS_IS: frozenset[type[models.Field]] = frozenset({
    models.CharField, models.URLField, FSMField, models.IntegerField, models.BigIntegerField,
    models.PositiveIntegerField, models.PositiveSmallIntegerField, models.BooleanField, models.DateTimeField,
    models.ForeignKey,
})
PREPARED: frozenset[type[models.Field]] = frozenset({models.JSONField})


@cache
def _insert_sql(model: type[models.Model]) -> tuple[list[tuple[models.Field, bool]], str]:
    fields = [field for field in model._meta.local_concrete_fields if not field.primary_key]
    for field in fields:
        if type(field) not in AS_IS | PREPARED:
            raise TypeError(
                f"payments.db cannot write {model.__name__}.{field.name}, a {type(field).__name__}: add its class to"
                " payments.db.AS_IS or PREPARED once you know how Django prepares its values"
            )
    def quote(name: str | None) -> str:
        assert name is not None  # concrete fields have a column
        return connection.ops.quote_name(name)

    columns = ", ".join(quote(field.column) for field in fields)
    values = ", ".join(["%s"] * len(fields))
    pk = quote(model._meta.pk.column)
    sql = f"INSERT INTO {quote(model._meta.db_table)} ({columns}) VALUES ({values}) RETURNING {pk}"
    return [(field, type(field) in AS_IS) for field in fields], sql


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

    def run(self, *, enqueue: str | None = None) -> None:
        """Write every row, or none. With ``enqueue``, the outbox enqueues that work for the first row, once the
        statement has committed."""
        ctes = ", ".join(f"r{i} AS ({sql})" for i, sql in enumerate(self._statements))
        ids = ", ".join(f"(SELECT * FROM r{i})" for i in range(len(self._rows)))
        params = list(self._params)
        if enqueue:
            expression, notify_params = outbox.notify_sql(enqueue, "SELECT * FROM r0")
            ids += ", " + expression
            params += notify_params
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
        assert row_ids is not None  # the statement returns one row, or raises
        # The ids come first, in the order the rows were added; pg_notify's (empty) result may follow.
        for row, row_id in zip(self._rows, row_ids[: len(self._rows)], strict=True):
            row.pk = row_id
            row._state.adding = False
            row._state.db = connection.alias


def violated_constraint(exc: IntegrityError) -> str | None:
    """The name of the constraint an ``IntegrityError`` is about, as PostgreSQL reports it."""
    diag = getattr(exc.__cause__, "diag", None)
    return getattr(diag, "constraint_name", None)
