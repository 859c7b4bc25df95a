from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _ensure_operators_group(*, using: str, **kwargs: Any) -> None:
    from accounts.services import operators_group_ensure

    operators_group_ensure(using=using)


class AccountsConfig(AppConfig):
    """OAuth2 apps and their policies. After every migrate (and test flush) the
    operators group is ensured, as the auditors group is."""

    name = "accounts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from accounts import signals

        signals.connect()
        post_migrate.connect(
            _ensure_operators_group, sender=self, dispatch_uid="accounts-operators"
        )
