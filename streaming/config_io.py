"""Configuration as code: import and export providers, routes, prices and apps' policies.

The file format (YAML or JSON)::

    providers:
      - {name: local-vllm, kind: openai, base_url: "http://127.0.0.1:8001/v1",
         api_key_env: VLLM_KEY}
      # internal_endpoint: true allows a link-local / cloud-metadata base_url
    routes:
      - model: chat-default
        attempts_per_target: 2          # optional policy fields, e.g.
        retry_same_target_on: [connect_error, rate_limited, server_error]
        targets:
          - {provider: local-vllm, model: "meta-llama/Llama-3.1-8B-Instruct"}
    prices:                             # USD per million tokens, per provider model
      - {provider: local-vllm, model: "meta-llama/Llama-3.1-8B-Instruct",
         input_per_mtok: 0.15, cached_input_per_mtok: 0.075, output_per_mtok: 0.60}
    apps:                               # an app's policy, by name
      - name: acme                      # an unknown name creates the app, without credentials
        models: [chat-default]          # allowed models (empty or missing: every model)
        limits: {requests_per_minute: 60, tokens_per_minute: 100000,
                 concurrent_streams: 10, max_tokens: 4096, max_tokens_mode: clamp,
                 monthly_tokens: 5000000, monthly_cost_usd: 200}
        audit: {audit_retention_days: 90, redact_emails: true, redact_cards: true,
                redact_patterns: ["ACME-\\d{6}"]}   # optional; stored after redaction

Keys are only ever referenced by environment variable name; export never
includes a secret. Import is idempotent: it updates by name, and a route's
targets are replaced by the file's list, a price is updated by provider and
model, and an app's limits and audit settings are the file's (a missing limit
means none, a missing audit setting its default). What
the file leaves out is kept.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from accounts.models import AUDIT_FIELDS, LIMIT_FIELDS, AppPolicy, MaxTokensMode
from accounts.services import app_ensure
from streaming.models import ModelPrice, ModelRoute, Provider, RouteTarget

PROVIDER_FIELDS = ("kind", "base_url", "internal_endpoint", "api_key_env", "enabled")
POLICY_FIELDS = (
    "description",
    "enabled",
    "attempts_per_target",
    "backoff_seconds",
    "first_token_timeout",
    "stall_timeout",
    "allow_midstream_fallback",
    "retry_on",
    "retry_same_target_on",
    "load_balance",
)
PRICE_FIELDS = ("input_per_mtok", "cached_input_per_mtok", "output_per_mtok")


class ConfigError(ValueError):
    """The configuration file is not valid; the message says where."""


def _require(item: dict[str, Any], key: str, where: str) -> Any:
    if not isinstance(item, dict) or key not in item:
        raise ConfigError(f"{where}: missing '{key}'")
    return item[key]


def _apply(
    obj: Provider | ModelRoute | ModelPrice | AppPolicy,
    item: dict[str, Any],
    fields: tuple[str, ...],
    where: str,
) -> None:
    """Set the fields the file gives, validate like the admin does, save."""
    for field in fields:
        if field in item:
            setattr(obj, field, item[field])
    try:
        obj.full_clean()
    except ValidationError as exc:
        raise ConfigError(f"{where}: {exc.message_dict}") from None
    obj.save()


def _import_provider(item: dict[str, Any], where: str) -> str:
    name = _require(item, "name", where)
    if "api_key" in item:
        raise ConfigError(f"{where}: give keys as api_key_env (an environment variable name)")
    unknown = set(item) - {"name", *PROVIDER_FIELDS}
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}")
    provider, created = Provider.objects.get_or_create(
        name=name, defaults={"kind": _require(item, "kind", where)}
    )
    _apply(provider, item, PROVIDER_FIELDS, where)
    return "created" if created else "updated"


def _import_route(item: dict[str, Any], where: str) -> str:
    model = _require(item, "model", where)
    targets = _require(item, "targets", where)
    unknown = set(item) - {"model", "targets", *POLICY_FIELDS}
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}")
    route, created = ModelRoute.objects.get_or_create(model=model)
    _apply(route, item, POLICY_FIELDS, where)
    route.targets.all().delete()
    for position, target in enumerate(targets):
        twhere = f"{where}.targets[{position}]"
        provider_name = _require(target, "provider", twhere)
        provider = Provider.objects.filter(name=provider_name).first()
        if provider is None:
            raise ConfigError(f"{twhere}: unknown provider '{provider_name}'")
        RouteTarget.objects.create(
            route=route,
            provider=provider,
            upstream_model=_require(target, "model", twhere),
            priority=target.get("priority", position),
            weight=target.get("weight", 1),
            params=target.get("params", {}),
        )
    return "created" if created else "updated"


def _import_price(item: dict[str, Any], where: str) -> str:
    provider_name = _require(item, "provider", where)
    model = _require(item, "model", where)
    unknown = set(item) - {"provider", "model", *PRICE_FIELDS}
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}")
    provider = Provider.objects.filter(name=provider_name).first()
    if provider is None:
        raise ConfigError(f"{where}: unknown provider '{provider_name}'")
    price = ModelPrice.objects.filter(provider=provider, model=model).first()
    created = price is None
    if price is None:
        price = ModelPrice(provider=provider, model=model)
    _apply(price, item, PRICE_FIELDS, where)
    return "created" if created else "updated"


# What an app's audit settings are when the file does not give them.
_AUDIT_DEFAULTS: dict[str, Any] = {
    "audit_retention_days": None,
    "redact_emails": False,
    "redact_cards": False,
    "redact_patterns": [],
}


def _import_app(item: dict[str, Any], where: str) -> str:
    name = _require(item, "name", where)
    unknown = set(item) - {"name", "models", "limits", "audit"}
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}")
    limits = item.get("limits") or {}
    if not isinstance(limits, dict) or set(limits) - set(LIMIT_FIELDS):
        raise ConfigError(f"{where}.limits: unknown limit(s), expected some of {LIMIT_FIELDS}")
    audit = item.get("audit") or {}
    if not isinstance(audit, dict) or set(audit) - set(AUDIT_FIELDS):
        raise ConfigError(f"{where}.audit: unknown setting(s), expected some of {AUDIT_FIELDS}")
    app, secret = app_ensure(name=name, scopes=["chat"])  # the secret is never shown: none
    policy = AppPolicy.of(app)
    values = {field: limits.get(field) for field in LIMIT_FIELDS}
    values["max_tokens_mode"] = limits.get("max_tokens_mode") or MaxTokensMode.CLAMP
    values["allowed_models"] = item.get("models") or []
    values.update({field: audit.get(field, _AUDIT_DEFAULTS[field]) for field in AUDIT_FIELDS})
    _apply(policy, values, (*LIMIT_FIELDS, *AUDIT_FIELDS, "allowed_models"), where)
    return "updated" if secret is None else "created"


def _export_app(policy: AppPolicy) -> dict[str, Any]:
    limits: dict[str, Any] = {}
    for field in LIMIT_FIELDS:
        value = getattr(policy, field)
        if field == "max_tokens_mode" and value == MaxTokensMode.CLAMP:
            continue  # the default, unless a ceiling is set (below)
        if value is not None:
            limits[field] = float(value) if field == "monthly_cost_usd" else value
    if policy.max_tokens is not None:
        limits["max_tokens_mode"] = policy.max_tokens_mode
    audit = {
        field: getattr(policy, field)
        for field in AUDIT_FIELDS
        if getattr(policy, field) != _AUDIT_DEFAULTS[field]
    }
    return {
        "name": policy.application.name,
        "models": list(policy.allowed_models),
        "limits": limits,
        **({"audit": audit} if audit else {}),
    }


@transaction.atomic
def config_import(data: Any) -> dict[str, int]:
    """Apply a configuration document; all or nothing."""
    if not isinstance(data, dict):
        raise ConfigError(
            "the document must be a mapping with 'providers', 'routes', 'prices' and/or 'apps'"
        )
    counts = {"created": 0, "updated": 0}
    for i, item in enumerate(data.get("providers") or []):
        counts[_import_provider(item, f"providers[{i}]")] += 1
    for i, item in enumerate(data.get("routes") or []):
        counts[_import_route(item, f"routes[{i}]")] += 1
    for i, item in enumerate(data.get("prices") or []):
        counts[_import_price(item, f"prices[{i}]")] += 1
    for i, item in enumerate(data.get("apps") or []):
        counts[_import_app(item, f"apps[{i}]")] += 1
    return counts


def config_export() -> dict[str, Any]:
    """The configuration as a document ``config_import`` accepts. No secrets."""
    providers = [
        {"name": p.name, **{f: getattr(p, f) for f in PROVIDER_FIELDS}}
        for p in Provider.objects.order_by("name")
    ]
    routes = []
    for route in ModelRoute.objects.prefetch_related("targets__provider").order_by("model"):
        routes.append(
            {
                "model": route.model,
                **{f: getattr(route, f) for f in POLICY_FIELDS},
                "targets": [
                    {
                        "provider": t.provider.name,
                        "model": t.upstream_model,
                        "priority": t.priority,
                        "weight": t.weight,
                        "params": t.params,
                    }
                    for t in route.targets.all()
                ],
            }
        )
    prices = [
        {"provider": p.provider.name, "model": p.model, **{f: getattr(p, f) for f in PRICE_FIELDS}}
        for p in ModelPrice.objects.select_related("provider").order_by("provider__name", "model")
    ]
    policies = AppPolicy.objects.select_related("application").order_by("application__name")
    apps = [_export_app(policy) for policy in policies]
    return {"providers": providers, "routes": routes, "prices": prices, "apps": apps}
