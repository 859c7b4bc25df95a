"""Clear cached routes in this process when ops change the configuration
(providers, routes, their targets, prices)."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_delete, post_save

from streaming.models import ModelPrice, ModelRoute, Provider, RouteTarget
from streaming.routing.routes import invalidate_routes


def _config_changed(sender: type, **kwargs: Any) -> None:
    invalidate_routes()


def connect() -> None:
    for model in (Provider, ModelRoute, RouteTarget, ModelPrice):
        post_save.connect(_config_changed, sender=model, dispatch_uid=f"sluice-{model.__name__}-s")
        post_delete.connect(
            _config_changed, sender=model, dispatch_uid=f"sluice-{model.__name__}-d"
        )
