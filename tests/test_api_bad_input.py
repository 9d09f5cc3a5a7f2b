"""Bad input tried as a new user would (issue 12): each is a 4xx in the error envelope, never a 500."""

from __future__ import annotations

import io
import json
import os

import pytest

from payments.models import ChannelNotification, Order

ORDERS = "/api/v1/orders"
BODY = {"merchant_order_no": "A-1", "amount": 1050, "currency": "CNY", "channel": "sandbox"}


@pytest.mark.parametrize("path", [
    f"{ORDERS}?merchant_order_no=a%00b", f"{ORDERS}?starting_after=ord_%00", "/api/v1/events?type=a%00",
    "/api/v1/events?starting_after=evt_%00", f"{ORDERS}/ord_%00x", f"{ORDERS}/ord_%00/refunds",
    "/api/v1/refunds/rfd_%00", "/api/v1/events/evt_%00",
])
def test_a_nul_in_a_path_or_query_value_is_400(client_a, assert_api_error, path: str) -> None:
    assert_api_error(client_a.get(path), 400, "invalid_request_error", "parameter_invalid")


@pytest.mark.parametrize("path", [f"{ORDERS}/ord_%00/close", f"{ORDERS}/ord_%00/refunds"])
def test_a_nul_in_a_post_path_is_400(client_a, assert_api_error, path: str) -> None:
    response = client_a.post(path, {"merchant_refund_no": "R-1", "amount": 1}, format="json")
    assert_api_error(response, 400, "invalid_request_error", "parameter_invalid")


def test_a_nul_in_a_metadata_key_is_400(client_a, assert_api_error) -> None:
    response = client_a.post(ORDERS, {**BODY, "metadata": {"\u0000": "v"}}, format="json")
    assert_api_error(response, 400, "invalid_request_error", "parameter_invalid", "metadata")
    response = client_a.post(ORDERS, {**BODY, "metadata": {"k": "a\u0000"}}, format="json")
    assert_api_error(response, 400, "invalid_request_error", "parameter_invalid", "metadata")
    assert not Order.objects.exists()


def test_a_database_refusal_of_a_value_is_400_not_500(client_a, assert_api_error, monkeypatch) -> None:
    """Whatever NUL the checks miss, PostgreSQL's refusal of the value is the request's fault (errors.py)."""
    from payments import selectors

    real = selectors.order_list
    monkeypatch.setattr(selectors, "order_list", lambda **kw: real(**{**kw, "merchant_order_no": "a\x00b"}))
    assert_api_error(client_a.get(f"{ORDERS}?merchant_order_no=ab"), 400, "invalid_request_error",
                     "parameter_invalid")


@pytest.mark.parametrize("path", [ORDERS, f"{ORDERS}/ord_x/refunds"])
def test_a_10_mb_body_is_413(client_a, assert_api_error, path: str) -> None:
    big = json.dumps({**BODY, "description": "x" * 10_000_000})
    response = client_a.post(path, big, content_type="application/json", HTTP_IDEMPOTENCY_KEY="big-1")
    assert_api_error(response, 413, "invalid_request_error", "request_too_large")
    assert not Order.objects.exists()


def test_a_body_just_under_the_limit_is_read(client_a, assert_api_error, settings) -> None:
    settings.API_MAX_BODY_BYTES = 200
    body = json.dumps({**BODY, "description": "x" * 50})
    assert len(body) < 200
    assert client_a.post(ORDERS, body, content_type="application/json").status_code == 201
    response = client_a.post(ORDERS, json.dumps({**BODY, "description": "x" * 200}),
                             content_type="application/json")
    assert_api_error(response, 413, "invalid_request_error", "request_too_large")


def _chunked(client, body: bytes):
    """A POST without Content-Length, its body de-chunked by the server (gunicorn's ``wsgi.input_terminated``)."""
    return client.generic("POST", ORDERS, content_type="application/json", **{
        "CONTENT_LENGTH": "", "HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input": io.BytesIO(body),
        "wsgi.input_terminated": True,
    })


def test_a_chunked_body_over_the_limit_is_413_and_under_it_is_read(client_a, assert_api_error, settings) -> None:
    settings.API_MAX_BODY_BYTES = 1000
    assert_api_error(_chunked(client_a, json.dumps({**BODY, "description": "x" * 2000}).encode()), 413,
                     "invalid_request_error", "request_too_large")
    response = _chunked(client_a, json.dumps(BODY).encode())
    assert response.status_code == 201, response.content


@pytest.mark.parametrize("body", [
    "[" * 100_000,
    json.dumps({**BODY, "metadata": "NEST"}).replace('"NEST"', '{"a": ' * 5000 + "1" + "}" * 5000),
    json.dumps({**BODY, "metadata": "NEST"}).replace('"NEST"', '{"a": ' * 40 + '"1"' + "}" * 40),
])
@pytest.mark.parametrize("key", [None, "deep-1"])
def test_deeply_nested_json_is_400(client_a, assert_api_error, body: str, key: str | None) -> None:
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key else {}
    response = client_a.post(ORDERS, body, content_type="application/json", **headers)
    assert_api_error(response, 400, "invalid_request_error", "invalid_json")
    assert not Order.objects.exists()


def test_nested_json_on_refund_create_is_400(client_a, assert_api_error, merchant_a, paid_order) -> None:
    order = paid_order(merchant_a)
    response = client_a.post(f"{ORDERS}/{order.public_id}/refunds", "[" * 100_000, content_type="application/json")
    assert_api_error(response, 400, "invalid_request_error", "invalid_json")


@pytest.mark.parametrize("path", ["/api/v1/nothing-here", "/api/v1/orders/ord_x/nothing", "/api/nothing",
                                  "/api/v1/orders/"])
def test_an_unknown_api_path_is_a_404_envelope(client_a, assert_api_error, path: str) -> None:
    assert_api_error(client_a.get(path), 404, "invalid_request_error", "not_found")


def test_an_unknown_admin_path_stays_html(admin_client) -> None:
    response = admin_client.get("/not-the-api/")
    assert response.status_code == 404 and "application/json" not in response["Content-Type"]


def test_a_crash_outside_a_view_is_a_500_envelope_under_the_api(rf, settings) -> None:
    from payments.api.errors import handler500

    response = handler500(rf.get("/api/v1/orders"))
    assert response.status_code == 500
    assert json.loads(response.content)["error"]["code"] == "internal_error"
    assert "application/json" not in handler500(rf.get("/admin/")).get("Content-Type", "")


# -- garbage on the channel callbacks ----------------------------------------------------------------------


@pytest.fixture
def every_channel(settings, tmp_path):
    """Alipay and WeChat Pay configured too (with one throwaway RSA key): their callbacks answer, not 404."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from channels.registry import available_channels, get_channel

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private, public = tmp_path / "private.pem", tmp_path / "public.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    settings.ALIPAY_APP_ID, settings.ALIPAY_APP_PRIVATE_KEY_PATH, settings.ALIPAY_PUBLIC_KEY_PATH = (
        "2021000000000001", str(private), str(public))
    settings.WECHATPAY_MCHID, settings.WECHATPAY_APPID, settings.WECHATPAY_APIV3_KEY = (
        "1900000001", "wx0000000000000001", "k" * 32)
    settings.WECHATPAY_MERCHANT_PRIVATE_KEY_PATH, settings.WECHATPAY_PLATFORM_PUBLIC_KEY_PATH = (
        str(private), str(public))
    settings.WECHATPAY_MERCHANT_SERIAL_NO, settings.WECHATPAY_PLATFORM_PUBLIC_KEY_ID = "SERIAL1", "PUB_KEY_ID_1"
    get_channel.cache_clear()
    assert set(available_channels()) == {"sandbox", "alipay", "wechatpay"}
    yield
    get_channel.cache_clear()


@pytest.mark.parametrize("garbage", [os.urandom(2048), b"\x00" * 64, b'{"id": "\x00"}', b"a\x00=b&c=\xff"])
def test_garbage_on_a_callback_is_stored_and_answered_with_the_failure_reply(client, db, every_channel,
                                                                            garbage: bytes) -> None:
    from channels.registry import available_channels, get_channel

    for channel in available_channels():
        before = ChannelNotification.objects.count()
        response = client.post(f"/callbacks/{channel}", garbage, content_type="application/octet-stream")
        expected = get_channel(channel).notification_reply(accepted=False)
        assert (response.status_code, response.content) == (expected.status, expected.body), channel
        row = ChannelNotification.objects.order_by("-pk").first()
        assert ChannelNotification.objects.count() == before + 1 and row is not None
        assert row.state == ChannelNotification.State.REJECTED
        assert "\x00" not in row.body
        if b"\x00" in garbage:
            assert "\\x00" in row.body
        if garbage.isascii() and b"\x00" not in garbage:
            assert row.body == garbage.decode()


def test_an_oversized_callback_is_the_failure_reply(client, db, settings) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = client.post("/callbacks/sandbox", b"x" * 2000, content_type="application/json")
    assert (response.status_code, response.content) == (413, b'{"received":false}')
