"""The audit trail's routes under ``/api/v1/`` (gateway.urls mounts them)."""

from django.urls import path

from audit.api.records import ExportView, RecordDetailView, RecordListView
from audit.api.views import UsageView

urlpatterns = [
    path("usage/", UsageView.as_view(), name="api-usage"),
    path("audit/records/", RecordListView.as_view(), name="api-audit-records"),
    path("audit/records/<str:request_id>/", RecordDetailView.as_view(), name="api-audit-record"),
    path("audit/export/", ExportView.as_view(), name="api-audit-export"),
]
