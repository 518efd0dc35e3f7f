"""The PaaS files: Procfile, Dockerfile essentials (docker build is not available here), app.json,
render.yaml, fly.toml, and the managed-Redis TLS setting against a real redis-server with TLS."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml

from agentbot.config import REQUIRED, Settings
from tests.conftest import free_port, returning, wait_for, without_settings

ROOT = Path(__file__).resolve().parents[1]


def test_procfile_runs_the_web_process():
    assert (ROOT / "Procfile").read_text().strip() == "web: python -m agentbot"


def test_dockerfile_essentials():
    text = (ROOT / "Dockerfile").read_text()
    instructions = [
        line.split(None, 1)
        for line in re.sub(r"\\\n", " ", text).splitlines()
        if line.strip() and not line.startswith("#")
    ]
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
    assert workdir == "/data"
    # Railway builds from a Dockerfile when there is one and refuses VOLUME ("use Railway Volumes").
    assert "VOLUME" not in kinds
    health = next(i[1] for i in instructions if i[0] == "HEALTHCHECK")
    assert "/healthz" in health and "PORT" in health
    assert instructions[-1] == ["CMD", '["python", "-m", "agentbot"]']


def test_app_json_lists_every_setting_but_port_and_has_dokkus_health_check():
    app = json.loads((ROOT / "app.json").read_text())
    names = {name.upper() for name in Settings.model_fields}
    assert names - {"PORT"} == set(app["env"])  # Heroku and Dokku assign PORT: not a field to fill
    # Dokku reads its zero-downtime checks from app.json (there is no `dokku checks:set web /healthz`).
    [check] = app["healthchecks"]["web"]
    assert check["type"] == "startup" and check["path"] == "/healthz" and check["attempts"] >= 1
    for name in ("CHATWOOT_URL", "CHATWOOT_BOT_TOKEN"):
        assert app["env"][name]["required"] is True
    assert all(v["description"] for v in app["env"].values())
    assert any(a["plan"].startswith("heroku-redis") for a in app["addons"])


def test_python_version_is_pinned_for_builders():
    assert (ROOT / ".python-version").read_text().strip() == "3.11"
    assert [line for line in (ROOT / "requirements.txt").read_text().splitlines() if not line.startswith("#")] == ["."]


def test_render_blueprint_is_a_web_service_with_health_check_redis_and_the_required_variables():
    blueprint = yaml.safe_load((ROOT / "render.yaml").read_text())
    web = next(s for s in blueprint["services"] if s["type"] == "web")
    assert web["runtime"] == "python"
    assert web["buildCommand"] == "pip install ." and web["startCommand"] == "python -m agentbot"
    assert web["healthCheckPath"] == "/healthz"
    env = {v["key"]: v for v in web["envVars"]}
    for name in REQUIRED:
        assert env[name.upper()] == {"key": name.upper(), "sync": False}  # the operator is asked at deploy time
    for secret in ("CHATWOOT_BOT_SECRET", "CHATWOOT_API_TOKEN", "WEBHOOK_TOKEN"):  # base64 (generateValue) is refused
        assert env[secret]["sync"] is False
    # REDIS_URL comes from the blueprint's own Redis (Key Value), read at every start.
    source = env["REDIS_URL"]["fromService"]
    redis_service = next(s for s in blueprint["services"] if s["name"] == source["name"])
    assert redis_service["type"] == source["type"] == "keyvalue" and source["property"] == "connectionString"
    assert redis_service["plan"] != "free"  # a free Key Value keeps nothing on disk: queued handoffs would be lost
    assert set(env) <= {n.upper() for n in Settings.model_fields} | {"REDIS_URL", "PYTHON_VERSION"}


def test_fly_toml_serves_port_with_health_check_and_a_volume_for_sqlite():
    fly = tomllib.loads((ROOT / "fly.toml").read_text())
    service = fly["http_service"]
    assert service["internal_port"] == int(fly["env"]["PORT"])
    assert [c["path"] for c in service["checks"]] == ["/healthz"]
    assert service["min_machines_running"] >= 1 and service["auto_stop_machines"] in (False, "off")  # timers run
    mount = fly["mounts"][0] if isinstance(fly["mounts"], list) else fly["mounts"]
    assert fly["env"]["STORE_URL"] == f"sqlite:///{mount['destination']}/agentbot.sqlite3"
    # Secrets are not kept in the file: the file says which to set.
    secrets_line = next(line for line in (ROOT / "fly.toml").read_text().splitlines() if "fly secrets set" in line)
    for name in REQUIRED:
        assert f"{name.upper()}=" in secrets_line


def test_heroku_button_needs_no_hand_edits_for_heroku_redis():
    app = json.loads((ROOT / "app.json").read_text())
    assert app["env"]["REDIS_TLS_VERIFY"]["value"] == "false"  # Heroku Redis: self-signed certificate
    assert "STORE_URL" not in {k for k, v in app["env"].items() if "value" in v}  # REDIS_URL is read at start


def test_readme_states_every_paid_plan_the_deploy_files_choose():
    readme = (ROOT / "README.md").read_text()
    deploy = readme.split("\n## Deploy\n", 1)[1].split("\n### ", 1)[0]
    app = json.loads((ROOT / "app.json").read_text())
    blueprint = yaml.safe_load((ROOT / "render.yaml").read_text())
    plans = [f"Render {s['type']} `{s['plan']}`" for s in blueprint["services"]]
    plans += [f"Heroku `{a['plan']}`" for a in app["addons"]] + [f"Heroku `{app['formation']['web']['size']}`"]
    for plan in plans:
        assert plan.split(" ", 1)[1].split(" ")[-1] in deploy, plan
    assert deploy.count("/month") >= len(plans)  # each with its price
    assert "checks:set web /healthz" not in readme and "RAILWAY_RUN_UID=0" in deploy


def test_readme_deploy_section_starts_with_the_buttons():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Deploy\n", 1)[1].lstrip()
    first = section.split("\n\n", 1)[0]
    assert "(https://render.com/deploy?repo=" in first and "render.com/images/deploy-to-render-button.svg" in first
    assert "(https://heroku.com/deploy?template=" in first and "herokucdn.com/deploy/button.svg" in first


@pytest.fixture(scope="module")
def tls_redis_url(tmp_path_factory):
    """A redis-server that speaks only TLS, with a certificate no system trusts (like Heroku Redis)."""
    import redis as sync_redis
    import trustme

    workdir = tmp_path_factory.mktemp("redis-tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(workdir / "server.key"))
    cert.cert_chain_pems[0].write_to_path(str(workdir / "server.crt"))
    ca.cert_pem.write_to_path(str(workdir / "ca.crt"))
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            str(workdir / "server.crt"),
            "--tls-key-file",
            str(workdir / "server.key"),
            "--tls-ca-cert-file",
            str(workdir / "ca.crt"),
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
    )
    client = sync_redis.Redis(port=port, ssl=True, ssl_ca_certs=str(workdir / "ca.crt"), ssl_check_hostname=False)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except (sync_redis.ConnectionError, OSError):
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("redis-server did not start with TLS (is it built with TLS support?)")
            time.sleep(0.05)
    yield f"rediss://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


def test_a_self_signed_redis_certificate_stops_start_up_naming_the_setting(tls_redis_url):
    env = {
        **without_settings(os.environ),
        "CHATWOOT_URL": "https://chat.example.com",
        "CHATWOOT_BOT_TOKEN": "s3cr3t",
        "REDIS_URL": tls_redis_url,
        "PORT": str(free_port()),
    }
    result = subprocess.run(
        [sys.executable, "-m", "agentbot"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "REDIS_TLS_VERIFY=false" in result.stderr and "certificate" in result.stderr
    assert "Traceback" not in result.stderr and "s3cr3t" not in result.stderr


@pytest.mark.redis
async def test_heroku_redis_with_tls_verify_off_is_the_store_end_to_end(fake, processes, tls_redis_url, monkeypatch):
    """The Heroku button's settings: REDIS_URL (rediss://, self-signed) and REDIS_TLS_VERIFY=false, nothing else."""
    for name in [k for k in os.environ if k.startswith(("STORE_", "REDIS_"))]:
        monkeypatch.delenv(name)
    maria, conv = returning(fake)
    bot = await processes(REDIS_URL=tls_redis_url, REDIS_TLS_VERIFY="false")
    fake.customer_writes(maria, "Back again")
    await wait_for(lambda: conv.status == "open" and fake.notes(conv.display_id), 10, "the handoff")
    assert (await bot.health())["status"] == "ok"
    import redis as sync_redis

    keys = sync_redis.Redis.from_url(tls_redis_url, ssl_cert_reqs="none", ssl_check_hostname=False).keys("agentbot:*")
    assert keys  # the store is that Redis
    assert await bot.stop() == 0


@pytest.mark.redis
async def test_the_sweep_command_uses_the_heroku_redis_settings_too(fake, tls_redis_url, tmp_path):
    """`python -m agentbot sweep` (a Heroku one-off dyno) opens the same store as the server."""
    from tests.test_sweep import sweep_cli

    status, out, err = await sweep_cli(
        fake, tmp_path, "--dry-run", STORE_URL=None, REDIS_URL=tls_redis_url, REDIS_TLS_VERIFY="false"
    )
    assert status == 0, err
    assert "Dry run: 0 pending conversations" in out
