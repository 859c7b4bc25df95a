"""``/api/v1/apps/`` and ``/api/v1/apps/{name}/tokens/``: thin views over the services."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from oauth2_provider.models import get_application_model
from rest_framework import status, viewsets
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import as_serializer_error

from accounts import services, tokens
from accounts.api.serializers import AppSerializer, AppTokenCreateSerializer, AppTokenSerializer
from accounts.models import AppPolicy, default_scopes


def _app(name: str) -> Any:
    try:
        return services.app_get(name=name)
    except services.AppNotFound as error:
        raise NotFound(str(error)) from error


def _invalid(error: DjangoValidationError | services.AppExists, field: str) -> ValidationError:
    if isinstance(error, services.AppExists):
        return ValidationError({field: [str(error)]})
    return ValidationError(as_serializer_error(error))


class AppViewSet(viewsets.GenericViewSet):
    """Apps by name, with their policy. Creating one answers its client secret, once."""

    serializer_class = AppSerializer
    lookup_field = "name"

    def get_queryset(self) -> Any:
        return get_application_model().objects.select_related("policy").order_by("name", "pk")

    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        policies = [AppPolicy.of(app) for app in page]
        return self.get_paginated_response(self.get_serializer(policies, many=True).data)

    def retrieve(self, request: Request, name: str) -> Response:
        return Response(self.get_serializer(AppPolicy.of(_app(name))).data)

    def create(self, request: Request) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        policy = dict(serializer.validated_data)
        name = policy.pop("application")["name"]
        try:
            app, secret = services.app_create(
                name=name,
                scopes=policy.pop("scopes", default_scopes()),
                models=policy.pop("allowed_models", []),
                policy=policy,
            )
        except (DjangoValidationError, services.AppExists) as error:
            raise _invalid(error, "name") from error
        app.refresh_from_db()
        body = {**self.get_serializer(AppPolicy.of(app)).data, "client_secret": secret}
        return Response(body, status=status.HTTP_201_CREATED)

    def update(self, request: Request, name: str, partial: bool = False) -> Response:
        current = AppPolicy.of(_app(name))
        serializer = self.get_serializer(current, data=request.data, partial=partial)
        serializer.is_valid(raise_exception=True)
        policy = dict(serializer.validated_data)
        new_name = policy.pop("application", {}).get("name")
        try:
            row = services.app_update(name=name, new_name=new_name, policy=policy)
        except (DjangoValidationError, services.AppExists) as error:
            raise _invalid(error, "name") from error
        return Response(self.get_serializer(row).data)

    def partial_update(self, request: Request, name: str) -> Response:
        return self.update(request, name, partial=True)

    def destroy(self, request: Request, name: str) -> Response:
        try:
            services.app_delete(name=name)
        except services.AppNotFound as error:
            raise NotFound(str(error)) from error
        return Response(status=status.HTTP_204_NO_CONTENT)


class AppTokenViewSet(viewsets.GenericViewSet):
    """An app's long-lived tokens: issue (the token answered once), list, revoke."""

    serializer_class = AppTokenSerializer

    def list(self, request: Request, name: str) -> Response:
        page = self.paginate_queryset(tokens.app_token_list(application=_app(name)))
        return self.get_paginated_response(self.get_serializer(page, many=True).data)

    def retrieve(self, request: Request, name: str, pk: int) -> Response:
        return Response(self.get_serializer(self._record(name, pk)).data)

    def create(self, request: Request, name: str) -> Response:
        app = _app(name)
        serializer = AppTokenCreateSerializer(
            data=request.data, context={"policy": AppPolicy.of(app)}
        )
        serializer.is_valid(raise_exception=True)
        try:
            issued = tokens.app_token_create(
                application=app, created_by=str(request.user), **serializer.validated_data
            )
        except DjangoValidationError as error:
            raise _invalid(error, "name") from error
        body = {**self.get_serializer(issued.record).data, "token": issued.token}
        return Response(body, status=status.HTTP_201_CREATED)

    def destroy(self, request: Request, name: str, pk: int) -> Response:
        tokens.app_token_revoke(record=self._record(name, pk))
        return Response(status=status.HTTP_204_NO_CONTENT)

    def _record(self, name: str, pk: int) -> Any:
        try:
            return tokens.app_token_get(application=_app(name), key=str(pk))
        except tokens.TokenNotFound as error:
            raise Http404(str(error)) from error
