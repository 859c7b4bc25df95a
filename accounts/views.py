"""Brakes on the two places a secret can be guessed: the OAuth2 token endpoint
and the admin's sign-in. Failures are counted per client id (or username) and
per client address; over the limit, the request is refused with 429 and
``Retry-After`` before any secret is checked."""

from __future__ import annotations

import base64
import binascii
from urllib.parse import unquote_plus

from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from oauth2_provider.views import TokenView

from accounts.throttle import FailureThrottle, first_refusal

_token_view = TokenView.as_view()


def _throttles(name: str) -> tuple[FailureThrottle, FailureThrottle]:
    window = settings.SLUICE_THROTTLE_WINDOW_SECONDS
    return (
        FailureThrottle(name, settings.SLUICE_THROTTLE_CLIENT_FAILURES, window),
        FailureThrottle(name, settings.SLUICE_THROTTLE_ADDRESS_FAILURES, window),
    )


def _client_id(request: HttpRequest) -> str:
    """The client id the request claims: HTTP Basic first, then the form body."""
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return ""
        return unquote_plus(decoded.partition(":")[0])
    return str(request.POST.get("client_id", ""))


@csrf_exempt
def token(request: HttpRequest) -> HttpResponse:
    """DOT's token endpoint, behind failure throttles."""
    by_client, by_address = _throttles("token")
    keys = [(by_client, "client", _client_id(request)), (by_address, "ip", _address(request))]
    wait = first_refusal(keys)
    if wait is not None:
        body = {
            "error": "slow_down",
            "error_description": f"too many failed attempts; retry in {wait} s",
        }
        return JsonResponse(body, status=429, headers={"Retry-After": str(wait)})
    response = _token_view(request)
    if response.status_code in (400, 401) and b'"invalid_client"' in response.content:
        for throttle, kind, value in keys:
            throttle.fail(kind, value)
    return response


def admin_login(request: HttpRequest) -> HttpResponse:
    """The admin's sign-in, behind failure throttles (a failure re-renders the form)."""
    if request.method != "POST":
        return admin.site.login(request)
    by_user, by_address = _throttles("login")
    username = str(request.POST.get("username", "")).strip().lower()
    keys = [(by_user, "user", username), (by_address, "ip", _address(request))]
    wait = first_refusal(keys)
    if wait is not None:
        text = f"Too many failed sign-ins. Try again in {wait} seconds.\n"
        return HttpResponse(
            text, status=429, content_type="text/plain", headers={"Retry-After": str(wait)}
        )
    response = admin.site.login(request)
    if response.status_code == 200:  # the form again, with its error
        for throttle, kind, value in keys:
            throttle.fail(kind, value)
    return response


def _address(request: HttpRequest) -> str:
    return str(request.META.get("REMOTE_ADDR") or "")
