"""Sluice settings, read from the environment.

With nothing set, Sluice runs the embedded default (SQLite, in-process stream
log and channel layer). ``DATABASE_URL`` and ``REDIS_URL`` switch to
PostgreSQL and Redis. Outside dev mode (``SLUICE_DEV=1``) the secrets must be
given: nothing falls back to a known key.
"""

from __future__ import annotations

from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from gateway.devsecrets import load_dev_secrets
from gateway.env import envbool, envfloat, envint, envlist, envnetworks, envsecret, envstr

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(envstr("SLUICE_VAR_DIR", str(BASE_DIR / "var")))

DEV_MODE = envbool("SLUICE_DEV", False)
_dev = load_dev_secrets(VAR_DIR) if DEV_MODE else {}

SECRET_KEY = envsecret("SECRET_KEY", dev_default=_dev.get("SECRET_KEY"))
# Fernet keys, comma separated: the first encrypts, all decrypt (key rotation).
SLUICE_ENCRYPTION_KEYS = envlist(
    "SLUICE_ENCRYPTION_KEY",
    envsecret("SLUICE_ENCRYPTION_KEY", dev_default=_dev.get("SLUICE_ENCRYPTION_KEY")),
)
DEBUG = envbool("DEBUG", False)
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "*" if DEV_MODE else "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "oauth2_provider",
    "accounts",
    "audit",
    "streaming",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "gateway.database.DatabaseUnavailableMiddleware",
]

ROOT_URLCONF = "gateway.urls"
ASGI_APPLICATION = "gateway.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = envstr("DATABASE_URL", f"sqlite:///{VAR_DIR / 'sluice.sqlite3'}")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the audit writer and request handlers work side by side.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = envstr("REDIS_URL")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # The layer's receive blocks on Redis for 5 s (BZPOPMIN), and
                # redis-py 8 times reads out after 5 s by default: receive raised
                # instead of waiting (channels_redis#422).
                "hosts": [{"address": REDIS_URL, "socket_timeout": 15}],
                "prefix": "sluice:chan:",
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Django's hashers for people's passwords; the last one is for generated client
# secrets (OAUTH2_PROVIDER["CLIENT_SECRET_HASHER"]).
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.BCryptSHA256PasswordHasher",
    "django.contrib.auth.hashers.ScryptPasswordHasher",
    "accounts.hashers.ClientSecretHasher",
]

# Failure counts for the token endpoint and the admin sign-in (accounts.throttle):
# in Redis when it is there, so every instance counts together.
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "throttle": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache"
        if REDIS_URL
        else "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": REDIS_URL or "sluice-throttle",
        "KEY_PREFIX": envstr("SLUICE_THROTTLE_PREFIX", "sluice:throttle"),
    },
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "templates" / "static"]

OAUTH2_PROVIDER = {
    "SCOPES": {
        "chat": "Stream chat completions",
        "admin": "Manage the gateway",
        "audit:read": "Read, search and export the audit trail",
    },
    "DEFAULT_SCOPES": ["chat"],
    "ACCESS_TOKEN_EXPIRE_SECONDS": envint("SLUICE_TOKEN_EXPIRE_SECONDS", 3600, minimum=60),
    "PKCE_REQUIRED": True,
    # Client secrets are long random strings: a fast salted hash is sound (accounts.hashers).
    "CLIENT_SECRET_HASHER": "sluice_client_secret",
    # Grants only the scopes an app's policy allows; refuses disabled apps.
    "OAUTH2_VALIDATOR_CLASS": "accounts.oauth_validator.SluiceOAuth2Validator",
    # Tokens are stored hashed (RFC 9700): the token column stays blank, found by sha256.
    "COMPLIANT_BCP_RFC9700_TOKEN_STORAGE": True,
}
OAUTH2_PROVIDER_APPLICATION_MODEL = "oauth2_provider.Application"
OAUTH2_PROVIDER_ACCESS_TOKEN_MODEL = "oauth2_provider.AccessToken"

# The management API (/api/v1/): apps' bearer tokens with the admin scope, JSON only.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["accounts.api.auth.BearerTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["accounts.api.auth.HasAdminScope"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "UNAUTHENTICATED_USER": None,
}

LOGIN_URL = "/admin/login/"

# --- Sluice -----------------------------------------------------------------
# Typed constants, read once from the environment (see the env* helpers).
# Requests
SLUICE_MAX_REQUEST_BYTES = envint("SLUICE_MAX_REQUEST_BYTES", 1024 * 1024, minimum=1024)
SLUICE_TOKEN_CACHE_SECONDS = envfloat("SLUICE_TOKEN_CACHE_SECONDS", 30.0, minimum=0)
SLUICE_CONFIG_CACHE_SECONDS = envfloat("SLUICE_CONFIG_CACHE_SECONDS", 5.0, minimum=0)
SLUICE_TICKET_SECONDS = envint("SLUICE_TICKET_SECONDS", 120, minimum=5)
# Streams
SLUICE_STREAM_ABANDON_SECONDS = envfloat("SLUICE_STREAM_ABANDON_SECONDS", 60.0, minimum=0.1)
SLUICE_STREAM_TTL_SECONDS = envint("SLUICE_STREAM_TTL_SECONDS", 600, minimum=1)
SLUICE_STREAM_MAX_EVENTS = envint("SLUICE_STREAM_MAX_EVENTS", 100_000, minimum=10)
SLUICE_STREAM_MAX_BYTES = envint("SLUICE_STREAM_MAX_BYTES", 32 * 1024 * 1024, minimum=1024)
SLUICE_SSE_KEEPALIVE_SECONDS = envfloat("SLUICE_SSE_KEEPALIVE_SECONDS", 15.0, minimum=0.05)
SLUICE_SSE_RETRY_MS = envint("SLUICE_SSE_RETRY_MS", 1000, minimum=0)
SLUICE_READER_BUFFER_BYTES = envint("SLUICE_READER_BUFFER_BYTES", 256 * 1024, minimum=1024)
SLUICE_READER_STALL_SECONDS = envfloat("SLUICE_READER_STALL_SECONDS", 30.0, minimum=0.1)
SLUICE_REDIS_BATCH_SECONDS = envfloat("SLUICE_REDIS_BATCH_SECONDS", 0.02, minimum=0)
# Upstreams
SLUICE_UPSTREAM_CONNECT_TIMEOUT = envfloat("SLUICE_UPSTREAM_CONNECT_TIMEOUT", 10.0, minimum=0.01)
SLUICE_UPSTREAM_MAX_CONNECTIONS = envint("SLUICE_UPSTREAM_MAX_CONNECTIONS", 1000, minimum=1)
SLUICE_BREAKER_FAILURES = envint("SLUICE_BREAKER_FAILURES", 5, minimum=1)
SLUICE_BREAKER_COOLDOWN_SECONDS = envfloat("SLUICE_BREAKER_COOLDOWN_SECONDS", 30.0, minimum=0.1)
# Limits: an app without a concurrent_streams limit of its own may run this many
# requests at once (its fair share of the upstream pool; 0: no default share).
SLUICE_APP_MAX_CONCURRENT_STREAMS = envint(
    "SLUICE_APP_MAX_CONCURRENT_STREAMS", max(1, SLUICE_UPSTREAM_MAX_CONNECTIONS // 4), minimum=0
)
# The output tokens a request is assumed to produce, for admission's token
# estimate, when it names no max tokens and its app has no ceiling.
SLUICE_LIMIT_DEFAULT_MAX_TOKENS = envint("SLUICE_LIMIT_DEFAULT_MAX_TOKENS", 1024, minimum=1)
SLUICE_DEMO_TOKEN_DELAY = envfloat("SLUICE_DEMO_TOKEN_DELAY", 0.03, minimum=0)
# Metrics
SLUICE_METRICS_TOKEN = envstr("SLUICE_METRICS_TOKEN")
SLUICE_METRICS_ALLOWED_NETWORKS = envlist("SLUICE_METRICS_ALLOWED_NETWORKS", "127.0.0.0/8,::1/128")
# TLS for the production server
SLUICE_TLS_CERT_FILE = envstr("SLUICE_TLS_CERT_FILE")
SLUICE_TLS_KEY_FILE = envstr("SLUICE_TLS_KEY_FILE")
SLUICE_LOG_CONTENT = envbool("SLUICE_LOG_CONTENT", False)
SLUICE_AUDIT_QUEUE_SIZE = envint("SLUICE_AUDIT_QUEUE_SIZE", 10_000, minimum=1)
# A write-ahead (the record of a request just accepted) reaches the audit
# process within this, instead of the writer's 0.25 s period.
SLUICE_AUDIT_WRITE_AHEAD_SECONDS = envfloat("SLUICE_AUDIT_WRITE_AHEAD_SECONDS", 0.05, minimum=0)
# Served gateway: audit rows are built and stored by a child process.
SLUICE_AUDIT_PROCESS = envbool("SLUICE_AUDIT_PROCESS", True)
# Tamper evidence: the Ed25519 seed (base64 of 32 bytes) that signs checkpoints
# of the audit chain, and the public keys (base64) of earlier seeds, still trusted.
SLUICE_AUDIT_SIGNING_KEY = envsecret(
    "SLUICE_AUDIT_SIGNING_KEY", dev_default=_dev.get("SLUICE_AUDIT_SIGNING_KEY")
)
SLUICE_AUDIT_VERIFY_KEYS = envlist("SLUICE_AUDIT_VERIFY_KEYS")
# Served gateway: a signed checkpoint this often when the chain grew (0: never).
SLUICE_AUDIT_CHECKPOINT_SECONDS = envfloat("SLUICE_AUDIT_CHECKPOINT_SECONDS", 300.0, minimum=0)
# Records are kept this many days unless their app says otherwise.
SLUICE_AUDIT_RETENTION_DAYS = envint("SLUICE_AUDIT_RETENTION_DAYS", 365, minimum=1)
# Served gateway: prune expired records this often, one instance at a time (0: never).
SLUICE_AUDIT_PRUNE_SECONDS = envfloat("SLUICE_AUDIT_PRUNE_SECONDS", 3600.0, minimum=0)
# This gateway instance's name in audit records and heartbeats (default host:pid:random).
SLUICE_INSTANCE_ID = envstr("SLUICE_INSTANCE_ID")
# While the database is unreachable, audit batches wait in a local file here.
SLUICE_AUDIT_SPOOL_DIR = Path(envstr("SLUICE_AUDIT_SPOOL_DIR", str(VAR_DIR / "audit-spool")))
SLUICE_AUDIT_SPOOL_MAX_BYTES = envint("SLUICE_AUDIT_SPOOL_MAX_BYTES", 1 << 30, minimum=1)
# When the spool is full: "refuse" new requests (503 audit_unavailable) or "drop" records.
SLUICE_AUDIT_SPOOL_FULL = envstr("SLUICE_AUDIT_SPOOL_FULL", "refuse")
if SLUICE_AUDIT_SPOOL_FULL not in ("refuse", "drop"):
    raise ImproperlyConfigured("SLUICE_AUDIT_SPOOL_FULL must be 'refuse' or 'drop'")
# An instance whose heartbeat is older than this is dead (its requests: interrupted).
SLUICE_INSTANCE_DEAD_SECONDS = envfloat("SLUICE_INSTANCE_DEAD_SECONDS", 30.0, minimum=1)
# Redis mode: a stream whose instance sent no heartbeat for this long is
# carried on by another (streaming.core.takeover); 0 turns takeover off.
SLUICE_TAKEOVER_SECONDS = envfloat("SLUICE_TAKEOVER_SECONDS", 3.0, minimum=0)
# SIGTERM: how long running streams may go on before they are handed over.
SLUICE_SHUTDOWN_GRACE_SECONDS = envfloat("SLUICE_SHUTDOWN_GRACE_SECONDS", 30.0, minimum=0)
# Served gateway: objects allocated (net) between two young garbage collections.
SLUICE_GC_YOUNG_THRESHOLD = envint("SLUICE_GC_YOUNG_THRESHOLD", 10_000, minimum=1)

# --- The network edge -------------------------------------------------------
# Proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (CIDRs). None
# by default: the TCP peer is the client for the audit, /metrics and throttles.
SLUICE_TRUSTED_PROXIES: list[str] = envnetworks("SLUICE_TRUSTED_PROXIES")
# A connection must complete a request's headers this soon after it opens (or,
# kept alive, after the request's first byte); a silent connection is closed too.
SLUICE_HEADER_TIMEOUT_SECONDS = envfloat("SLUICE_HEADER_TIMEOUT_SECONDS", 10.0, minimum=0.05)
# A request body must have arrived this soon after its headers (else 408).
SLUICE_BODY_TIMEOUT_SECONDS = envfloat("SLUICE_BODY_TIMEOUT_SECONDS", 30.0, minimum=0.05)
# An idle kept-alive HTTP connection is closed after this long.
SLUICE_KEEPALIVE_SECONDS = envint("SLUICE_KEEPALIVE_SECONDS", 5, minimum=1)
# A WebSocket that sent no message and follows no stream this long is closed (4408).
SLUICE_WS_IDLE_SECONDS = envfloat("SLUICE_WS_IDLE_SECONDS", 120.0, minimum=0.05)
# permessage-deflate on WebSocket, if the client offers it (browsers do): off, like
# the SSE responses, as it nearly doubles the CPU a token costs (docs/configuration.md).
SLUICE_WS_COMPRESSION = envbool("SLUICE_WS_COMPRESSION", False)
# Open connections (HTTP and WebSocket) per client address; 0: no cap. Peers in
# SLUICE_TRUSTED_PROXIES are not capped.
SLUICE_MAX_CONNECTIONS_PER_CLIENT = envint("SLUICE_MAX_CONNECTIONS_PER_CLIENT", 256, minimum=0)

# Failed token requests / admin sign-ins allowed per window, per client id or
# username and per client address; over either, 429 until the window ends. 0: off.
SLUICE_THROTTLE_CLIENT_FAILURES = envint("SLUICE_THROTTLE_CLIENT_FAILURES", 10, minimum=0)
SLUICE_THROTTLE_ADDRESS_FAILURES = envint("SLUICE_THROTTLE_ADDRESS_FAILURES", 50, minimum=0)
SLUICE_THROTTLE_WINDOW_SECONDS = envint("SLUICE_THROTTLE_WINDOW_SECONDS", 300, minimum=1)

# SLUICE_LOG_FORMAT=json: one JSON object a line; request/stream ids on each.
LOG_FORMAT = envstr("SLUICE_LOG_FORMAT", "text")
if LOG_FORMAT not in ("text", "json"):
    raise ImproperlyConfigured(f"SLUICE_LOG_FORMAT must be 'text' or 'json', not {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "streaming.observability.logging.ContextFilter"}},
    "formatters": {
        "text": {"()": "streaming.observability.logging.TextFormatter"},
        "json": {"()": "streaming.observability.logging.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["context"],
        }
    },
    "root": {"handlers": ["console"], "level": envstr("LOG_LEVEL", "INFO")},
    "loggers": {"httpx": {"level": "WARNING"}, "httpcore": {"level": "WARNING"}},
}
