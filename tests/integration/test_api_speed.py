"""What ``POST /api/runs/`` costs in statements, and the token cache that spares its user and
role lookups (revocation is honoured within ``ORCHESTRA_API_TOKEN_CACHE_SECONDS``)."""

from __future__ import annotations

import time

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token

from orchestra.api.authentication import CachedTokenAuthentication
from runs.models import TestRun
from tests.conftest import make_api_client
from tests.factories import delay_step, make_scenario
from tests.support import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _no_token_remembered():
    CachedTokenAuthentication.forget_all()
    yield
    CachedTokenAuthentication.forget_all()


def _start(client, scenario) -> int:
    return client.post("/api/runs/", {"scenario": scenario.name}, format="json").status_code


def test_a_run_start_with_a_known_token_costs_four_statements():
    scenario = make_scenario([delay_step("wait")])
    client = make_api_client("operator")
    assert _start(client, scenario) == 201  # the token's user and role are remembered now

    with CaptureQueriesContext(connection) as queries:
        assert _start(client, scenario) == 201

    statements = [query["sql"].split()[0].upper() for query in queries.captured_queries]
    # The write throttle's window, the scenario with its version, the run's INSERT (committed
    # by itself), its dispatched_at once published: four round trips. The counter and the
    # dispatched_at hint do not wait for the WAL flush (SET LOCAL synchronous_commit = off).
    assert statements == ["SET", "SELECT", "INSERT", "SET"], queries.captured_queries
    assert "orchestra_throttle_window" in queries.captured_queries[0]["sql"]
    assert "authtoken" not in " ".join(q["sql"] for q in queries.captured_queries)
    assert TestRun.objects.filter(dispatched_at__isnull=False).count() == 2


def test_a_deleted_token_is_refused_within_the_cache_time(settings):
    settings.ORCHESTRA_API_TOKEN_CACHE_SECONDS = 1.0
    scenario = make_scenario([delay_step("wait")])
    client = make_api_client("operator")
    assert _start(client, scenario) == 201
    Token.objects.filter(user=client.user).delete()
    deleted_at = time.monotonic()

    wait_for(lambda: _start(client, scenario) == 401, timeout=5, message="401 after deletion")

    assert time.monotonic() - deleted_at < 1.0 + 0.5


def test_a_lost_role_and_a_deactivated_user_take_effect_within_the_cache_time(settings):
    settings.ORCHESTRA_API_TOKEN_CACHE_SECONDS = 1.0
    scenario = make_scenario([delay_step("wait")])
    client = make_api_client("operator")
    other = make_api_client("operator")
    assert _start(client, scenario) == 201
    assert _start(other, scenario) == 201
    client.user.groups.remove(Group.objects.get(name="operators"))
    other.user.is_active = False
    other.user.save(update_fields=["is_active"])

    wait_for(lambda: _start(client, scenario) == 403, timeout=5, message="403 without role")
    wait_for(lambda: _start(other, scenario) == 401, timeout=5, message="401 when inactive")


def test_without_a_cache_time_a_deleted_token_is_refused_at_once(settings):
    settings.ORCHESTRA_API_TOKEN_CACHE_SECONDS = 0
    scenario = make_scenario([delay_step("wait")])
    client = make_api_client("operator")
    assert _start(client, scenario) == 201
    Token.objects.filter(user=client.user).delete()

    assert _start(client, scenario) == 401


def test_a_wrong_token_is_refused_and_not_remembered():
    scenario = make_scenario([delay_step("wait")])
    client = make_api_client("operator")
    client.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)

    assert _start(client, scenario) == 401
    assert CachedTokenAuthentication._known == {}
