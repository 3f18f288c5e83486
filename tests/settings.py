"""Settings for the test suite: the project's settings pointed at test-only resources.

Every pytest session gets its own database (``test_orchestra_<id>``, created and dropped by
pytest-django) and its own RabbitMQ vhost (``orchestra_test_<id>``, deleted at the end), so test
sessions never touch a developer's data or each other's. Worker processes started by the tests
inherit the id through the environment.
"""

import os

TEST_SESSION_ID = os.environ.setdefault("ORCHESTRA_TEST_ID", str(os.getpid()))
TEST_BROKER_VHOST = f"orchestra_test_{TEST_SESSION_ID}"

# A developer's .env (the demo writes one) must not reach the tests or their workers.
os.environ.setdefault("ORCHESTRA_ENV_FILE", os.devnull)
os.environ.setdefault("DJANGO_DEBUG", "true")
os.environ.setdefault("TEST_DATABASE_NAME", f"test_orchestra_{TEST_SESSION_ID}")
os.environ.setdefault("CELERY_BROKER_URL", f"amqp://guest:guest@127.0.0.1:5672/{TEST_BROKER_VHOST}")
os.environ.setdefault("ORCHESTRA_RUN_LEASE_SECONDS", "6")
os.environ.setdefault("ORCHESTRA_MAX_DELIVERY_ATTEMPTS", "3")
os.environ.setdefault("ORCHESTRA_PUBLISH_GRACE_SECONDS", "1")
os.environ.setdefault("ORCHESTRA_QUEUE_RETRY_BASE_SECONDS", "0.2")
os.environ.setdefault("ORCHESTRA_QUEUE_RETRY_MAX_SECONDS", "2")

from orchestra.settings import *  # noqa: E402,F403

CELERY_BROKER_URL_FOR_TESTS = os.environ["CELERY_BROKER_URL"]
