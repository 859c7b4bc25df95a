"""The management API's routes under ``/api/v1/`` (gateway.urls mounts them)."""

from django.urls import path

from accounts.api.views import AppTokenViewSet, AppViewSet

apps = AppViewSet.as_view({"get": "list", "post": "create"})
app = AppViewSet.as_view(
    {"get": "retrieve", "put": "update", "patch": "partial_update", "delete": "destroy"}
)
app_tokens = AppTokenViewSet.as_view({"get": "list", "post": "create"})
app_token = AppTokenViewSet.as_view({"get": "retrieve", "delete": "destroy"})

urlpatterns = [
    path("apps/", apps, name="api-apps"),
    path("apps/<str:name>/", app, name="api-app"),
    path("apps/<str:name>/tokens/", app_tokens, name="api-app-tokens"),
    path("apps/<str:name>/tokens/<int:pk>/", app_token, name="api-app-token"),
]
