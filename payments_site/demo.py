"""`make demo`: a scripted tour against a running `make run` — create, pay, refund, and print each state."""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

import httpx


def wait_for(client: httpx.Client, path: str, wanted: set[str], timeout_s: float = 30) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        obj = client.get(path).raise_for_status().json()
        if obj["status"] in wanted or time.monotonic() > deadline:
            return obj
        time.sleep(0.3)


def wait_ready(base_url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(base_url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)


def show(label: str, obj: dict) -> None:
    extra = f" amount_refunded={obj['amount_refunded']}" if obj.get("object") == "order" else ""
    print(f"{label:<28} {obj['id']}  status={obj['status']}{extra}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--key-file", default=".dev/demo_key")
    parser.add_argument("--wait", action="store_true", help="wait for the web process to be ready first")
    parser.add_argument("--channels", default="sandbox,alipay,wechatpay", help="comma-separated, in order")
    args = parser.parse_args()
    if args.wait:
        wait_ready(args.base_url)
    key = Path(args.key_file).read_text().strip()
    client = httpx.Client(base_url=args.base_url + "/api/v1", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    ok = True
    for channel in args.channels.split(","):
        print(f"--- {channel}")
        ok = tour(client, channel) and ok
    return 0 if ok else 1


def tour(client: httpx.Client, channel: str) -> bool:
    """Create, pay and refund one order on ``channel``; True if it ends fully refunded."""
    order = client.post(
        "/orders",
        json={"merchant_order_no": f"DEMO-{uuid.uuid4().hex[:10]}", "amount": 1050, "currency": "CNY",
              "channel": channel, "description": "Coffee beans 1kg"},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    ).raise_for_status().json()
    show("created", order)
    order = wait_for(client, f"/orders/{order['id']}", {"pending", "failed"})
    show("channel holds it", order)
    if order["status"] != "pending":
        print("the charge did not reach pending; is `make run` running?", file=sys.stderr)
        return False
    print(f"{'paying at':<28} {order['pay_url']}")
    httpx.post(order["pay_url"], data={"action": "pay"}, timeout=10).raise_for_status()
    order = wait_for(client, f"/orders/{order['id']}", {"succeeded"})
    show("paid (channel notified us)", order)

    for number, amount in (("R-1", 500), ("R-2", 550)):
        refund = client.post(f"/orders/{order['id']}/refunds", json={"merchant_refund_no": number, "amount": amount},
                             headers={"Idempotency-Key": uuid.uuid4().hex}).raise_for_status().json()
        show(f"refund {amount} requested", refund)
        refund = wait_for(client, f"/refunds/{refund['id']}", {"succeeded", "failed"})
        show(f"refund {amount}", refund)
        order = wait_for(client, f"/orders/{order['id']}", {"partially_refunded", "refunded"})
        show("order", order)
    events = client.get("/events", params={"limit": 100}).json()["data"]
    ours = [e for e in events if order["id"] in (e["data"]["object"]["id"], e["data"]["object"].get("order"))]
    print("events:", ", ".join(event["type"] for event in reversed(ours)))
    return order["status"] == "refunded"


if __name__ == "__main__":
    sys.exit(main())
