"""Django settings of the hand-written peer: a plain project a user would start without orchestra.

Nothing from orchestra: one database from ``DATABASE_URL`` (the bench points it at
``orchestra_bench``), persistent connections (``CONN_MAX_AGE``), Django's defaults otherwise.
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlparse

_url = urlparse(
    os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/orchestra_bench")
)

SECRET_KEY = "bench-peer-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS: list[str] = []
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(_url.path.lstrip("/")),
        "USER": unquote(_url.username or "postgres"),
        "PASSWORD": unquote(_url.password or ""),
        "HOST": _url.hostname or "127.0.0.1",
        "PORT": str(_url.port or 5432),
        # Persistent connections, as Django's deployment checklist recommends. Celery closes
        # them around every task anyway unless told otherwise: see CELERY_DB_REUSE_MAX in peers.py.
        "CONN_MAX_AGE": 600,
    }
}
