"""The chaos target's evidence is what the checker's verdicts rest on: check its instants."""

from __future__ import annotations

import hashlib
import threading
import time

import httpx
import pytest

from tests.chaos.target import make_server
from tests.support import wait_for


@pytest.fixture
def target():
    server = make_server()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def url(server, path: str) -> str:
    return f"http://127.0.0.1:{server.server_port}{path}"


def test_a_request_is_logged_with_its_sender_and_its_own_instants(target):
    before = time.monotonic()
    response = httpx.get(
        url(target, "/tick?lane=chaos-1&step=a&run=7&attempt=2&record=None&start=None&hold=0.2")
    )

    assert response.status_code == 200
    (request,) = target.evidence.snapshot()
    assert (request.lane, request.step, request.run, request.attempt) == ("chaos-1", "a", 7, 2)
    assert (request.record, request.start, request.cut) == (None, None, False)
    assert before <= request.received and request.finished - request.received >= 0.2


def test_a_held_request_ends_when_its_client_hangs_up(target):
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(url(target, "/tick?run=1&attempt=1&step=b&hold=5"), timeout=0.3)
    hung_up = time.monotonic()

    # The handler thread notices the hang-up on its own.
    wait_for(lambda: target.evidence.snapshot()[0].finished, timeout=3, message="the hang-up")
    request = target.evidence.snapshot()[0]
    assert request.cut
    assert request.finished - hung_up < 1  # not at the end of the 5 s hold


@pytest.mark.parametrize("kind", ["random", "png", "nul", "json-nul", "nan", "invalid-utf8"])
def test_binary_bodies_are_reproducible_and_logged_by_their_sha256(target, kind):
    path = f"/binary?kind={kind}&size=2048&run=3&attempt=1&step=fetch"
    first, second = httpx.get(url(target, path)), httpx.get(url(target, path))

    assert first.status_code == 200 and first.content == second.content
    assert target.evidence.snapshot()[0].body_sha256 == hashlib.sha256(first.content).hexdigest()


@pytest.mark.parametrize("kind", ["huge", "huge-chunked"])
def test_huge_bodies_are_logged_by_their_size(target, kind):
    response = httpx.get(url(target, f"/binary?kind={kind}&size=200000&run=3&attempt=1"))

    assert len(response.content) == 200000
    assert target.evidence.snapshot()[0].body_bytes == 200000
