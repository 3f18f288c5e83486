"""A third-party plugin, installed the way a user installs one: examples/plugins/redis is pip
installed into the virtualenv, found through its ``orchestra.plugins`` entry point by a real
worker and by the API, and uninstalled at the end."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import uuid

import pytest
import redis
from django.core.exceptions import ValidationError
from rest_framework.test import APIClient

from plugins.base import PluginError, StepContext
from plugins.registry import get_plugin, installed_plugins
from runs.models import TestRun
from runs.services import run_start
from tests.factories import make_scenario
from tests.support import ROOT, wait_for

pytestmark = [pytest.mark.integration]

URL = "redis://127.0.0.1:6379/0"
ID = {"id": "$.id"}
PACKAGE = ROOT / "examples" / "plugins" / "redis"


@pytest.fixture(scope="module", autouse=True)
def installed(tmp_path_factory):
    """orchestra-redis in the virtualenv for this module's tests, and gone afterwards."""
    # Built from a copy: an in-tree build would leave build/ and *.egg-info in the example.
    source = tmp_path_factory.mktemp("orchestra-redis") / "redis"
    shutil.copytree(PACKAGE, source)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    install = [*pip, "install", "--no-deps", "--no-build-isolation", "--no-index", str(source)]
    subprocess.run(install, check=True, capture_output=True)
    importlib.invalidate_caches()
    installed_plugins.cache_clear()
    yield
    subprocess.run([*pip, "uninstall", "-y", "orchestra-redis"], check=True, capture_output=True)
    installed_plugins.cache_clear()
    sys.modules.pop("orchestra_redis", None)


@pytest.fixture
def prefix():
    """A key and channel prefix of the test's own; its keys are deleted afterwards."""
    prefix = f"orchestra-test-{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis(host="127.0.0.1", port=6379, db=0)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


def finished(run: TestRun) -> TestRun:
    def done() -> bool:
        run.refresh_from_db()
        return run.is_finished

    wait_for(done, timeout=60, message=f"run {run.id} to finish")
    return run


def command(name: str, verb: str, *args, **extra) -> dict:
    return {
        "name": name,
        "plugin": "redis",
        "with": {"url": URL, "command": verb, "args": list(args)},
        **extra,
    }


def test_the_entry_point_registers_the_plugin_and_the_api_lists_it(viewer_client):
    plugin = get_plugin("redis")
    assert type(plugin).__module__ == "orchestra_redis"

    listed = {entry["name"]: entry for entry in viewer_client.get("/api/plugins/").json()}
    assert listed["redis"]["description"].startswith("Sends one Redis command")
    assert listed["redis"]["params_schema"] == plugin.params_schema
    assert listed["redis"]["listen_schema"]["required"] == ["url", "channel"]
    assert listed["redis"]["example"]["plugin"] == "redis"
    assert APIClient().get("/api/plugins/").status_code == 401


def test_a_worker_runs_a_scenario_with_it_and_a_wrong_value_fails(live_db, worker_factory, prefix):
    worker_factory("redis")
    key, channel = f"{prefix}order", f"{prefix}events"
    listen = {"url": URL, "channel": channel}
    passing = make_scenario(
        [
            command(
                "remember",
                "SET",
                key,
                '{"id": 7, "state": "new"}',
                # Subscribed before this step runs; the message arrives two steps later.
                listen={"as": "events", "plugin": "redis", "with": listen},
                expect={"value": True},
            ),
            command("read", "GET", key, expect={"json": {"$.state": "new"}}, capture=ID),
            command("announce", "PUBLISH", channel, '{"order": {{ id }}, "event": "created"}'),
            {
                "name": "the event",
                "plugin": "redis",
                "with": {"await": "events", "match": {"$.event": "created"}},
                "expect": {"json": {"$[0].order": 7}},
                "timeout": 10,
            },
        ]
    )
    failing = make_scenario([command("read", "GET", key, expect={"json": {"$.state": "paid"}})])

    passed = finished(run_start(scenario=passing))
    assert passed.status == "PASSED", passed.error
    remember, read, announce, event = passed.steps.order_by("position")
    assert read.captures == {"id": 7}
    assert read.request == {"url": URL, "command": "GET", "args": [key]}
    assert announce.response == {"value": 1}  # one subscriber: the listener
    assert event.response["messages"][0]["channel"] == channel

    failed = finished(run_start(scenario=failing))
    assert failed.status == "FAILED"
    assert "$.state is 'new', expected 'paid'" in failed.steps.get().error


def test_a_bad_command_is_refused_when_the_scenario_is_saved(db):
    with pytest.raises(ValidationError) as refused:
        make_scenario([command("wipe", "FLUSHALL")])
    assert "steps[0] (wipe): with.command: 'FLUSHALL' is not one of" in str(refused.value)


def test_an_unreachable_server_is_a_retryable_error(db):
    context = StepContext(run_id=1, step_name="nowhere", timeout=5)
    with pytest.raises(PluginError) as unreachable:
        get_plugin("redis").execute(
            {"url": "redis://:hunter2@127.0.0.1:1/0", "command": "GET", "args": ["k"]}, context
        )
    assert unreachable.value.retryable
    assert "hunter2" not in str(unreachable.value) and ":***@" in str(unreachable.value)
