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

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
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
