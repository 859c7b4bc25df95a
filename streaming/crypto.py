"""Encryption at rest for provider API keys (Fernet, with key rotation)."""

from __future__ import annotations

from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


@cache
def _fernet() -> MultiFernet:
    keys = settings.SLUICE_ENCRYPTION_KEYS
    try:
        return MultiFernet([Fernet(key) for key in keys])
    except ValueError:
        raise ImproperlyConfigured(
            "SLUICE_ENCRYPTION_KEY must be one or more comma-separated Fernet keys "
            "(32 url-safe base64-encoded bytes each)"
        ) from None


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode() if plaintext else ""


def decrypt_recent(ciphertext: str, *, max_age: int) -> str:
    """What ``encrypt`` made at most ``max_age`` seconds ago; "" for anything else."""
    try:
        return _fernet().decrypt(ciphertext.encode(), ttl=max_age).decode()
    except (InvalidToken, ValueError):
        return ""


def decrypt(ciphertext: str) -> str:
    if not ciphertext:
        return ""
    try:
        return _fernet().decrypt(ciphertext.encode()).decode()
    except InvalidToken:
        raise ImproperlyConfigured(
            "a stored provider key cannot be decrypted with SLUICE_ENCRYPTION_KEY"
        ) from None
