"""Secrets for the embedded dev mode, generated once and kept under var/.

Kept on disk so that restarting ``make run`` can still decrypt the provider
keys it stored before. Never used outside dev mode.
"""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path

from cryptography.fernet import Fernet


def _generate() -> dict[str, str]:
    return {
        "SECRET_KEY": secrets.token_urlsafe(50),
        "SLUICE_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        # The Ed25519 seed that signs audit checkpoints.
        "SLUICE_AUDIT_SIGNING_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
    }


def load_dev_secrets(var_dir: Path) -> dict[str, str]:
    """The dev secrets; a secret added since the file was written is added to it."""
    path = var_dir / "dev-secrets.json"
    data: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    missing = {k: v for k, v in _generate().items() if k not in data}
    if missing:
        var_dir.mkdir(parents=True, exist_ok=True)
        data.update(missing)
        path.write_text(json.dumps(data))
        path.chmod(0o600)
    return data
