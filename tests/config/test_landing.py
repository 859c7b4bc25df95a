"""What a newcomer meets first: the landing page, the icon, the admin's name."""

from __future__ import annotations

import httpx
import pytest

from tests.routing.admin_client import AdminClient

pytestmark = [pytest.mark.timeout(60), pytest.mark.django_db(transaction=True)]


def test_the_root_says_what_this_is_and_where_to_go(gateway):
    response = httpx.get(f"{gateway.url}/")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "LLM streaming gateway" in page
    for link in ('href="/admin/"', 'href="/admin/sluice/playground/"', 'href="/healthz"'):
        assert link in page
    assert f"{gateway.url}/v1" in page  # the base URL an SDK needs


def test_browsers_get_an_icon_instead_of_a_404(gateway):
    response = httpx.get(f"{gateway.url}/favicon.ico")

    assert response.status_code == 200
    assert response.headers["content-type"] == "image/svg+xml"
    assert response.content.startswith(b"<svg")


def test_the_admin_is_sluices_own(gateway, live_db):
    ops = AdminClient(gateway.url)
    try:
        page = ops.get("/admin/").text
    finally:
        ops.close()
    assert "<title>Providers, routes, apps and the audit trail | Sluice</title>" in page
    assert "Sluice administration" in page
    assert 'rel="icon"' in page
    assert "Django administration" not in page
