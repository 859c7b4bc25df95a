"""The staff pages, mounted under /admin/sluice/ (see gateway/urls.py)."""

from django.urls import path

from streaming import dashboard, spend, tail

app_name = "sluice"

urlpatterns = [
    path("dashboard/", dashboard.dashboard_page, name="dashboard"),
    path("dashboard/feed", dashboard.dashboard_feed, name="dashboard-feed"),
    path("playground/", dashboard.playground_page, name="playground"),
    path("playground/ticket", dashboard.playground_ticket, name="playground-ticket"),
    path("spend/", spend.spend_page, name="spend"),
    path("tail/<str:stream_id>/", tail.tail_page, name="tail"),
    path("tail/<str:stream_id>/events", tail.tail_events, name="tail-events"),
]
