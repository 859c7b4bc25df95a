"""Secrets for the embedded dev mode, generated once and kept under var/.

Kept on disk so that restarting ``make run`` can still decrypt the provider
keys it stored before. Never used outside dev mode.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from cryptography.fernet import Fernet


def load_dev_secrets(var_dir: Path) -> dict[str, str]:
    path = var_dir / "dev-secrets.json"
    if path.exists():
        data: dict[str, str] = json.loads(path.read_text())
        return data
    var_dir.mkdir(parents=True, exist_ok=True)
    data = {
        "SECRET_KEY": secrets.token_urlsafe(50),
        "SLUICE_ENCRYPTION_KEY": Fernet.generate_key().decode(),
    }
    path.write_text(json.dumps(data))
    path.chmod(0o600)
    return data
