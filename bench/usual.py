"""The usual way: a synchronous Flask app with `requests` (a new connection per call), run under
gunicorn with 2 workers, making the same decision and the same Chatwoot call as the bot."""
from __future__ import annotations

import os

import requests
from flask import Flask, request

CHATWOOT = os.environ["CHATWOOT_URL"]
TOKEN = os.environ["CHATWOOT_BOT_TOKEN"]
app = Flask(__name__)


@app.post("/webhook")
def webhook():
    data = request.get_json(force=True, silent=True)
    if not isinstance(data, dict):
        return {"error": "bad body"}, 400
    conv = data.get("conversation") or {}
    meta = conv.get("meta") or {}
    returning = conv.get("first_reply_created_at") or ((meta.get("assignee") or {}).get("type") == "user")
    if (data.get("event") == "message_created" and data.get("message_type") == "incoming"
            and not data.get("private") and conv.get("status") == "pending" and returning):
        url = f"{CHATWOOT}/api/v1/accounts/{data['account']['id']}/conversations/{conv['id']}/toggle_status"
        requests.post(url, json={"status": "open"}, headers={"api_access_token": TOKEN}, timeout=5)
    return {"ok": True}


@app.get("/healthz")
def healthz():
    return {"status": "ok"}
