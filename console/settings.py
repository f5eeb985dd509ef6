"""Django settings for the admin console.

Everything deployment-specific comes from the environment:
CONSOLE_SECRET_KEY, CONSOLE_DEBUG, CONSOLE_DB_PATH, CONSOLE_ETCD_ENDPOINTS.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


SECRET_KEY = os.environ.get(
    "CONSOLE_SECRET_KEY", "dev-only-insecure-key-set-CONSOLE_SECRET_KEY-in-production"
)
DEBUG = _env_bool("CONSOLE_DEBUG", default=False)
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "daphne",
    "channels",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "console",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "console.middleware.SecurityHeadersMiddleware",
]

ROOT_URLCONF = "console.urls"

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
                "console.context_processors.cluster",
            ],
        },
    },
]

ASGI_APPLICATION = "console.asgi.application"

CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

_db_path = Path(os.environ.get("CONSOLE_DB_PATH", BASE_DIR / "var" / "console.sqlite3"))
if not _db_path.is_absolute():
    _db_path = BASE_DIR / _db_path
_db_path.parent.mkdir(parents=True, exist_ok=True)

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": _db_path,
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "index"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "var" / "static"

# Served over HTTPS (CONSOLE_HTTPS=1, production): secure cookies, redirect to HTTPS, HSTS.
# Behind a TLS-terminating proxy, also set CONSOLE_TRUST_PROXY_HTTPS=1 (X-Forwarded-Proto).
CONSOLE_HTTPS = _env_bool("CONSOLE_HTTPS", default=False)
SESSION_COOKIE_SECURE = CONSOLE_HTTPS
CSRF_COOKIE_SECURE = CONSOLE_HTTPS
SESSION_COOKIE_HTTPONLY = True
SECURE_SSL_REDIRECT = CONSOLE_HTTPS
SECURE_HSTS_SECONDS = 31536000 if CONSOLE_HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = CONSOLE_HTTPS
SECURE_HSTS_PRELOAD = CONSOLE_HTTPS
if _env_bool("CONSOLE_TRUST_PROXY_HTTPS", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Failed logins allowed per user name and client address within the window (seconds).
CONSOLE_LOGIN_ATTEMPTS = int(os.environ.get("CONSOLE_LOGIN_ATTEMPTS", "5"))
CONSOLE_LOGIN_WINDOW = int(os.environ.get("CONSOLE_LOGIN_WINDOW", "300"))
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# Security headers (console/middleware.py adds CSP, Referrer-Policy, X-Content-Type-Options).
X_FRAME_OPTIONS = "DENY"
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CONTENT_TYPE_NOSNIFF = True
CONSOLE_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The REST API (console/api): token or session auth; token first, so anonymous calls get 401.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "console.api.errors.exception_handler",
    # bounded password guessing through the token endpoint (see console/api/urls.py)
    "DEFAULT_THROTTLE_RATES": {"login": "10/min"},
}

SPECTACULAR_SETTINGS = {
    "TITLE": "etcd-py console API",
    "DESCRIPTION": (
        "REST API of the etcd-py admin console: keys, leases, cluster members and status.\n\n"
        "**Auth**: `Authorization: Token <token>` (POST username and password to "
        "`/api/v1/auth/token/`, or `manage.py drf_create_token <user>`) or the console's "
        "session cookie (plus `X-CSRFToken` for writes). Any signed-in user reads; editors "
        "and superusers write.\n\n"
        "**Keys** travel in the path as unpadded base64url of their bytes "
        "(`/api/v1/keys/L2NmZy9h/` is `/cfg/a`), so any bytes round-trip. Values are UTF-8 "
        'text (`"encoding": "utf-8"`) or base64 (`"encoding": "base64"`).\n\n'
        '**Errors**: `{"error": ..., "etcd_error": <etcd\'s message or null>, "code": '
        "<gRPC status code name or null>}`."
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": "/api/v1",
    "ENUM_NAME_OVERRIDES": {"ValueEncodingEnum": "console.api.serializers.ENCODINGS"},
    # /api/v1/docs/ loads Swagger UI from jsDelivr, pinned (console/api/views.py DocsView).
    "SWAGGER_UI_DIST": "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5.17.14",
    "SWAGGER_UI_FAVICON_HREF": "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5.17.14/favicon-32x32.png",
}

# The cluster the console talks to: etcd client endpoints, host:port, comma-separated.
CONSOLE_ETCD_ENDPOINTS = _env_list(
    "CONSOLE_ETCD_ENDPOINTS", "127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379"
)
# Optional etcd authentication and TLS for the console's connection (console/etcd.py).
CONSOLE_ETCD_USER = os.environ.get("CONSOLE_ETCD_USER", "")
CONSOLE_ETCD_PASSWORD = os.environ.get("CONSOLE_ETCD_PASSWORD", "")
CONSOLE_ETCD_CA_FILE = os.environ.get("CONSOLE_ETCD_CA_FILE", "")
CONSOLE_ETCD_CERT_FILE = os.environ.get("CONSOLE_ETCD_CERT_FILE", "")
CONSOLE_ETCD_KEY_FILE = os.environ.get("CONSOLE_ETCD_KEY_FILE", "")
CONSOLE_ETCD_TIMEOUT = float(os.environ.get("CONSOLE_ETCD_TIMEOUT", "5"))
CONSOLE_ETCD_RETRY_TIMEOUT = float(os.environ.get("CONSOLE_ETCD_RETRY_TIMEOUT", "5"))

# The key browser (console/keys.py, console/views/keys.py).
CONSOLE_KEY_SEPARATOR = os.environ.get("CONSOLE_KEY_SEPARATOR", "/")
CONSOLE_KEYS_PAGE_SIZE = int(os.environ.get("CONSOLE_KEYS_PAGE_SIZE", "100"))
# Import dry runs are kept here until applied (one JSON file per dry run).
CONSOLE_IMPORT_DIR = Path(os.environ.get("CONSOLE_IMPORT_DIR", BASE_DIR / "var" / "imports"))
CONSOLE_IMPORT_MAX_BYTES = int(os.environ.get("CONSOLE_IMPORT_MAX_BYTES", str(32 * 1024 * 1024)))

# The live pages (console/consumers.py over websockets; console/live.py).
# The service registry's key prefix (cluster.registry's --prefix; default /services).
CONSOLE_REGISTRY_PREFIX = os.environ.get("CONSOLE_REGISTRY_PREFIX", "/services")
# Seconds between cluster dashboard samples, and between lease TTL reads on the services pages.
CONSOLE_DASHBOARD_INTERVAL = float(os.environ.get("CONSOLE_DASHBOARD_INTERVAL", "1"))
CONSOLE_SERVICES_TTL_INTERVAL = float(os.environ.get("CONSOLE_SERVICES_TTL_INTERVAL", "1"))
# Seconds the registry's watch outlives the last services page (its recent changes with it).
CONSOLE_SERVICES_LINGER = float(os.environ.get("CONSOLE_SERVICES_LINGER", "60"))
# Bytes of each value (and previous value) a watch event carries to the browser.
CONSOLE_WATCH_VALUE_BYTES = int(os.environ.get("CONSOLE_WATCH_VALUE_BYTES", "4096"))
