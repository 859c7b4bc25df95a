"""The hasher for OAuth2 client secrets (DOT's ``CLIENT_SECRET_HASHER``)."""

from __future__ import annotations

from django.contrib.auth.hashers import PBKDF2PasswordHasher


class ClientSecretHasher(PBKDF2PasswordHasher):
    """Salted HMAC-SHA256 (PBKDF2 with one iteration) for generated client secrets.

    Key stretching exists for secrets a person chose. DOT's client secrets are
    128 random characters (about 760 bits): no guess gets anywhere near them,
    so the 1,000,000 iterations of Django's password hasher bought nothing and
    cost ~0.4 s of CPU per token request, which made a flood of wrong secrets
    a denial of service. Secrets stored with another hasher still verify (the
    stored hash names its algorithm).
    """

    algorithm = "sluice_client_secret"
    iterations = 1
