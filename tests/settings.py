"""Settings for the test process: the real settings, with fixed test secrets.

The gateway servers that tests start get the same values through their
environment (see tests/live.py), so they share the test database.
"""

import os
import tempfile

os.environ.setdefault("SECRET_KEY", "test-secret-key-not-for-production-0123456789abcdef")
os.environ.setdefault("SLUICE_ENCRYPTION_KEY", "dGVzdC1lbmNyeXB0aW9uLWtleS0zMi1ieXRlcy0hISE=")
# base64 of a 32-byte Ed25519 seed, for audit checkpoints.
os.environ.setdefault("SLUICE_AUDIT_SIGNING_KEY", "dGVzdC1hdWRpdC1zaWduaW5nLWtleS0zMmJ5dGVzISE=")
# Served gateways sign checkpoints and prune only where a test asks them to.
os.environ.setdefault("SLUICE_AUDIT_CHECKPOINT_SECONDS", "0")
os.environ.setdefault("SLUICE_AUDIT_PRUNE_SECONDS", "0")
os.environ.setdefault("SLUICE_VAR_DIR", tempfile.mkdtemp(prefix="sluice-test-"))

from gateway.settings import *  # noqa: F403
from gateway.settings import DATABASES, VAR_DIR

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not memory, so gateway server processes see the same test database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
