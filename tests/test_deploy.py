"""The PaaS files: Procfile, Dockerfile essentials (docker build is not available here), app.json."""
from __future__ import annotations

import json
import re
from pathlib import Path

from agentbot.config import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_procfile_runs_the_web_process():
    assert (ROOT / "Procfile").read_text().strip() == "web: python -m agentbot"


def test_dockerfile_essentials():
    text = (ROOT / "Dockerfile").read_text()
    instructions = [line.split(None, 1) for line in re.sub(r"\\\n", " ", text).splitlines()
                    if line.strip() and not line.startswith("#")]
    kinds = [i[0] for i in instructions]
    assert instructions[0] == ["FROM", "python:3.11-slim"]
    user = [i[1] for i in instructions if i[0] == "USER"]
    assert user and user[-1] not in ("root", "0")
    assert kinds.index("USER") < kinds.index("CMD")
    env = " ".join(i[1] for i in instructions if i[0] == "ENV")
    assert "PORT=8080" in env.split()
    # A STORE_URL baked into the image would shadow REDIS_URL (one SQLite per container when scaled);
    # the default relative SQLite path lands in the volume because the process runs in it.
    assert "STORE_URL" not in env
    assert Settings.model_fields["store_url"].default == "sqlite:///agentbot.sqlite3"
    workdir = [i[1] for i in instructions if i[0] == "WORKDIR"][-1]
    assert workdir == "/data" and '["/data"]' in [i[1] for i in instructions if i[0] == "VOLUME"]
    health = next(i[1] for i in instructions if i[0] == "HEALTHCHECK")
    assert "/healthz" in health and "PORT" in health
    assert instructions[-1] == ["CMD", '["python", "-m", "agentbot"]']


def test_app_json_lists_every_setting():
    app = json.loads((ROOT / "app.json").read_text())
    names = {name.upper() for name in Settings.model_fields}
    assert names == set(app["env"])
    for name in ("CHATWOOT_URL", "CHATWOOT_BOT_TOKEN"):
        assert app["env"][name]["required"] is True
    assert all(v["description"] for v in app["env"].values())
    assert any(a["plan"].startswith("heroku-redis") for a in app["addons"])


def test_python_version_is_pinned_for_builders():
    assert (ROOT / ".python-version").read_text().strip() == "3.11"
    assert (ROOT / "runtime.txt").read_text().strip().startswith("python-3.11")
