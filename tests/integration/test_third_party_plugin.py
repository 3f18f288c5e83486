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
from plugins.outbound import OutboundRefused
from plugins.registry import get_plugin, installed_plugins
from runs.models import TestRun
from runs.services import run_start
from tests.factories import make_scenario
from tests.integration.test_secrets import every_row_as_text
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


@pytest.fixture
def redis_user(prefix):
    """A Redis ACL user of the test's own, with a password, allowed only the prefix's keys and
    channels: ``redis://user:password@127.0.0.1:6379/0``."""
    user, password = prefix.rstrip(":"), f"canary-{uuid.uuid4().hex}"
    admin = redis.Redis(host="127.0.0.1", port=6379)
    admin.acl_setuser(
        user,
        enabled=True,
        passwords=[f"+{password}"],
        keys=[f"{prefix}*"],
        channels=[f"{prefix}*"],
        commands=["+@all"],
    )
    yield f"redis://{user}:{password}@127.0.0.1:6379/0", password
    admin.acl_deluser(user)
    admin.close()


def context(*, timeout: float = 5, **extra) -> StepContext:
    return StepContext(run_id=1, step_name="step", timeout=timeout, **extra)


def subscribers(channel: str) -> int:
    client = redis.Redis(host="127.0.0.1", port=6379)
    try:
        return dict(client.pubsub_numsub(channel))[channel.encode()]
    finally:
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


def test_a_worker_runs_a_scenario_with_it_and_a_wrong_value_fails(
    live_db, worker_factory, prefix, redis_user
):
    url, password = redis_user
    worker = worker_factory("redis", env={"ORCHESTRA_CREDENTIAL_REDIS_URL": url})
    key, channel = f"{prefix}order", f"{prefix}events"
    listen = {"url": "{{ credentials.REDIS_URL }}", "channel": channel}
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
    assert read.request["command"] == "GET" and read.request["args"] == [key]
    assert announce.response == {"value": 1}  # one subscriber: the listener
    assert event.response["messages"][0]["channel"] == channel
    # The listener was closed with the run: the server has no subscriber left.
    assert subscribers(channel) == 0

    failed = finished(run_start(scenario=failing))
    assert failed.status == "FAILED"
    assert "$.state is 'new', expected 'paid'" in failed.steps.get().error
    assert password not in every_row_as_text()
    assert password not in worker.output()


def test_a_message_published_by_the_triggering_step_or_before_the_await_is_caught(prefix):
    plugin, shared = get_plugin("redis"), context()
    url, channel = URL, f"{prefix}events"
    listener = plugin.listen({"url": url, "channel": channel}, shared)
    shared.resources.add("events", listener)
    # The "triggering step": published once the listener is in place, before any await.
    published = plugin.execute(
        {"url": url, "command": "PUBLISH", "args": [channel, '{"n": 1}']}, shared
    )
    plugin.execute({"url": url, "command": "PUBLISH", "args": [channel, "not json"]}, shared)
    awaited = context(resources=shared.resources)

    first = plugin.execute({"await": "events", "match": {"$.n": 1}}, awaited)
    second = plugin.execute({"await": "events"}, awaited)

    assert published.data == 1
    assert first.data == [{"n": 1}]
    assert second.data == [None] and second.response["messages"][0]["body"] == "not json"
    with pytest.raises(PluginError, match="0 of 1 matching messages") as late:
        plugin.execute({"await": "events"}, context(resources=shared.resources, timeout=0.3))
    assert late.value.retryable
    assert subscribers(channel) == 1
    assert shared.resources.close_all() == []
    assert subscribers(channel) == 0


def test_a_bad_command_is_refused_when_the_scenario_is_saved(db):
    with pytest.raises(ValidationError) as refused:
        make_scenario([command("wipe", "FLUSHALL")])
    assert "steps[0] (wipe): with.command: 'FLUSHALL' is not one of" in str(refused.value)


def test_an_unreachable_server_is_a_retryable_error_that_shows_no_password(db):
    with pytest.raises(PluginError) as unreachable:
        get_plugin("redis").execute(
            {"url": "redis://:hunter2@127.0.0.1:1/0", "command": "GET", "args": ["k"]}, context()
        )
    assert unreachable.value.retryable
    assert "hunter2" not in str(unreachable.value) and ":***@" in str(unreachable.value)


def test_a_wrong_type_is_a_permanent_error_and_a_wrong_password_too(prefix, redis_user):
    url, password = redis_user
    plugin, key = get_plugin("redis"), f"{prefix}list"
    plugin.execute({"url": url, "command": "LPUSH", "args": [key, "a"]}, context())

    with pytest.raises(PluginError, match="WRONGTYPE") as wrong_type:
        plugin.execute({"url": url, "command": "GET", "args": [key]}, context())
    with pytest.raises(PluginError, match="authentication failed") as refused:
        wrong = url.replace(password, "not-the-password")
        plugin.execute({"url": wrong, "command": "GET", "args": [key]}, context())

    assert not wrong_type.value.retryable and not refused.value.retryable


def test_orchestra_s_own_redis_is_refused_unless_opened(settings):
    settings.ORCHESTRA_REDIS_URL = "redis://127.0.0.1:6379/0"
    with pytest.raises(OutboundRefused):
        get_plugin("redis").execute({"url": URL, "command": "GET", "args": ["k"]}, context())
