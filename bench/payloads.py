"""Delivery bodies for the workloads, built from the real-shaped fixtures in tests/payloads."""
from __future__ import annotations

import copy
import json
from pathlib import Path

PAYLOADS = Path(__file__).resolve().parents[1] / "tests" / "payloads"
TOKEN = "987654321"  # replaced by a unique number per delivery (conversation and message id)


def _fixture(name: str) -> dict:
    return json.loads((PAYLOADS / f"{name}.json").read_text())


def _dump(body: dict) -> str:
    return json.dumps(body, separators=(",", ":"))


def ignore_bodies() -> list[str]:
    """The bulk of real traffic: echoes, agents' replies, receipts and events on open conversations."""
    outgoing = _fixture("message_created_outgoing")
    private = _fixture("message_created_private_note")
    updated = _fixture("message_updated")
    incoming_open = _fixture("message_created_incoming_pending")
    incoming_open["conversation"]["status"] = "open"
    events = [_fixture(n) for n in ("conversation_updated", "conversation_status_changed")]
    for e in events:
        e["status"] = "open"
    return [_dump(b) for b in (outgoing, private, updated, incoming_open, *events)]


def handoff_template() -> str:
    """A returning customer on a pending conversation; TOKEN marks the unique ids."""
    body = copy.deepcopy(_fixture("message_created_incoming_reopened"))
    body["id"] = int(TOKEN)
    body["conversation"]["id"] = int(TOKEN)
    body["conversation"]["messages"][0]["id"] = int(TOKEN)
    body["conversation"]["messages"][0]["conversation_id"] = int(TOKEN)
    return _dump(body)


def handoff_body(n: int, template: str | None = None) -> bytes:
    return (template or handoff_template()).replace(TOKEN, str(n)).encode()


def relay_template() -> str:
    """A new customer's first message on a pending conversation (no rule fires: the team's bot's);
    its conversation, message and contact ids are TOKEN, so each delivery is another new customer."""
    ids = {42, 4711, 58}  # the fixture's conversation, message and contact

    def renumber(node):
        if isinstance(node, dict):
            return {k: renumber(v) for k, v in node.items()}
        if isinstance(node, list):
            return [renumber(v) for v in node]
        return int(TOKEN) if type(node) is int and node in ids else node

    return _dump(renumber(_fixture("message_created_incoming_pending")))
