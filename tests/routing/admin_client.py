"""A browser-like client for the Django admin of a live gateway."""

from __future__ import annotations

import re
from typing import Any

import httpx

from tests.conftest import unique


class AdminClient:
    """Logs in as a new superuser and posts admin forms with their CSRF token."""

    def __init__(self, base_url: str) -> None:
        from django.contrib.auth import get_user_model

        username, password = unique("ops"), "correct horse battery staple"
        get_user_model().objects.create_superuser(username, f"{username}@example.com", password)
        self.http = httpx.Client(base_url=base_url, timeout=20, follow_redirects=True)
        try:
            self.http.get("/admin/login/")
            response = self.post(
                "/admin/login/", {"username": username, "password": password, "next": "/admin/"}
            )
            assert "Log out" in response.text, response.text[:500]
        except BaseException:
            self.http.close()
            raise

    def post(self, path: str, data: dict[str, Any]) -> httpx.Response:
        token = self.http.cookies["csrftoken"]
        response = self.http.post(path, data={**data, "csrfmiddlewaretoken": token})
        assert response.status_code == 200, response.text[:500]
        return response

    def get(self, path: str) -> httpx.Response:
        return self.http.get(path)

    def messages(self, response: httpx.Response) -> list[str]:
        return re.findall(r'<li class="(?:success|error|warning|info)">(.*?)</li>', response.text)

    def close(self) -> None:
        self.http.close()
