from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _ensure_auditors_group(*, using: str, **kwargs: Any) -> None:
    from audit.services import auditors_group_ensure

    auditors_group_ensure(using=using)


class AuditConfig(AppConfig):
    """The audit trail. After every migrate (and test flush) the auditors group is ensured.

    A post_migrate hook rather than a data migration: the view permissions it
    grants only exist after migrate, and a flushed test database loses the group.
    """

    name = "audit"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        post_migrate.connect(_ensure_auditors_group, sender=self, dispatch_uid="audit-auditors")
