"""How apps and their long-lived tokens look in the management API (and the shell)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers

from accounts.models import AUDIT_FIELDS, LIMIT_FIELDS, AppPolicy, AppToken, validate_name_list
from accounts.tokens import parse_expiry, validate_token_scopes


class AppSerializer(serializers.ModelSerializer):
    """An app: its name and client id, then its policy's fields.

    A new AppPolicy field joins the API by adding its name to ``Meta.fields``;
    its model validators come with it.
    """

    name = serializers.CharField(source="application.name", max_length=255)
    client_id = serializers.CharField(source="application.client_id", read_only=True)
    models = serializers.ListField(
        source="allowed_models",
        child=serializers.CharField(),
        required=False,
        validators=[validate_name_list],
        help_text="Models this app may call; empty: every model.",
    )

    class Meta:
        model = AppPolicy
        fields = (
            "name",
            "client_id",
            "enabled",
            "scopes",
            "models",
            *LIMIT_FIELDS,
            *AUDIT_FIELDS,
            "created",
            "updated",
        )
        read_only_fields = ("created", "updated")

    # The limits travel as one object, as in config as code (``limits: {...}``);
    # a write may also give them at the top level.
    def to_representation(self, instance: Any) -> dict[str, Any]:
        data: dict[str, Any] = super().to_representation(instance)
        limits = {field: data.pop(field) for field in LIMIT_FIELDS}
        if limits["monthly_cost_usd"] is not None:
            limits["monthly_cost_usd"] = float(limits["monthly_cost_usd"])
        data["limits"] = limits
        return data

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict) and "limits" in data:
            limits = data["limits"]
            if not isinstance(limits, dict) or set(limits) - set(LIMIT_FIELDS):
                raise serializers.ValidationError(
                    {"limits": [f"an object with some of {', '.join(LIMIT_FIELDS)}"]}
                )
            data = {**{k: v for k, v in data.items() if k != "limits"}, **limits}
        return super().to_internal_value(data)


class AppTokenSerializer(serializers.ModelSerializer):
    """A long-lived token as listed: never the token itself."""

    expires = serializers.SerializerMethodField()

    class Meta:
        model = AppToken
        fields = (
            "id",
            "name",
            "prefix",
            "scopes",
            "created",
            "created_by",
            "expires",
            "last_used",
            "revoked",
            "status",
        )
        read_only_fields = fields

    def get_expires(self, record: AppToken) -> str:
        return (
            "never"
            if record.expires is None
            else serializers.DateTimeField().to_representation(record.expires)
        )


def _expiry(value: str) -> None:
    parse_expiry(value)


class AppTokenCreateSerializer(serializers.Serializer):
    """What issuing a token takes; ``context["policy"]`` is the app's policy."""

    name = serializers.CharField(max_length=100)
    expires = serializers.CharField(default="90d", validators=[_expiry])
    scopes = serializers.ListField(child=serializers.CharField(), required=False)

    def validate_scopes(self, scopes: list[str]) -> list[str]:
        try:
            validate_token_scopes(scopes, self.context["policy"])
        except DjangoValidationError as error:
            raise serializers.ValidationError(error.messages) from error
        return scopes
