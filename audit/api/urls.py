"""The audit trail's routes under ``/api/v1/`` (gateway.urls mounts them)."""

from django.urls import path

from audit.api.views import UsageView

urlpatterns = [
    path("usage/", UsageView.as_view(), name="api-usage"),
]
