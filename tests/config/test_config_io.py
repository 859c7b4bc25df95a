"""Configuration as code: `sluice_config import/export`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
import yaml
from django.core.management import call_command
from django.core.management.base import CommandError

from streaming.models import ModelRoute, Provider

ROOT = Path(__file__).resolve().parents[2]
ISSUE_EXAMPLE = """
providers:
  - {name: local-vllm, kind: openai, base_url: "http://127.0.0.1:8001/v1", api_key_env: VLLM_KEY}
routes:
  - model: chat-default
    targets:
      - {provider: local-vllm, model: "meta-llama/Llama-3.1-8B-Instruct"}
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "sluice.yaml"
    path.write_text(ISSUE_EXAMPLE)
    return path


def export(fmt="yaml"):
    out = StringIO()
    call_command("sluice_config", "export", "--format", fmt, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_import_is_idempotent_and_updates(config_file, monkeypatch):
    call_command("sluice_config", "import", str(config_file), stdout=StringIO())
    call_command("sluice_config", "import", str(config_file), stdout=StringIO())

    assert Provider.objects.count() == 1 and ModelRoute.objects.count() == 1
    route = ModelRoute.objects.get(model="chat-default")
    assert [t.upstream_model for t in route.targets.all()] == ["meta-llama/Llama-3.1-8B-Instruct"]
    monkeypatch.setenv("VLLM_KEY", "sk-from-env")
    assert Provider.objects.get(name="local-vllm").resolve_api_key() == "sk-from-env"

    config_file.write_text(ISSUE_EXAMPLE.replace("8001", "9001").replace("Llama-3.1-8B", "Qwen"))
    call_command("sluice_config", "import", str(config_file), stdout=StringIO())
    assert Provider.objects.get().base_url == "http://127.0.0.1:9001/v1"
    assert route.targets.get().upstream_model == "meta-llama/Qwen-Instruct"


@pytest.mark.django_db
def test_export_round_trips_and_never_contains_a_secret(config_file, tmp_path):
    call_command("sluice_config", "import", str(config_file), stdout=StringIO())
    provider = Provider.objects.get()
    provider.set_api_key("sk-very-secret")
    provider.save()

    exported_yaml, exported_json = export("yaml"), export("json")

    assert "sk-very-secret" not in exported_yaml + exported_json
    assert "api_key_encrypted" not in exported_yaml
    document = yaml.safe_load(exported_yaml)
    assert json.loads(exported_json) == document
    assert document["routes"][0]["targets"][0]["provider"] == "local-vllm"
    ModelRoute.objects.all().delete()
    (tmp_path / "exported.json").write_text(exported_json)
    call_command("sluice_config", "import", str(tmp_path / "exported.json"), stdout=StringIO())
    assert ModelRoute.objects.get().targets.count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("providers: [{name: x}]", "missing 'kind'"),
        (
            "providers: [{name: x, kind: openai, base_url: 'http://h/v1', api_key: sk}]",
            "api_key_env",
        ),
        ("routes: [{model: m, targets: [{provider: nope, model: a}]}]", "unknown provider"),
        ("routes: [{model: m, targets: [], colour: red}]", "unknown field"),
        ("- just a list", "mapping"),
        ("providers: [{name: x, kind: martian}]", "kind"),
    ],
)
def test_bad_files_are_refused_with_a_clear_message_and_change_nothing(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(CommandError, match=message):
        call_command("sluice_config", "import", str(path), stdout=StringIO())
    assert not Provider.objects.exists() and not ModelRoute.objects.exists()


def manage_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``manage.py check`` in a fresh process with exactly this environment."""
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_settings_fail_closed_without_secrets(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SECRET_KEY", "SLUICE_ENCRYPTION_KEY", "SLUICE_DEV")
    }
    env.update(DJANGO_SETTINGS_MODULE="gateway.settings", SLUICE_VAR_DIR=str(tmp_path))
    result = manage_check(env)
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr

    env["SLUICE_DEV"] = "1"
    dev = manage_check(env)
    assert dev.returncode == 0, dev.stderr
    assert (tmp_path / "dev-secrets.json").exists()


def test_a_bad_setting_value_is_a_clear_error(tmp_path):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "gateway.settings",
        "SLUICE_DEV": "1",
        "SLUICE_VAR_DIR": str(tmp_path),
        "SLUICE_STREAM_TTL_SECONDS": "ten",
    }
    result = manage_check(env)
    assert result.returncode != 0
    assert "SLUICE_STREAM_TTL_SECONDS must be an integer" in result.stderr


APPS = """
apps:
  - name: acme
    models: [chat-default]
    limits: {requests_per_minute: 60, tokens_per_minute: 100000, concurrent_streams: 10,
             max_tokens: 4096, monthly_tokens: 5000000, monthly_cost_usd: 200}
  - name: tiny
"""


@pytest.mark.django_db
def test_apps_limits_import_create_the_app_and_export_back(tmp_path):
    from accounts.models import AppPolicy

    (tmp_path / "apps.yaml").write_text(APPS)
    call_command("sluice_config", "import", str(tmp_path / "apps.yaml"), stdout=StringIO())
    acme = AppPolicy.objects.get(application__name="acme")
    tiny = AppPolicy.objects.get(application__name="tiny")

    assert acme.allowed_models == ["chat-default"]
    assert (acme.requests_per_minute, acme.concurrent_streams, acme.max_tokens) == (60, 10, 4096)
    assert acme.max_tokens_mode == "clamp" and float(acme.monthly_cost_usd) == 200.0
    assert tiny.requests_per_minute is None and tiny.allowed_models == []
    assert acme.application.accesstoken_set.count() == 0  # created without credentials
    exported = {app["name"]: app for app in yaml.safe_load(export())["apps"]}
    assert exported["acme"]["limits"] == {
        "requests_per_minute": 60,
        "tokens_per_minute": 100000,
        "concurrent_streams": 10,
        "max_tokens": 4096,
        "max_tokens_mode": "clamp",
        "monthly_tokens": 5000000,
        "monthly_cost_usd": 200.0,
    }
    assert exported["tiny"] == {"name": "tiny", "models": [], "limits": {}}

    # A limit left out of the file is no limit any more.
    (tmp_path / "apps.yaml").write_text("apps: [{name: acme, limits: {monthly_tokens: 10}}]")
    call_command("sluice_config", "import", str(tmp_path / "apps.yaml"), stdout=StringIO())
    acme.refresh_from_db()
    assert acme.monthly_tokens == 10 and acme.requests_per_minute is None


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ("{requests_per_minute: 0}", "greater than or equal to 1"),
        ("{monthly_cost_usd: -5}", "greater than or equal to 0.01"),
        ("{max_tokens_mode: maybe}", "not a valid choice"),
        ("{rpm: 5}", "unknown limit"),
    ],
)
def test_bad_app_limits_are_refused_like_the_admin_refuses_them(tmp_path, limits, message):
    (tmp_path / "apps.yaml").write_text(f"apps: [{{name: acme, limits: {limits}}}]")
    with pytest.raises(CommandError, match=message):
        call_command("sluice_config", "import", str(tmp_path / "apps.yaml"), stdout=StringIO())
