"""/metrics in Prometheus text format and JSON log lines, read after a real handoff."""

from __future__ import annotations

import io
import json
import logging

from prometheus_client.parser import text_string_to_metric_families

from agentbot.logs import setup
from tests.conftest import log_to_stderr, returning, wait_for


def samples(text: str) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_after_a_handoff(fake, start_bot):
    maria, conv = returning(fake)
    bot = await start_bot()
    fake.fail("messages", status=500, times=1)
    fake.customer_writes(maria, "again")
    await wait_for(lambda: len(fake.notes(conv.display_id)) == 1, 10, "the handoff and its note")
    await bot.idle()
    status, text = await bot.get("/metrics")
    assert status == 200
    m = samples(text)
    assert m[("agentbot_deliveries_total", (("event", "message_created"), ("outcome", "handoff")))] == 1
    assert m[("agentbot_decisions_total", (("outcome", "handoff"), ("rule", "returning")))] == 1
    assert m[("agentbot_handoffs_total", (("rule", "returning"),))] == 1
    assert m[("agentbot_chatwoot_calls_total", (("endpoint", "toggle_status"), ("status", "200")))] == 1
    assert m[("agentbot_chatwoot_calls_total", (("endpoint", "messages"), ("status", "500")))] == 1
    assert m[("agentbot_chatwoot_call_seconds_count", (("endpoint", "toggle_status"),))] == 1
    assert m[("agentbot_outbox_depth", ())] == 0
    assert m[("agentbot_dead_letters_total", ())] == 0
    assert m[("agentbot_deliveries_total", (("event", "conversation_opened"), ("outcome", "record")))] == 1


async def test_json_logs_carry_the_ids_and_stdlib_logging_is_routed_in(fake, start_bot):
    buffer = io.StringIO()
    setup("INFO", "json", sink=buffer)
    try:
        maria, conv = returning(fake)
        bot = await start_bot()
        fake.customer_writes(maria, "again")
        await wait_for(lambda: conv.status == "open", 10, "the handoff")
        newcomer = fake.customer_writes(fake.contact("Ana"), "hello").conversation
        await bot.idle()
        logging.getLogger("aiohttp.server").error("something from aiohttp")
    finally:
        log_to_stderr()
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    kept = next(line for line in lines if "keep: new customer" in line["message"])
    delivery = next(d for d in fake.deliveries if d.display_id == newcomer.display_id)
    assert kept["level"] == "INFO"
    assert (kept["account"], kept["inbox"], kept["conversation"], kept["delivery"]) == (
        1,
        3,
        newcomer.display_id,
        delivery.id,
    )
    opened = next(line for line in lines if "opened for humans: Returning customer" in line["message"])
    assert opened["level"] == "INFO" and opened["conversation"] == conv.display_id and opened["account"] == 1
    assert any(line["message"] == "something from aiohttp" and line["level"] == "ERROR" for line in lines)
    assert "bot-token-7" not in buffer.getvalue() and "bot-secret-7" not in buffer.getvalue()
