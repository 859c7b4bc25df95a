"""The management API on a served gateway: apps and their tokens under /api/v1/.

Ops call it with a token of an app holding the ``admin`` scope (charlie's
app holds only ``chat``; anonymous callers hold nothing).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import Actor

pytestmark = [pytest.mark.timeout(60), pytest.mark.django_db(transaction=True)]


@pytest.fixture
def api(gateway: Any, make_actor: Callable[..., Actor]) -> httpx.Client:
    ops = make_actor("ops", scopes=["admin"], token_scope="admin")
    with httpx.Client(base_url=f"{gateway.url}/api/v1", headers=ops.headers) as client:
        yield client


def test_who_may_call_it(gateway, make_actor):
    charlie = make_actor("charlie")
    url = f"{gateway.url}/api/v1/apps/"

    anonymous = httpx.get(url)
    forged = httpx.get(url, headers={"Authorization": "Bearer sk-sluice-forged"})
    chat_only = httpx.get(url, headers=charlie.headers)

    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"]
    assert forged.status_code == 401 and "detail" in forged.json()
    assert chat_only.status_code == 403 and "admin" in chat_only.json()["detail"]


def test_apps_crud(api, gateway):
    created = api.post("/apps/", json={"name": "acme", "models": ["m1"], "scopes": ["chat"]})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["client_secret"] and body["client_id"] and body["enabled"] is True
    token = httpx.post(
        f"{gateway.url}/o/token/",
        data={"grant_type": "client_credentials"},
        auth=(body["client_id"], body["client_secret"]),
    )
    assert token.status_code == 200  # the secret works

    listed = api.get("/apps/").json()
    assert {"count", "results"} <= listed.keys()
    acme = next(a for a in listed["results"] if a["name"] == "acme")
    assert "client_secret" not in acme and acme["models"] == ["m1"]

    changed = api.patch("/apps/acme/", json={"enabled": False, "models": []})
    assert changed.status_code == 200, changed.text
    assert api.get("/apps/acme/").json() | {"updated": None} == changed.json() | {"updated": None}
    assert changed.json()["enabled"] is False and changed.json()["models"] == []
    renamed = api.put("/apps/acme/", json={"name": "acme-2", "scopes": ["chat", "admin"]})
    assert renamed.status_code == 200 and renamed.json()["scopes"] == ["chat", "admin"]

    assert api.delete("/apps/acme-2/").status_code == 204
    assert api.get("/apps/acme-2/").status_code == 404
    assert "detail" in api.get("/apps/acme-2/").json()


def test_validation_errors(api):
    assert api.post("/apps/", json={"name": "acme"}).status_code == 201
    cases = {
        "name": {"name": "acme"},  # taken
        "scopes": {"name": "b", "scopes": ["root"]},  # unknown scope
        "models": {"name": "c", "models": "gpt"},  # not a list
    }
    for field, body in cases.items():
        response = api.post("/apps/", json=body)
        assert response.status_code == 400, (field, response.text)
        assert field in response.json(), response.json()
    assert api.patch("/apps/acme/", json={"scopes": ["root"]}).status_code == 400
    assert api.post("/apps/", content=b"{", headers={"content-type": "application/json"}).json()


def test_tokens_issue_list_revoke(api, gateway, sdk, demo_model):
    api.post("/apps/", json={"name": "acme"})
    bad_scope = api.post("/apps/acme/tokens/", json={"name": "x", "scopes": ["admin"]})
    bad_expiry = api.post("/apps/acme/tokens/", json={"name": "x", "expires": "later"})
    assert bad_scope.status_code == 400 and "scopes" in bad_scope.json()
    assert bad_expiry.status_code == 400 and "expires" in bad_expiry.json()
    assert api.post("/apps/acme/tokens/", json={}).status_code == 400

    issued = api.post("/apps/acme/tokens/", json={"name": "ci", "expires": "never"})
    assert issued.status_code == 201, issued.text
    token, token_id = issued.json()["token"], issued.json()["id"]
    assert issued.json()["expires"] == "never" and issued.json()["created_by"].startswith("app:")
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{gateway.url}/v1/models", headers=headers).status_code == 200

    listed = api.get("/apps/acme/tokens/")
    assert listed.json()["count"] == 1 and token not in listed.text
    assert listed.json()["results"][0]["prefix"] == token[:18]

    assert api.delete(f"/apps/acme/tokens/{token_id}/").status_code == 204
    assert api.get(f"/apps/acme/tokens/{token_id}/").json()["status"] == "revoked"
    assert httpx.get(f"{gateway.url}/v1/models", headers=headers).status_code == 401
    assert api.delete("/apps/acme/tokens/999999/").status_code == 404


def test_a_long_lived_admin_token_calls_the_api(api, gateway):
    api.post("/apps/", json={"name": "ops-bot", "scopes": ["admin"]})
    issued = api.post("/apps/ops-bot/tokens/", json={"name": "ci"}).json()
    assert issued["scopes"] == ["admin"]  # what the app may have, when chat is not

    response = httpx.get(
        f"{gateway.url}/api/v1/apps/", headers={"Authorization": f"Bearer {issued['token']}"}
    )

    assert response.status_code == 200


def test_limits_are_part_of_the_policy(api):
    created = api.post(
        "/apps/",
        json={"name": "metered", "limits": {"requests_per_minute": 60, "monthly_cost_usd": 200}},
    )
    assert created.status_code == 201, created.text
    assert created.json()["limits"]["requests_per_minute"] == 60
    assert created.json()["limits"]["monthly_cost_usd"] == 200.0
    assert created.json()["limits"]["tokens_per_minute"] is None  # no limit

    patched = api.patch(
        "/apps/metered/", json={"limits": {"tokens_per_minute": 100000, "max_tokens": 4096}}
    )
    assert patched.status_code == 200, patched.text
    limits = api.get("/apps/metered/").json()["limits"]
    assert (limits["requests_per_minute"], limits["tokens_per_minute"]) == (60, 100000)
    assert limits["max_tokens"] == 4096 and limits["max_tokens_mode"] == "clamp"

    negative = api.patch("/apps/metered/", json={"limits": {"concurrent_streams": -1}})
    unknown = api.patch("/apps/metered/", json={"limits": {"speed": 3}})
    assert negative.status_code == 400 and "concurrent_streams" in negative.json()
    assert unknown.status_code == 400 and "limits" in unknown.json()
