"""Django settings, read from the environment and the .env file (see README, "Configuration")."""

from __future__ import annotations

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from orchestra.env import (
    env_bool,
    env_database,
    env_float,
    env_int,
    env_list,
    env_str,
    load_env_file,
)

load_env_file()

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DJANGO_DEBUG", False)
# Production has no default secret: start-up stops with a clear message when it is missing.
SECRET_KEY = env_str("SECRET_KEY", "insecure-development-key-only-for-debug" if DEBUG else None)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "orchestra.apps.OrchestraAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "orchestra",
    "plugins",
    "targets",
    "runs",
    "queue_catalog",
    "launches",  # after queue_catalog: its run_finished receiver must run after the queue's
    "notifications",  # only listens (run_finished, launch_finished)
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "orchestra.middleware.RequestSizeLimitMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "orchestra.urls"
WSGI_APPLICATION = "orchestra.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

DATABASES = {
    "default": {
        **env_database("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/orchestra"),
        # Keep connections across Celery tasks and requests: reconnecting costs ~15 ms per task.
        "CONN_MAX_AGE": env_int("DB_CONN_MAX_AGE", 600),
        "CONN_HEALTH_CHECKS": True,
        "TEST": {"NAME": env_str("TEST_DATABASE_NAME", "test_orchestra")},
    }
}

# The cache every web process on every host shares: the API's throttles and the health answer
# live in it. PostgreSQL (a table made by `manage.py createcachetable`) unless Redis is given.
CACHE_TABLE = "orchestra_cache"
ORCHESTRA_REDIS_URL = env_str("ORCHESTRA_REDIS_URL", "")
CACHES = {
    "default": {
        **(
            {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": ORCHESTRA_REDIS_URL,
            }
            if ORCHESTRA_REDIS_URL
            else {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": CACHE_TABLE}
        ),
        # Installations sharing one Redis keep apart by their prefix.
        "KEY_PREFIX": env_str("ORCHESTRA_CACHE_KEY_PREFIX", "orchestra"),
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("ru", "Русский")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
# One time format in every language, with seconds and the zone (orchestra/formats/).
FORMAT_MODULE_PATH = ["orchestra.formats"]

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "orchestra.api.authentication.CachedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["orchestra.api.permissions.RolePermission"],
    "DEFAULT_PAGINATION_CLASS": "orchestra.api.pagination.StrictLimitOffsetPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    # JSON only: payloads and definitions are JSON objects, which form encodings cannot carry.
    "DEFAULT_PARSER_CLASSES": ["orchestra.api.parsers.LimitedJSONParser"],
    "DEFAULT_THROTTLE_CLASSES": ["orchestra.api.throttling.WriteRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "writes": env_str("ORCHESTRA_API_WRITE_RATE", "600/minute"),
        "anon": env_str("ORCHESTRA_API_ANON_RATE", "60/minute"),
    },
    # Proxies in front of the web server whose X-Forwarded-For entries are trusted; with 0 the
    # client is REMOTE_ADDR, so a client cannot pick its own throttle key with a header.
    "NUM_PROXIES": env_int("ORCHESTRA_NUM_PROXIES", 0),
    "EXCEPTION_HANDLER": "orchestra.api.exceptions.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "orchestra API",
    "DESCRIPTION": "Run API and integration test scenarios asynchronously; the scenario queue.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI and ReDoc from our own static files (drf-spectacular-sidecar): the docs work
    # without internet access and load no unpinned code from a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "orchestra.api.schema.document_write_limits",
        "launches.api.schema.document_launch_choices",
    ],
    "ENUM_NAME_OVERRIDES": {
        "RunStatusEnum": "runs.states.RunStatus",
        "StepStatusEnum": "runs.models.StepStatus",
        "PriorityEnum": "runs.models.Priority",
        "DeadLetterStatusEnum": "runs.models.DeadLetterStatus",
        "RecordStatusEnum": "queue_catalog.states.RecordStatus",
        "LaunchStatusEnum": "launches.states.LaunchStatus",
        "ReachabilityEnum": ["ok", "unreachable", "unknown"],
        "HealthStatusEnum": ["ok", "degraded"],
    },
}

# API limits (see README, "Limits").
ORCHESTRA_API_MAX_BODY_BYTES = env_int("ORCHESTRA_API_MAX_BODY_BYTES", 1_048_576)
ORCHESTRA_API_MAX_JSON_DEPTH = env_int("ORCHESTRA_API_MAX_JSON_DEPTH", 32)
ORCHESTRA_API_MAX_PAYLOAD_BYTES = env_int("ORCHESTRA_API_MAX_PAYLOAD_BYTES", 65_536)
# Seconds a web process remembers an API token's user and role (0: looks them up every request);
# a revoked token, deactivated user or changed role takes effect within this many seconds.
ORCHESTRA_API_TOKEN_CACHE_SECONDS = env_float("ORCHESTRA_API_TOKEN_CACHE_SECONDS", 5.0)
DATA_UPLOAD_MAX_MEMORY_SIZE = ORCHESTRA_API_MAX_BODY_BYTES
# Runs (scenarios × data rows) one launch may start at once.
ORCHESTRA_LAUNCH_MAX_RUNS = env_int("ORCHESTRA_LAUNCH_MAX_RUNS", 10_000)

# Flaky detection: a scenario's last N finished runs; flaky at this many pass<->fail flips.
ORCHESTRA_FLAKY_WINDOW = env_int("ORCHESTRA_FLAKY_WINDOW", 20)
ORCHESTRA_FLAKY_MIN_FLIPS = env_int("ORCHESTRA_FLAKY_MIN_FLIPS", 3)

# Notifications (docs/schedules-and-notifications.md): a scenario is "failing" after this many
# consecutive failed runs; webhook deliveries time out, and are given up after max attempts.
ORCHESTRA_NOTIFY_FAILING_AFTER = env_int("ORCHESTRA_NOTIFY_FAILING_AFTER", 3)
ORCHESTRA_WEBHOOK_TIMEOUT_SECONDS = env_float("ORCHESTRA_WEBHOOK_TIMEOUT_SECONDS", 5.0)
ORCHESTRA_WEBHOOK_MAX_ATTEMPTS = env_int("ORCHESTRA_WEBHOOK_MAX_ATTEMPTS", 6)
ORCHESTRA_WEBHOOK_BACKOFF_SECONDS = env_float("ORCHESTRA_WEBHOOK_BACKOFF_SECONDS", 10.0)
ORCHESTRA_NOTIFY_EMAIL_FROM = env_str("ORCHESTRA_NOTIFY_EMAIL_FROM", "orchestra@localhost")

# Security headers; HTTPS-only cookies and redirects unless explicitly turned off for local use.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
X_FRAME_OPTIONS = "DENY"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    # Credentials and everything a run renders from them are masked in every record.
    "filters": {"redact": {"()": "runs.redaction.RedactingFilter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["redact"]}
    },
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}

# --- orchestra --------------------------------------------------------------------------------
# The hot statements of workers are prepared once per connection (orchestra.prepared); turn it off
# behind a pooler in transaction mode (PgBouncer), which cannot keep prepared statements.
ORCHESTRA_DB_PREPARED_STATEMENTS = env_bool("ORCHESTRA_DB_PREPARED_STATEMENTS", True)
# How long a claimed run stays owned without a heartbeat before another worker may take it over.
ORCHESTRA_RUN_LEASE_SECONDS = env_float("ORCHESTRA_RUN_LEASE_SECONDS", 30.0)
# Crashed deliveries of one run (worker killed mid-run) before it is given up as ERROR.
ORCHESTRA_MAX_DELIVERY_ATTEMPTS = env_int("ORCHESTRA_MAX_DELIVERY_ATTEMPTS", 3)
# A QUEUED run whose message was not published within this many seconds is republished.
ORCHESTRA_PUBLISH_GRACE_SECONDS = env_float("ORCHESTRA_PUBLISH_GRACE_SECONDS", 10.0)
# How often beat runs the sweeps (seconds).
ORCHESTRA_SWEEP_INTERVAL_SECONDS = env_float("ORCHESTRA_SWEEP_INTERVAL_SECONDS", 5.0)
# Stored response bodies are cut to this many characters.
ORCHESTRA_MAX_STORED_BODY_CHARS = env_int("ORCHESTRA_MAX_STORED_BODY_CHARS", 4096)
# After a cancel or a time limit, the finally steps run within this many seconds (after a soft
# time limit also within what is left before the hard one).
ORCHESTRA_FINALLY_GRACE_SECONDS = env_float("ORCHESTRA_FINALLY_GRACE_SECONDS", 30.0)
# A response body longer than this ends its step ERROR; a worker never holds more of one.
ORCHESTRA_MAX_RESPONSE_BYTES = env_int("ORCHESTRA_MAX_RESPONSE_BYTES", 8 * 1024 * 1024)
# Retention: beat deletes finished runs and queue records older than this many days once an hour
# (queue_catalog.retention, also `manage.py purge_runs`); 0 keeps everything.
ORCHESTRA_RETENTION_DAYS = env_int("ORCHESTRA_RETENTION_DAYS", 0)
# Timeout of a step that names none (seconds).
ORCHESTRA_DEFAULT_STEP_TIMEOUT = env_float("ORCHESTRA_DEFAULT_STEP_TIMEOUT", 30.0)
# Upper bound for steps in one scenario.
ORCHESTRA_MAX_STEPS = env_int("ORCHESTRA_MAX_STEPS", 200)
# Scenario queue: starts per record before it is given up (per record overridable), and the
# backoff between re-runs of a failed record (base * 2^(starts-1), capped).
ORCHESTRA_QUEUE_MAX_ATTEMPTS = env_int("ORCHESTRA_QUEUE_MAX_ATTEMPTS", 5)
ORCHESTRA_QUEUE_RETRY_BASE_SECONDS = env_float("ORCHESTRA_QUEUE_RETRY_BASE_SECONDS", 5.0)
ORCHESTRA_QUEUE_RETRY_MAX_SECONDS = env_float("ORCHESTRA_QUEUE_RETRY_MAX_SECONDS", 600.0)
# Throttling (targets.throttle): a target's Retry-After is obeyed up to ORCHESTRA_MAX_RETRY_AFTER
# seconds; a run waits on throttled keys for ORCHESTRA_MAX_THROTTLE_WAIT seconds in all before the
# step ends ERROR; a wait shorter than ORCHESTRA_THROTTLE_SLEEP_SECONDS sleeps inside the step, a
# longer one gives the run back (kept in PostgreSQL, resumed by the sweep).
ORCHESTRA_MAX_RETRY_AFTER = env_float("ORCHESTRA_MAX_RETRY_AFTER", 300.0)
ORCHESTRA_MAX_THROTTLE_WAIT = env_float("ORCHESTRA_MAX_THROTTLE_WAIT", 900.0)
ORCHESTRA_THROTTLE_SLEEP_SECONDS = env_float("ORCHESTRA_THROTTLE_SLEEP_SECONDS", 1.0)
# A render of templates gets ORCHESTRA_TEMPLATE_TIME_LIMIT seconds (runs/templating.py).
ORCHESTRA_TEMPLATE_TIME_LIMIT = env_float("ORCHESTRA_TEMPLATE_TIME_LIMIT", 1.0)
# Credentials steps read as {{ credentials.NAME }}, from ORCHESTRA_CREDENTIAL_<NAME> variables of
# the worker's environment: never stored with a scenario or run, always redacted from results.
# ORCHESTRA_CREDENTIAL_<NAME>_HOSTS (comma-separated outbound entries) binds NAME to the only
# targets it may be sent to (plugins/outbound.py); it is a binding, not a credential.
CREDENTIAL_PREFIX = "ORCHESTRA_CREDENTIAL_"
CREDENTIAL_HOSTS_SUFFIX = "_HOSTS"
_credential_variables = {
    name.removeprefix(CREDENTIAL_PREFIX): value
    for name, value in os.environ.items()
    if name.startswith(CREDENTIAL_PREFIX) and value
}
ORCHESTRA_CREDENTIALS = {
    name: value
    for name, value in _credential_variables.items()
    if not name.endswith(CREDENTIAL_HOSTS_SUFFIX)
}
ORCHESTRA_CREDENTIAL_HOSTS = {
    name.removesuffix(CREDENTIAL_HOSTS_SUFFIX): env_list(CREDENTIAL_PREFIX + name, [])
    for name in _credential_variables
    if name.endswith(CREDENTIAL_HOSTS_SUFFIX)
}
if unbound := sorted(set(ORCHESTRA_CREDENTIAL_HOSTS) - set(ORCHESTRA_CREDENTIALS)):
    raise ImproperlyConfigured(
        ", ".join(f"{CREDENTIAL_PREFIX}{name}{CREDENTIAL_HOSTS_SUFFIX}" for name in unbound)
        + f" binds hosts to no credential: {CREDENTIAL_PREFIX}<NAME> is not set"
    )
# Which hosts steps may connect to (plugins/outbound.py): when ALLOW is set a target must match
# it; DENY adds refused entries; orchestra's own services (broker and its management API,
# database, Redis cache, Flower, web server) and the link-local and cloud metadata addresses are
# refused unless DENY_INFRASTRUCTURE is false, or OPEN_INFRASTRUCTURE opens one (test
# environments).
ORCHESTRA_OUTBOUND_ALLOW = env_list("ORCHESTRA_OUTBOUND_ALLOW", [])
ORCHESTRA_OUTBOUND_DENY = env_list("ORCHESTRA_OUTBOUND_DENY", [])
ORCHESTRA_OUTBOUND_DENY_INFRASTRUCTURE = env_bool("ORCHESTRA_OUTBOUND_DENY_INFRASTRUCTURE", True)
ORCHESTRA_OUTBOUND_OPEN_INFRASTRUCTURE = env_list("ORCHESTRA_OUTBOUND_OPEN_INFRASTRUCTURE", [])
# The amqp plugin refuses orchestra's own vhost on its own broker even where
# OPEN_INFRASTRUCTURE opens the broker's address; true allows it.
ORCHESTRA_AMQP_ALLOW_OWN_VHOST = env_bool("ORCHESTRA_AMQP_ALLOW_OWN_VHOST", False)
# RabbitMQ's management API; empty: port 15672 of each broker host.
ORCHESTRA_BROKER_MANAGEMENT_URL = env_str("ORCHESTRA_BROKER_MANAGEMENT_URL", "")
# Every URL orchestra's web server answers at (its bind address, its public URL): steps may not
# call it.
ORCHESTRA_WEB_URLS = env_list("ORCHESTRA_WEB_URLS", ["http://127.0.0.1:8000"])
# /api/health/ checks the database and the broker at most once per this many seconds.
ORCHESTRA_HEALTH_CACHE_SECONDS = env_int("ORCHESTRA_HEALTH_CACHE_SECONDS", 5)
# Where the admin dashboard links to Flower.
ORCHESTRA_FLOWER_URL = env_str("ORCHESTRA_FLOWER_URL", "http://127.0.0.1:5555/")
# A scraper presenting "Authorization: Bearer <token>" may read /metrics; empty: users only.
ORCHESTRA_METRICS_TOKEN = env_str("ORCHESTRA_METRICS_TOKEN", "")
# The folder the grpc plugin's `protos` paths are read from (a step names files inside it only).
ORCHESTRA_GRPC_PROTO_ROOT = Path(env_str("ORCHESTRA_GRPC_PROTO_ROOT", str(BASE_DIR / "protos")))
