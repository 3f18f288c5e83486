"""The outbound policy: steps may not reach the broker, the database or cloud metadata."""

from __future__ import annotations

import pytest
from django.test import override_settings

from plugins.base import StepContext
from plugins.http import HttpPlugin
from plugins.outbound import OutboundRefused, outbound_policy

BROKER_PORT = 5672  # tests.settings: the broker and the database are on 127.0.0.1
DATABASE_PORT = 5432


def refusal(host: str, port: int) -> str | None:
    try:
        outbound_policy().check(host, port)
    except OutboundRefused as exc:
        assert exc.retryable is False
        return str(exc)
    return None


@pytest.mark.parametrize(
    ("host", "port", "reason"),
    [
        ("127.0.0.1", BROKER_PORT, "the message broker's address"),
        ("localhost", BROKER_PORT, "the message broker's address"),
        ("0.0.0.0", BROKER_PORT, "the message broker's address"),
        ("127.0.0.1", DATABASE_PORT, "the database's address"),
        ("::ffff:127.0.0.1", DATABASE_PORT, "the database's address"),
        ("169.254.169.254", 80, "a cloud metadata address"),
        ("metadata.google.internal", 80, "a cloud metadata address"),
        ("100.100.100.200", 8080, "a cloud metadata address"),
    ],
)
def test_infrastructure_and_metadata_addresses_are_refused_by_default(host, port, reason):
    message = refusal(host, port)

    assert message is not None and f"it is {reason}" in message
    assert "ORCHESTRA_OUTBOUND_DENY_INFRASTRUCTURE=false" in message


@pytest.mark.parametrize(("host", "port"), [("127.0.0.1", 8081), ("localhost", 80), ("::1", 443)])
def test_other_local_targets_are_allowed_by_default(host, port):
    assert refusal(host, port) is None


@override_settings(ORCHESTRA_OUTBOUND_DENY_INFRASTRUCTURE=False)
def test_a_test_environment_can_open_the_infrastructure_addresses():
    assert refusal("127.0.0.1", BROKER_PORT) is None
    assert refusal("169.254.169.254", 80) is None


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
