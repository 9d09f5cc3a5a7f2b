"""The published OpenAPI schema is the contract: real answers validate against its components, and it documents
what API.md says (list envelopes, every error, security, enums, limits, links, the non-API endpoints)."""

from __future__ import annotations

import jsonschema  # type: ignore[import-untyped]
import pytest

from payments.models import Event, Refund
from payments.representations import event_json, event_with_deliveries_json, order_json, refund_json


@pytest.fixture
def schema(client) -> dict:
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    return response.json()


def as_json_schema(node):
    """OpenAPI 3.0's ``nullable: true`` in JSON Schema's words (``null`` one of the types), everywhere."""
    if isinstance(node, list):
        return [as_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: as_json_schema(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable"):
        if "type" in converted:
            converted["type"] = [converted["type"], "null"]
        else:
            converted = {"anyOf": [converted, {"type": "null"}]}
    return converted


def validate(schema: dict, component: str, instance: dict) -> None:
    """Validate ``instance`` against ``#/components/schemas/<component>`` (refs resolved within the schema)."""
    wrapper = {**as_json_schema(schema), "$ref": f"#/components/schemas/{component}"}
    jsonschema.validate(instance, wrapper, cls=jsonschema.Draft202012Validator)


def test_rendered_orders_refunds_and_events_validate_against_the_published_components(
    schema, client_a, merchant_a, paid_order,
) -> None:
    order = paid_order(merchant_a)
    validate(schema, "Order", order_json(order))
    created = client_a.post("/api/v1/orders", {"merchant_order_no": "S-2", "amount": 5, "currency": "JPY",
                                               "channel": "sandbox", "metadata": {"k": "v"},
                                               "notify_url": "https://merchant.example/hook"}, format="json")
    validate(schema, "Order", created.json())
    refund = client_a.post(f"/api/v1/orders/{order.public_id}/refunds", {"merchant_refund_no": "R-1", "amount": 10},
                           format="json").json()
    validate(schema, "Refund", refund)
    validate(schema, "Refund", refund_json(Refund.objects.get(public_id=refund["id"])))
    event = Event.objects.get(order=order, type="order.succeeded")  # paid_order() fired the transition
    validate(schema, "Event", event_json(event))
    validate(schema, "EventWithDeliveries", event_with_deliveries_json(event))
    validate(schema, "OrderList", client_a.get("/api/v1/orders").json())
    validate(schema, "RefundList", client_a.get(f"/api/v1/orders/{order.public_id}/refunds").json())
    validate(schema, "EventList", client_a.get("/api/v1/events").json())
    validate(schema, "Error", client_a.get("/api/v1/orders/ord_nothing").json())


def test_a_wrong_answer_does_not_validate(schema, merchant_a, paid_order) -> None:
    """The check above can fail: the components are strict about types and enums."""
    rendered = order_json(paid_order(merchant_a))
    with pytest.raises(jsonschema.ValidationError):
        validate(schema, "Order", {**rendered, "status": "paid"})
    with pytest.raises(jsonschema.ValidationError):
        validate(schema, "Order", {**rendered, "amount": "1000"})


def test_the_schema_documents_the_contract(schema) -> None:
    paths = schema["paths"]
    create = paths["/api/v1/orders"]["post"]
    assert set(create["responses"]) >= {"200", "201", "400", "401", "409", "413", "429", "503"}
    assert create["security"] == [{"secretKey": []}]
    assert schema["components"]["securitySchemes"]["secretKey"] == {
        **schema["components"]["securitySchemes"]["secretKey"], "type": "http", "scheme": "bearer"}
    assert "tokenAuth" in schema["components"]["securitySchemes"]
    listing = paths["/api/v1/orders"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert listing == {"$ref": "#/components/schemas/OrderList"}
    order_create = schema["components"]["schemas"]["OrderCreateRequest"]
    refund_create = schema["components"]["schemas"]["RefundCreateRequest"]
    assert set(refund_create["properties"]) == {"merchant_refund_no", "amount", "reason"}
    assert order_create["additionalProperties"] is False
    assert order_create["properties"]["merchant_order_no"]["pattern"] == r"^[A-Za-z0-9_\-.:]{1,64}$"
    assert order_create["properties"]["amount"]["minimum"] == 1
    assert order_create["properties"]["channel"]["enum"] == ["sandbox"]  # the channels this deployment has
    assert set(order_create["properties"]["currency"]["enum"]) == {"CNY", "USD", "EUR", "JPY"}
    refund_responses = paths["/api/v1/orders/{order_id}/refunds"]["post"]["responses"]
    assert {"404", "409", "422"} <= set(refund_responses)
    assert set(create["responses"]["201"]["links"]) == {"GetOrder", "CloseOrder", "CreateRefund", "ListRefunds"}
    assert {"/healthz", "/readyz", "/metrics", "/callbacks/{channel}", "/api/v1/events/{event_id}",
            "/api/v1/events/{event_id}/redeliver", "/api/v1/webhook_secret/rotate",
            "/api/v1/reconciliation/runs"} <= set(paths)
    assert paths["/api/v1/reconciliation/runs"]["get"]["security"] == [{"tokenAuth": []}, {"secretKey": []}]
