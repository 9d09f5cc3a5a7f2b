"""Rows written by one SQL statement: the hot paths (an order's create, a state change and what it causes).

An API create writes three rows: the order, its log row and the answer stored for its Idempotency-Key. With
``Model.save()`` in ``transaction.atomic()`` that is BEGIN, three INSERTs and COMMIT: five round trips to
PostgreSQL, each one paid in both processes, and each statement compiled by the ORM in Python first. A state
change is the same: the row's UPDATE, its log row, its event, the event's webhook delivery and the delivery's
notification to the outbox. Written as one data-modifying CTE per row, each is a single statement: one round
trip, and still all or nothing, since a statement is atomic. A unique violation on any row writes none of
them, and the caller sees ``IntegrityError`` as with ``save()``.

Values are prepared by each field as ``save()`` does (``pre_save`` fills ``auto_now`` fields,
``get_db_prep_save`` adapts JSON). A foreign key to a row added earlier to the same statement takes that row's
new id inside the statement (an event's delivery). A ``pg_notify`` can ride along: PostgreSQL sends it only if
the statement commits (``payments.outbox``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Sequence
from functools import cache, lru_cache
from typing import TypeVar

import psycopg
from django.db import IntegrityError, connection, models, transaction
from django_fsm import FSMField

from payments import outbox

M = TypeVar("M", bound=models.Model)

# The field classes this module knows how to write, exactly (a subclass may prepare values differently, so it
# is not taken for its parent). AS_IS: psycopg adapts the Python value as Django would, since their
# get_db_prep_save() changes nothing (a str, an int, a bool, an aware datetime, a foreign key's id); so it
# is skipped. PREPARED: their value goes through get_db_prep_save() (JSON). Any other field is refused when
# the model is first written: check how Django prepares it, then add it to one of the two.
AS_IS: frozenset[type[models.Field]] = frozenset({
    models.CharField, models.URLField, FSMField, models.IntegerField, models.BigIntegerField,
    models.PositiveIntegerField, models.PositiveSmallIntegerField, models.BooleanField, models.DateTimeField,
    models.ForeignKey, models.TextField,
})
PREPARED: frozenset[type[models.Field]] = frozenset({models.JSONField})


@cache
def _quote(name: str | None) -> str:
    assert name is not None  # concrete fields have a column
    return connection.ops.quote_name(name)


@cache
def _fields(model: type[models.Model]) -> list[tuple[models.Field, bool]]:
    """The columns ``model`` writes (all but the primary key), each with whether its value goes as it is."""
    fields = [field for field in model._meta.local_concrete_fields if not field.primary_key]
    for field in fields:
        if type(field) not in AS_IS | PREPARED:
            raise TypeError(
                f"payments.db cannot write {model.__name__}.{field.name}, a {type(field).__name__}: add its class to"
                " payments.db.AS_IS or PREPARED once you know how Django prepares its values"
            )
    return [(field, type(field) in AS_IS) for field in fields]


class Statement:
    """Rows to INSERT and UPDATE together. ``insert`` and ``update`` prepare a row's values at once, so a row
    added later may carry what an earlier one became (an order's timestamps in the answer stored for its
    request)."""

    def __init__(self) -> None:
        self._rows: list[models.Model] = []
        self._statements: list[str] = []
        self._params: list[object] = []
        # (row, foreign key field, the row it refers to): ids known only once the statement has run.
        self._references: list[tuple[models.Model, models.Field, models.Model]] = []

    def insert(self, row: models.Model) -> Statement:
        if row.pk is not None:
            raise ValueError(f"{row!r} is already saved")
        model = type(row)
        values = []
        for field, as_is in _fields(model):
            earlier = self._earlier_row(row, field)
            if earlier is not None:
                # The row it refers to is new in this statement: its id is what that row's CTE returns.
                values.append(f"(SELECT * FROM r{self._rows.index(earlier)})")
                self._references.append((row, field, earlier))
                continue
            value = field.pre_save(row, True)  # fills auto_now fields, as save() does
            self._params.append(value if as_is else field.get_db_prep_save(value, connection))
            values.append("%s")
        columns = ", ".join(_quote(field.column) for field, _ in _fields(model))
        self._add(row, f"INSERT INTO {_quote(model._meta.db_table)} ({columns}) VALUES ({', '.join(values)})"
                       f" RETURNING {_quote(model._meta.pk.column)}")
        return self

    def update(self, row: models.Model, fields: Collection[str] | None = None) -> Statement:
        """Write the columns of a saved row, as ``save(update_fields=fields)`` does: every one by default, or those
        named (an ``auto_now`` field takes the time when it is written)."""
        if row.pk is None:
            raise ValueError(f"{row!r} is not saved")
        model = type(row)
        assignments = []
        for field, as_is in _fields(model):
            if fields is not None and field.name not in fields:
                continue
            value = field.pre_save(row, False)
            self._params.append(value if as_is else field.get_db_prep_save(value, connection))
            assignments.append(f"{_quote(field.column)} = %s")
        self._params.append(row.pk)
        pk = _quote(model._meta.pk.column)
        self._add(row, f"UPDATE {_quote(model._meta.db_table)} SET {', '.join(assignments)} WHERE {pk} = %s"
                       f" RETURNING {pk}")
        return self

    def _add(self, row: models.Model, sql: str) -> None:
        self._statements.append(sql)
        self._rows.append(row)

    def _earlier_row(self, row: models.Model, field: models.Field) -> models.Model | None:
        if not isinstance(field, models.ForeignKey) or not field.is_cached(row):
            return None
        related = field.get_cached_value(row)
        if related is None or related.pk is not None:
            return None
        if not any(related is earlier for earlier in self._rows):
            raise ValueError(f"{row!r}.{field.name} refers to a row that is neither saved nor in this statement")
        return related

    def run(self, *, enqueue: str | None = None, enqueue_for: models.Model | None = None,
            savepoint: bool = True) -> None:
        """Write every row, or none. With ``enqueue``, the outbox enqueues that work for ``enqueue_for`` (by
        default the first row), once the statement has committed. Inside a caller's transaction, a savepoint
        (``savepoint``) keeps a violation from aborting it: for a caller that handles the violation (the create's
        duplicates), not for one that rolls back anyway."""
        ctes = ", ".join(f"r{i} AS ({sql})" for i, sql in enumerate(self._statements))
        ids = ", ".join(f"(SELECT * FROM r{i})" for i in range(len(self._rows)))
        params = list(self._params)
        if enqueue:
            index = 0 if enqueue_for is None else next(i for i, row in enumerate(self._rows) if row is enqueue_for)
            expression, notify_params = outbox.notify_sql(enqueue, f"SELECT * FROM r{index}")
            ids += ", " + expression
            params += notify_params
        # Outside a transaction (a request, in autocommit) the statement is its own and needs no BEGIN or COMMIT.
        atomic = savepoint and connection.in_atomic_block
        with transaction.atomic() if atomic else contextlib.nullcontext():
            row_ids = fetch_one(f"WITH {ctes} SELECT {ids}", params)
        assert row_ids is not None  # the statement returns one row, or raises
        # The ids come first, in the order the rows were added; pg_notify's (empty) result may follow.
        for row, row_id in zip(self._rows, row_ids[: len(self._rows)], strict=True):
            row.pk = row_id
            row._state.adding = False
            row._state.db = connection.alias
        for row, field, earlier in self._references:
            setattr(row, field.attname, earlier.pk)


@cache
def _select_sql(model: type[models.Model], columns: tuple[str, ...], lock: bool) -> str:
    _fields(model)  # the fence: only models whose every field this module knows
    selected = ", ".join(_quote(field.column) for field in model._meta.concrete_fields)
    where = " AND ".join(f"{_quote(column)} = %s" for column in columns)
    return f"SELECT {selected} FROM {_quote(model._meta.db_table)} WHERE {where}{' FOR UPDATE' if lock else ''}"


def get(model: type[M], *, lock: bool = False, **where: object) -> M | None:
    """The row whose columns have these values (a unique key: ``pk=``, or ``public_id=`` and maybe its owner), or
    None; with ``lock``, locked for the caller's transaction. ``filter(...).first()`` (or ``select_for_update()``)
    for the hot paths: a prepared statement, not compiled by the ORM on every call."""
    fields = [model._meta.pk if name == "pk" else model._meta.get_field(name) for name in where]
    columns = tuple(field.column for field in fields if isinstance(field, models.Field))
    assert len(columns) == len(where), "columns only"
    row = fetch_one(_select_sql(model, columns, lock), list(where.values()))
    if row is None:
        return None
    concrete = model._meta.concrete_fields
    values = [field.from_db_value(value, None, connection) if hasattr(field, "from_db_value") else value
              for field, value in zip(concrete, row, strict=True)]
    return model.from_db(connection.alias, [field.attname for field in concrete], values)


def locked(model: type[M], **where: object) -> M | None:
    """``get(model, lock=True, ...)``: the row, locked for the caller's transaction."""
    return get(model, lock=True, **where)


def fetch_one(sql: str, params: Sequence[object]) -> tuple | None:
    """The first row of a statement that runs for every order, prepared on the server.

    Django's cursors bind parameters on the client, quoting each value in Python, and never prepare. Bound on the
    server and prepared once per connection, a statement costs both processes less. (Prepared statements, like
    the advisory locks in payments.idempotency, need a session-pooled or direct connection.) The statement goes
    as PostgreSQL reads it, ``$1``-numbered (a raw cursor): psycopg would otherwise parse the ``%s`` out of it on
    every call, since it caches that only for short statements with few parameters, and a state change's is
    neither. Values come back as psycopg reads them under Django's adapters: ``jsonb`` as text."""
    with connection.cursor() as django_cursor, connection.wrap_database_errors:
        with psycopg.RawCursor(django_cursor.cursor.connection) as cursor:
            cursor.execute(_numbered(sql), params, prepare=True)
            return cursor.fetchone()


@lru_cache(maxsize=1024)
def _numbered(sql: str) -> bytes:
    """``sql`` with its ``%s`` placeholders numbered ``$1``, ``$2``…. The statements run here (this module's,
    and the few hot ones services pass to ``fetch_one``) hold no other ``%``."""
    parts = sql.split("%s")
    return "".join(part + (f"${i}" if i < len(parts) else "") for i, part in enumerate(parts, start=1)).encode()


def violated_constraint(exc: IntegrityError) -> str | None:
    """The name of the constraint an ``IntegrityError`` is about, as PostgreSQL reports it."""
    diag = getattr(exc.__cause__, "diag", None)
    return getattr(diag, "constraint_name", None)
