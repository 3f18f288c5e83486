"""The WSGI application; a missing or bad setting stops the server with one line on stderr."""

import os

from django.core.wsgi import get_wsgi_application

from orchestra.celery import app as celery_app
from orchestra.env import exit_on_configuration_error

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestra.settings")

# Exit code 3 is gunicorn's "worker failed to boot": its arbiter stops instead of starting the
# worker again and again. Celery's configuration is read here too, so a bad CELERY_* value stops
# start-up rather than the first request that publishes a run.
with exit_on_configuration_error(exit_code=3):
    application = get_wsgi_application()
    celery_app.conf.broker_url  # noqa: B018 - reads celeryconfig.py
