"""The audit's Ed25519 keys: what signs checkpoints, anchors and some links.

The key is the setting SLUICE_AUDIT_SIGNING_KEY (base64 of a 32-byte seed);
SLUICE_AUDIT_VERIFY_KEYS lists the public keys of earlier seeds, so what was
signed before a key rotation still verifies. A key's id is the first 16 hex
digits of the sha256 of its public key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from functools import cache

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(_raw_public(key)).hexdigest()[:16]


def _decode32(name: str, value: str) -> bytes:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ImproperlyConfigured(f"{name} must be base64 of 32 bytes")
    return raw


@cache
def signing_key() -> Ed25519PrivateKey:
    """The private key checkpoints are signed with (from the settings, once)."""
    seed = _decode32("SLUICE_AUDIT_SIGNING_KEY", settings.SLUICE_AUDIT_SIGNING_KEY)
    return Ed25519PrivateKey.from_private_bytes(seed)


@cache
def trusted_keys() -> dict[str, Ed25519PublicKey]:
    """Every public key a checkpoint may be signed with, by key id."""
    keys = [signing_key().public_key()] + [
        Ed25519PublicKey.from_public_bytes(_decode32("SLUICE_AUDIT_VERIFY_KEYS", value))
        for value in settings.SLUICE_AUDIT_VERIFY_KEYS
    ]
    return {key_id(key): key for key in keys}


def sign_text(text: str) -> str:
    """``<key id>:<base64 signature>`` of ``text`` with the signing key."""
    private = signing_key()
    signature = base64.b64encode(private.sign(text.encode())).decode()
    return f"{key_id(private.public_key())}:{signature}"


def text_signed(text: str, signed: str) -> bool:
    """Is ``signed`` (from ``sign_text``) a trusted key's signature of ``text``?"""
    kid, _, signature = signed.partition(":")
    key = trusted_keys().get(kid)
    if key is None:
        return False
    try:
        key.verify(base64.b64decode(signature), text.encode())
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True
