"""The outbound policy: steps may not reach orchestra's own services, link-local or cloud
metadata addresses; credentials go only to the hosts they are bound to."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys

import pytest
from celery import current_app
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from plugins.base import StepContext
from plugins.http import HttpPlugin
from plugins.outbound import (
    OutboundRefused,
    outbound_policy,
    step_outbound_check,
    validate_settings,
)

BROKER_PORT = 5672  # tests.settings: the broker and the database are on 127.0.0.1
DATABASE_PORT = 5432
MANAGEMENT_PORT = 15672
FLOWER_PORT = 5555  # ORCHESTRA_FLOWER_URL's default
WEB_PORT = 8000  # ORCHESTRA_WEB_URLS's default, as the Procfile and scripts/demo.sh bind it
INFRASTRUCTURE = [
    ("127.0.0.1", BROKER_PORT, "the message broker's address"),
    ("localhost", BROKER_PORT, "the message broker's address"),
    ("0.0.0.0", BROKER_PORT, "the message broker's address"),
    # RabbitMQ listens on every interface: any loopback address, or this machine's name.
    ("127.0.0.2", BROKER_PORT, "the message broker's address"),
    (socket.gethostname(), BROKER_PORT, "the message broker's address"),
    ("127.0.0.1", MANAGEMENT_PORT, "the message broker's management API"),
    ("localhost", MANAGEMENT_PORT, "the message broker's management API"),
    ("127.0.0.1", DATABASE_PORT, "the database's address"),
    ("::ffff:127.0.0.1", DATABASE_PORT, "the database's address"),
    ("::1", DATABASE_PORT, "the database's address"),
    ("127.0.0.1", FLOWER_PORT, "Flower's address"),
    ("127.0.0.1", WEB_PORT, "orchestra's web server"),
    ("localhost", WEB_PORT, "orchestra's web server"),
    ("169.254.169.254", 80, "a cloud metadata address"),
    ("fd00:ec2::254", 80, "a cloud metadata address"),
    ("metadata.google.internal", 80, "a cloud metadata address"),
    ("100.100.100.200", 8080, "a cloud metadata address"),
    ("169.254.1.1", 443, "a link-local address"),
    ("169.254.255.254", 8080, "a link-local address"),
    ("fe80::1", 80, "a link-local address"),
    ("::ffff:169.254.1.1", 80, "a link-local address"),
]


def refusal(host: str, port: int) -> str | None:
    try:
        outbound_policy().check(host, port)
    except OutboundRefused as exc:
        assert exc.retryable is False
        return str(exc)
    return None


@pytest.mark.parametrize(("host", "port", "reason"), INFRASTRUCTURE)
def test_infrastructure_and_metadata_addresses_are_refused_by_default(host, port, reason):
    message = refusal(host, port)

    assert message is not None and f"it is {reason}" in message
    assert "ORCHESTRA_OUTBOUND_DENY_INFRASTRUCTURE=false" in message
    assert "ORCHESTRA_OUTBOUND_OPEN_INFRASTRUCTURE" in message


def test_a_local_service_is_refused_at_every_address_of_this_machine():
    listed = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True)
    addresses = [line.split()[3].split("/")[0] for line in listed.stdout.splitlines()]
    assert any(not ipaddress.ip_address(a).is_loopback for a in addresses), listed.stdout

    for address in addresses:
        for port, reason in ((BROKER_PORT, "the message broker's"), (DATABASE_PORT, "database's")):
            message = refusal(address, port)
            assert f"{reason} address" in message or "a link-local address" in message, message


@override_settings(
    CACHES={
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": ["redis://cache-a.test:6380/1", "redis://127.0.0.1:6379/0"],
        }
    },
    ORCHESTRA_REDIS_URL="rediss://redis.test:6390",
    ORCHESTRA_FLOWER_URL="https://flower.test/",
    ORCHESTRA_WEB_URLS=["http://0.0.0.0:9000", "https://orchestra.test"],
    ORCHESTRA_BROKER_MANAGEMENT_URL="http://rabbit-admin.test:8080/",
    DATABASES={"default": {"HOST": "db.test", "PORT": "6432"}, "other": {"HOST": "/run/pg"}},
)
@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
@pytest.mark.parametrize(
    ("host", "port", "reason"),
    [
        ("cache-a.test", 6380, "the cache's address"),
        ("127.0.0.1", 6379, "the cache's address"),
        ("redis.test", 6390, "the cache's address"),
        ("flower.test", 443, "Flower's address"),
        ("127.0.0.1", 9000, "orchestra's web server"),
        ("127.0.0.3", 9000, "orchestra's web server"),
        ("orchestra.test", 443, "orchestra's web server"),
        ("rabbit-admin.test", 8080, "the message broker's management API"),
        ("db.test", 6432, "the database's address"),
        ("DB.test.", 6432, "the database's address"),
    ],
)
def test_every_configured_service_is_refused(host, port, reason):
    assert f"it is {reason}" in refusal(host, port)


def test_every_broker_of_a_failover_list_and_its_management_port_is_refused(monkeypatch):
    # Celery's broker_url reads the environment first.
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://u:p@mq-a.test:5673//;amqps://mq-b.test//")
    assert current_app.conf.broker_url.startswith("amqp://u:p@mq-a.test")

    assert "the message broker's address" in refusal("mq-a.test", 5673)
    assert "the message broker's address" in refusal("mq-b.test", 5671)
    assert "management API" in refusal("mq-b.test", MANAGEMENT_PORT)
    assert refusal("mq-b.test", 5673) is None


@pytest.mark.parametrize(("host", "port"), [("127.0.0.1", 8081), ("localhost", 80), ("::1", 443)])
def test_other_local_targets_are_allowed_by_default(host, port):
    assert refusal(host, port) is None


@override_settings(ORCHESTRA_OUTBOUND_DENY_INFRASTRUCTURE=False)
@pytest.mark.parametrize(("host", "port", "reason"), INFRASTRUCTURE)
def test_a_test_environment_can_open_the_infrastructure_addresses(host, port, reason):
    assert refusal(host, port) is None


@override_settings(ORCHESTRA_OUTBOUND_OPEN_INFRASTRUCTURE=["127.0.0.1:8000", "169.254.10.0/24"])
def test_open_infrastructure_opens_only_what_it_names():
    assert refusal("127.0.0.1", WEB_PORT) is None
    assert refusal("169.254.10.7", 80) is None
    assert "orchestra's web server" in refusal("::1", WEB_PORT)
    assert "a link-local address" in refusal("169.254.11.7", 80)
    assert "message broker" in refusal("127.0.0.1", BROKER_PORT)


@override_settings(
    ORCHESTRA_OUTBOUND_OPEN_INFRASTRUCTURE=["127.0.0.1"], ORCHESTRA_OUTBOUND_DENY=["127.0.0.1:8000"]
)
def test_open_infrastructure_never_opens_what_the_operator_denied():
    assert refusal("127.0.0.1", BROKER_PORT) is None
    assert "in ORCHESTRA_OUTBOUND_DENY" in refusal("127.0.0.1", WEB_PORT)


@override_settings(ORCHESTRA_OUTBOUND_ALLOW=["127.0.0.0/8"])
def test_the_allow_list_never_opens_infrastructure_and_connections_go_to_what_it_admits():
    assert "message broker" in refusal("127.0.0.1", BROKER_PORT)
    # localhost is 127.0.0.1 and ::1: only the address the allow list admits may be connected to.
    assert outbound_policy().check("localhost", 8081) == [ipaddress.ip_address("127.0.0.1")]


@override_settings(ORCHESTRA_OUTBOUND_ALLOW=["*.example.test", "10.0.0.0/8", "[::1]:8443"])
def test_an_allow_list_admits_only_what_it_names():
    assert refusal("api.example.test", 443) is None
    assert refusal("example.test", 443) is None
    assert refusal("10.1.2.3", 80) is None
    assert refusal("::1", 8443) is None
    assert "not in ORCHESTRA_OUTBOUND_ALLOW" in refusal("192.0.2.1", 80)
    assert "not in ORCHESTRA_OUTBOUND_ALLOW" in refusal("::1", 8444)
    assert "not in ORCHESTRA_OUTBOUND_ALLOW" in refusal("evil-example.test", 80)


@override_settings(
    ORCHESTRA_OUTBOUND_ALLOW=["127.0.0.0/8"], ORCHESTRA_OUTBOUND_DENY=["127.0.0.1:9999"]
)
def test_deny_wins_over_allow_and_names_its_setting():
    message = refusal("127.0.0.1", 9999)

    assert message == (
        "connection to 127.0.0.1:9999 refused: it is in ORCHESTRA_OUTBOUND_DENY (127.0.0.1:9999)"
    )
    assert refusal("127.0.0.1", 9998) is None
    assert "message broker" in refusal("127.0.0.1", BROKER_PORT)


def test_the_http_plugin_refuses_the_broker_and_a_redirect_to_it(target_url):
    plugin = HttpPlugin()
    context = StepContext(run_id=1, step_name="step", timeout=5)

    with pytest.raises(OutboundRefused, match="message broker"):
        plugin.execute({"url": f"http://127.0.0.1:{BROKER_PORT}/"}, context)
    redirect = f"{target_url}/redirect?to=http://localhost:{BROKER_PORT}/api"
    with pytest.raises(OutboundRefused, match="localhost:5672 refused"):
        plugin.execute({"url": redirect, "follow_redirects": True}, context)
    assert plugin.execute({"url": f"{target_url}/redirect"}, context).fields["status"] == 302


# --- credential host bindings ---


@override_settings(
    ORCHESTRA_CREDENTIALS={"API_TOKEN": "canary-value", "OTHER": "x"},
    ORCHESTRA_CREDENTIAL_HOSTS={"API_TOKEN": ["api.test", "*.api.test:443", "10.0.0.0/8:80"]},
)
def test_a_bound_credential_goes_only_to_its_hosts():
    def sent(host: str, port: int, names=("API_TOKEN",)) -> str | None:
        try:
            step_outbound_check(host, port, credentials_sent=frozenset(names))
        except OutboundRefused as exc:
            return str(exc)
        return None

    assert sent("api.test", 8443) is None
    assert sent("eu.api.test", 443) is None
    assert sent("10.1.2.3", 80) is None
    message = sent("evil.test", 443)
    assert message == (
        "connection to evil.test:443 refused: credential API_TOKEN may only be sent to"
        " api.test, *.api.test:443, 10.0.0.0/8:80 (ORCHESTRA_CREDENTIAL_API_TOKEN_HOSTS)"
    )
    assert "canary-value" not in message
    assert "API_TOKEN" in sent("eu.api.test", 80)
    assert "API_TOKEN" in sent("10.1.2.3", 8080)
    assert "API_TOKEN" in sent("evil.test", 443, names=("OTHER", "API_TOKEN"))
    # Unbound credentials, and steps that send none, may go wherever the policy allows.
    assert sent("evil.test", 443, names=("OTHER",)) is None
    assert sent("evil.test", 443, names=()) is None


@override_settings(ORCHESTRA_CREDENTIAL_HOSTS={"API_TOKEN": ["127.0.0.1"]})
def test_a_binding_admits_only_its_addresses_of_a_name():
    checked = step_outbound_check("localhost", 8081, credentials_sent=frozenset({"API_TOKEN"}))

    assert checked == [ipaddress.ip_address("127.0.0.1")]  # never ::1


@override_settings(ORCHESTRA_CREDENTIAL_HOSTS={"API_TOKEN": ["api.test:http"]})
def test_a_malformed_entry_stops_start_up_naming_its_setting():
    with pytest.raises(ImproperlyConfigured, match="ORCHESTRA_CREDENTIAL_API_TOKEN_HOSTS"):
        validate_settings()
    with (
        override_settings(ORCHESTRA_CREDENTIAL_HOSTS={}, ORCHESTRA_OUTBOUND_ALLOW=["[::1"]),
        pytest.raises(ImproperlyConfigured, match="ORCHESTRA_OUTBOUND_ALLOW"),
    ):
        validate_settings()


def settings_in_subprocess(**env: str) -> subprocess.CompletedProcess:
    script = (
        "from orchestra import settings as s;"
        "print(sorted(s.ORCHESTRA_CREDENTIALS), s.ORCHESTRA_CREDENTIAL_HOSTS)"
    )
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRA_CREDENTIAL_")},
        "DJANGO_DEBUG": "true",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-c", script], env=environment, capture_output=True, text=True
    )


def test_a_hosts_variable_is_a_binding_not_a_credential():
    done = settings_in_subprocess(
        ORCHESTRA_CREDENTIAL_API_TOKEN="t", ORCHESTRA_CREDENTIAL_API_TOKEN_HOSTS="a.test, b.test"
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['API_TOKEN'] {'API_TOKEN': ['a.test', 'b.test']}"


def test_a_binding_of_an_unknown_credential_stops_start_up():
    done = settings_in_subprocess(ORCHESTRA_CREDENTIAL_API_TOKN_HOSTS="a.test")

    assert done.returncode != 0
    assert (
        "ORCHESTRA_CREDENTIAL_API_TOKN_HOSTS binds hosts to no credential:"
        " ORCHESTRA_CREDENTIAL_<NAME> is not set"
    ) in done.stderr
