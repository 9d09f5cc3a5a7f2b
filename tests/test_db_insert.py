"""``payments.db`` writes rows as Django's ``save()`` would, column for column, and refuses fields it does not know."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from django.db import connection
from django.db.models import Model
from django.utils import timezone

from payments import db
from payments.models import ChannelNotification, IdempotencyRecord, Order, TransitionLog
from tests.conftest import make_actor

# Columns that differ between two rows by nature: the keys, and the times save() takes from the clock.
DIFFERENT_BY_NATURE = {"id", "public_id", "merchant_order_no", "created_at", "updated_at", "object_id"}


def row(model: type[Model], pk: int) -> dict:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT to_jsonb(t)::text FROM {model._meta.db_table} t WHERE id = %s", [pk])
        return json.loads(cursor.fetchone()[0])


def an_order(merchant, number: str) -> Order:
    return Order(
        merchant=merchant, merchant_order_no=number, amount=1050, currency="CNY", channel="sandbox",
        description="Café, 咖啡 & \"quotes\"", notify_url="https://merchant.example/hooks?a=1&b=2",
        metadata={"cart": "77", "emoji": "☕", "nested": {"deep": [1, 2.5, None, True]}},
        expires_in=600, expires_at=timezone.now() + dt.timedelta(seconds=600), trace_id="ab" * 16,
    )


@pytest.mark.django_db
def test_an_order_written_by_db_is_the_row_save_writes() -> None:
    merchant = make_actor("Fence merchant").merchant
    saved = an_order(merchant, "FENCE-ORM")
    saved.expires_at = expires_at = timezone.now() + dt.timedelta(seconds=600)
    saved.save()
    inserted = an_order(merchant, "FENCE-DB")
    inserted.expires_at = expires_at
    log_row = TransitionLog(object_type="order", object_id=inserted.public_id, transition="create", from_state="",
                            to_state="created", source="api", trace_id="cd" * 16, detail={"k": ["v", 1]})
    record = IdempotencyRecord(merchant=merchant, key="fence-key", fingerprint="f" * 64, response_status=201,
                               response_body={"id": inserted.public_id, "amount": 1050}, expires_at=expires_at)
    rows = db.Statement()
    for obj in (inserted, log_row, record):
        rows.insert(obj)
    rows.run()

    by_db, by_orm = row(Order, inserted.pk), row(Order, saved.pk)
    assert set(by_db) == set(by_orm) and len(by_db) == len(Order._meta.concrete_fields)
    for column in sorted(set(by_db) - DIFFERENT_BY_NATURE):
        assert by_db[column] == by_orm[column], column
    for column in ("created_at", "updated_at"):
        assert by_db[column] is not None
    Order.objects.get(pk=inserted.pk)  # and the ORM reads it back

    # The other two models of the create, against their ORM twins.
    log_twin = TransitionLog.objects.create(object_type="order", object_id=saved.public_id, transition="create",
                                            from_state="", to_state="created", source="api", trace_id="cd" * 16,
                                            detail={"k": ["v", 1]})
    record_twin = IdempotencyRecord.objects.create(merchant=merchant, key="fence-key-2", fingerprint="f" * 64,
                                                   response_status=201, response_body=record.response_body,
                                                   expires_at=expires_at)
    for model, a, b, own in ((TransitionLog, log_row, log_twin, set()), (IdempotencyRecord, record, record_twin,
                                                                        {"key"})):
        by_db, by_orm = row(model, a.pk), row(model, b.pk)
        assert set(by_db) == set(by_orm)
        for column in sorted(set(by_db) - DIFFERENT_BY_NATURE - own):
            assert by_db[column] == by_orm[column], (model.__name__, column)


def test_a_field_class_db_does_not_know_is_refused_loudly() -> None:
    from django.db import models

    class Priced(models.Model):
        price = models.DecimalField(max_digits=10, decimal_places=2)  # payments.db was never checked against it

        class Meta:
            app_label = "payments"
            managed = False

    with pytest.raises(TypeError, match=r"Priced\.price, a DecimalField"):
        db.Statement().insert(Priced(price=1))


def test_a_subclass_of_a_known_field_is_not_taken_for_it() -> None:
    from django.db import models

    class Lowercase(models.CharField):
        """Prepares its value unlike its parent: writing it as a CharField would store the wrong text."""

        def get_db_prep_save(self, value, connection):
            return value.lower()

    class Shouting(models.Model):
        word = Lowercase(max_length=10)

        class Meta:
            app_label = "payments"
            managed = False

    with pytest.raises(TypeError, match=r"Shouting\.word, a Lowercase"):
        db.Statement().insert(Shouting(word="HELLO"))


@pytest.mark.django_db
def test_an_update_by_db_is_the_row_save_writes() -> None:
    merchant = make_actor("Fence merchant 2").merchant
    by_db, by_orm = an_order(merchant, "UPD-DB"), an_order(merchant, "UPD-ORM")
    for order in (by_db, by_orm):
        order.save()
        order.attention, order.charge_attempts, order.metadata = "ops look", 3, {"after": "☕"}
    rows = db.Statement()
    rows.update(by_db)
    rows.run()
    by_orm.save()
    a, b = row(Order, by_db.pk), row(Order, by_orm.pk)
    assert a["attention"] == "ops look" and a["metadata"] == {"after": "☕"}
    for column in sorted(set(a) - DIFFERENT_BY_NATURE - {"expires_at"}):
        assert a[column] == b[column], column

    # With fields, only those are written, as save(update_fields=...) does; auto_now fields when named.
    by_db.attention, by_db.charge_attempts = "", 9
    db.Statement().update(by_db, fields=["charge_attempts"]).run()
    again = row(Order, by_db.pk)
    assert (again["charge_attempts"], again["attention"], again["updated_at"]) == (9, "ops look", a["updated_at"])
    db.Statement().update(by_db, fields=["attention", "updated_at"]).run()
    assert row(Order, by_db.pk)["updated_at"] > a["updated_at"]


@pytest.mark.django_db
def test_a_row_refers_to_one_new_in_the_same_statement() -> None:
    from payments.models import Event, WebhookDelivery

    merchant = make_actor("Fence merchant 3").merchant
    event = Event(merchant=merchant, type="order.pending", data={"k": 1})
    delivery = WebhookDelivery(event=event, url="https://merchant.example/hook", next_attempt_at=timezone.now())
    rows = db.Statement()
    rows.insert(event)
    rows.insert(delivery)
    rows.run()
    assert delivery.event_id == event.pk
    assert WebhookDelivery.objects.get(pk=delivery.pk).event_id == event.pk

    orphan = WebhookDelivery(event=Event(merchant=merchant, type="order.pending", data={}), url="https://x.example/")
    with pytest.raises(ValueError, match="neither saved nor in this statement"):
        db.Statement().insert(orphan)


@pytest.mark.django_db(transaction=True)
def test_locked_reads_the_row_the_orm_reads() -> None:
    from django.db import transaction

    merchant = make_actor("Fence merchant 4").merchant
    order = an_order(merchant, "LOCKED-1")
    order.save()
    notification = ChannelNotification.objects.create(channel="sandbox", body="a=1\\x00", payload={"k": ["v"]},
                                                      order=order, headers={"h": "1"})
    with transaction.atomic():
        for model, obj, where in ((Order, order, {"public_id": order.public_id}),
                                  (ChannelNotification, notification, {"pk": notification.pk})):
            by_db, by_orm = db.locked(model, **where), model.objects.get(pk=obj.pk)
            assert by_db is not None and not by_db._state.adding
            for field in model._meta.concrete_fields:
                assert getattr(by_db, field.attname) == getattr(by_orm, field.attname), field.name
        assert db.locked(Order, pk=10**12) is None
