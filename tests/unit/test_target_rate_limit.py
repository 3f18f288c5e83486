"""The rate-limited target enforces its own limit and says how long to wait, in every form."""

from __future__ import annotations

import email.utils
import io
import json
import threading
import time

import httpx
import pytest

from examples.target import RETRY_AFTER_FORMS, RateLimit, RequestLog, make_server
from examples.target_evidence import TargetProcess, worst_window


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_limit_lets_a_burst_through_then_one_request_per_interval():
    clock = FakeClock()
    limit = RateLimit(20, 5, clock=clock)
    assert [limit.admit() for _ in range(5)] == [None] * 5
    assert limit.admit() == pytest.approx(0.05)
    clock.now += 0.05
    assert limit.admit() is None
    assert limit.admit() == pytest.approx(0.05)


def test_a_refused_request_does_not_spend_the_budget():
    clock = FakeClock()
    limit = RateLimit(10, 1, clock=clock)
    assert limit.admit() is None
    for _ in range(50):
        assert limit.admit() is not None
    clock.now += 0.1
    assert limit.admit() is None


def test_the_limit_refuses_nonsense():
    with pytest.raises(ValueError):
        RateLimit(0, 1)
    with pytest.raises(ValueError):
        RateLimit(10, 0)


@pytest.fixture
def serve():
    servers = []

    def start(**options):
        stream = io.StringIO()
        server = make_server(request_log=RequestLog(stream), **options)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}", stream

    yield start
    for server in servers:
        server.shutdown()


def hammer(url: str, n: int) -> list[httpx.Response]:
    with httpx.Client() as client:
        return [client.get(f"{url}/health") for _ in range(n)]


def test_past_its_limit_the_target_answers_429_and_logs_every_request(serve):
    url, stream = serve(rate_limit=RateLimit(2, 3))
    responses = hammer(url, 6)
    assert [r.status_code for r in responses] == [200] * 3 + [429] * 3
    assert responses[3].headers["Retry-After"] == "1"  # 0.5 s rounded up to whole seconds
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["status"] for line in lines] == [200] * 3 + [429] * 3
    assert {line["path"] for line in lines} == {"/health"}
    assert all(abs(line["time"] - time.time()) < 5 for line in lines)


def test_a_date_retry_after_is_measured_against_the_targets_own_date(serve):
    url, _ = serve(rate_limit=RateLimit(0.25, 1), retry_after="date", date_skew=3600)
    refused = hammer(url, 2)[1]
    assert refused.status_code == 429
    date = email.utils.parsedate_to_datetime(refused.headers["Date"])
    until = email.utils.parsedate_to_datetime(refused.headers["Retry-After"])
    assert 3 <= (until - date).total_seconds() <= 5  # 4 s, seen through whole-second dates
    assert abs(date.timestamp() - time.time() - 3600) < 5


@pytest.mark.parametrize(("form", "value"), [("huge", "86400"), ("malformed", "soon, please")])
def test_the_target_can_send_a_retry_after_too_large_or_malformed(serve, form, value):
    url, _ = serve(rate_limit=RateLimit(1, 1), retry_after=form)
    assert hammer(url, 2)[1].headers["Retry-After"] == value


def test_without_a_limit_nothing_is_refused(serve):
    url, stream = serve()
    assert {r.status_code for r in hammer(url, 20)} == {200}
    assert len(stream.getvalue().splitlines()) == 20


def test_an_unknown_retry_after_form_is_refused():
    with pytest.raises(ValueError, match="retry_after"):
        make_server(retry_after="tomorrow")
    assert set(RETRY_AFTER_FORMS) == {"seconds", "date", "huge", "malformed"}


def test_the_target_runs_as_a_process_and_its_accepted_requests_obey_its_limit():
    with TargetProcess(rate=10, burst=5) as target:
        statuses = [r.status_code for r in hammer(target.url, 40)]
        entries = target.entries()
    assert statuses.count(429) > 0 and statuses.count(200) >= 5
    assert [e.status for e in entries] == statuses
    ok = [e.time for e in entries if e.status == 200]
    assert worst_window(ok, rate=10, burst=5).excess <= 0
