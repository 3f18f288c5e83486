"""Which answers push back, and how long ``Retry-After`` asks to wait (no I/O)."""

from __future__ import annotations

import pytest

from plugins.base import Pushback
from plugins.graphql.plugin import GraphqlPlugin
from plugins.http.plugin import HttpPlugin
from plugins.pushback import http_pushback, retry_after_seconds, url_rate_target

DATE = "Wed, 21 Oct 2015 07:28:00 GMT"


@pytest.mark.parametrize(
    ("header", "date", "seconds"),
    [
        ("120", None, 120.0),
        (" 5 ", DATE, 5.0),
        ("0", None, 0.0),
        ("86400000", None, 86400000.0),  # too large: capped by the throttle, not here
        ("Wed, 21 Oct 2015 07:28:30 GMT", DATE, 30.0),  # measured against Date, not our clock
        ("Wednesday, 21-Oct-15 07:29:00 GMT", DATE, 60.0),  # RFC 850 form
        ("Wed Oct 21 07:28:10 2015", DATE, 10.0),  # asctime form: GMT without saying so
        ("Wed, 21 Oct 2015 07:27:00 GMT", DATE, 0.0),  # already past
        ("Wed, 21 Oct 2015 07:28:30 GMT", None, None),  # a date without Date: unmeasurable
        ("Wed, 21 Oct 2015 07:28:30 GMT", "yesterday", None),
        ("-5", None, None),
        ("1.5", None, None),
        ("soon", DATE, None),
        ("", DATE, None),
        (None, DATE, None),
    ],
)
def test_retry_after_seconds(header, date, seconds):
    assert retry_after_seconds(header, date) == seconds


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (429, {"retry-after": "3"}, Pushback(429, 3.0, "3")),
        (429, {}, Pushback(429, None, "")),
        (429, {"retry-after": "later"}, Pushback(429, None, "later")),
        (503, {"retry-after": "7"}, Pushback(503, 7.0, "7")),
        (503, {}, None),  # an outage, not a pushback
        (200, {"retry-after": "3"}, None),
        (500, {"retry-after": "3"}, None),
    ],
)
def test_http_pushback(status, headers, expected):
    assert http_pushback(status, headers) == expected


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("http://api.test/users", "http://api.test:80"),
        ("https://API.test/x?y=1", "https://api.test:443"),
        ("http://api.test:8080/", "http://api.test:8080"),
        ("http://[::1]:81/", "http://[::1]:81"),
        ("http://user:pw@api.test/", "http://api.test:80"),
        ("http://api.test:99999/", None),
        ("http:///nohost", None),
    ],
)
def test_url_rate_target(url, key):
    assert url_rate_target(url) == key
    assert HttpPlugin().rate_target({"url": url}) == key


@pytest.mark.parametrize(
    ("expect", "accepted"),
    [
        ({"status": 429}, True),
        ({"status": [200, 429]}, True),
        ({"status": 200}, False),
        ({}, False),  # no status expectation: the 429 is obeyed
    ],
)
def test_http_step_accepts_a_pushback_only_when_its_status_expectation_does(expect, accepted):
    assert HttpPlugin().accepts_pushback(expect, Pushback(429, 1.0)) is accepted


def test_graphql_expects_200_unless_told():
    assert not GraphqlPlugin().accepts_pushback({}, Pushback(429, 1.0))
    assert GraphqlPlugin().accepts_pushback({"status": 429}, Pushback(429, 1.0))
    assert GraphqlPlugin().rate_target({"url": "https://g.test/graphql"}) == "https://g.test:443"


@pytest.mark.parametrize(
    ("plugin", "params", "key"),
    [
        ("grpc", {"target": "greeter.test:50051"}, "grpc://greeter.test:50051"),
        ("grpc", {"target": "[::1]:50051"}, "grpc://[::1]:50051"),
        ("websocket", {"url": "wss://chat.test/ws"}, "wss://chat.test:443"),
        ("websocket", {"session": "ws1", "send": "x"}, None),  # paced when it was opened
        ("mqtt", {"host": "Broker.test", "topic": "t"}, "mqtt://broker.test:1883"),
        ("mqtt", {"host": "broker.test", "port": 8883, "topic": "t"}, "mqtt://broker.test:8883"),
        ("mqtt", {"await": "events", "count": 1}, None),  # reads a listener: sends nothing
        ("amqp", {"await": "events"}, None),
        ("amqp", {"url": "amqp://u:p@mq.test/vhost"}, "amqp://mq.test:5672"),
        ("amqp", {"url": "amqps://mq.test:5999"}, "amqps://mq.test:5999"),
        (
            "sql",
            {"dsn": "postgresql://u:secret@db.test/shop", "sql": "select 1"},
            "postgresql://db.test:5432",
        ),
        ("sql", {"dsn": "mysql://u@db.test:3307/shop", "sql": "select 1"}, "mysql://db.test:3307"),
        ("sql", {"session": "db", "sql": "select 1"}, None),
        ("delay", {"seconds": 1}, None),  # sends nothing
    ],
)
def test_every_network_plugin_names_its_rate_target_without_credentials(plugin, params, key):
    from plugins.registry import get_plugin

    assert get_plugin(plugin).rate_target(params) == key
