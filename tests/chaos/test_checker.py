"""The checker's rules on hand-made evidence: what is a violation, and what is allowed.

The target's instants are plain numbers here (seconds on its clock); runs, records and step
results are stand-ins with the fields the rules read.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from tests.chaos.harness import (
    MAX_RESPONSE_BYTES,
    Cancel,
    Load,
    Pause,
    Verdict,
    _check_binary,
    _check_cancels,
    _check_lanes,
    _check_pauses,
    _check_run,
)
from tests.chaos.target import Evidence, Request

T0 = datetime(2026, 12, 1, tzinfo=UTC)
CANCEL_STEPS = [
    {"name": "a", "plugin": "http"},
    {"name": "work-1", "plugin": "delay"},
    {"name": "b", "plugin": "http"},
    {"name": "work-2", "plugin": "delay"},
    {"name": "c", "plugin": "http"},
]


def request(run, step, received, finished=None, *, attempt=1, cut=False, **fields) -> Request:
    fields = {"path": "/tick", "lane": "chaos-1", "record": None, "start": None, **fields}
    finished = received + 0.01 if finished is None else finished
    return Request(
        run=run, step=step, attempt=attempt, received=received, finished=finished, cut=cut, **fields
    )


def run(run_id=1, status="PASSED", attempt=1, steps=CANCEL_STEPS, finished_at=T0, **context):
    return SimpleNamespace(
        id=run_id,
        status=status,
        attempt=attempt,
        definition={"steps": steps},
        context=context,
        error="",
        finished_at=finished_at,
    )


def load(**fields) -> Load:
    return Load("http://127.0.0.1:1", Evidence(), **fields)


# --- lanes: the target's clock decides ------------------------------------------------------


def lane_verdict(spans: dict[int, list[Request]]) -> Verdict:
    verdict = Verdict()
    records = {1: SimpleNamespace(scenario_id=7)}
    links = [SimpleNamespace(run_id=run_id, record_id=1) for run_id in spans]
    _check_lanes(verdict, records, links, spans)
    return verdict


def test_launches_of_a_lane_one_after_the_other_do_not_overlap():
    verdict = lane_verdict(
        {10: [request(10, "a", 0.0), request(10, "b", 0.5, 1.0)], 11: [request(11, "a", 1.01)]}
    )

    assert verdict.overlaps == []


def test_a_next_launch_beside_a_cancelled_ones_request_in_flight_overlaps():
    verdict = lane_verdict({10: [request(10, "a", 0.0, 1.0)], 11: [request(11, "a", 0.5)]})

    assert verdict.overlaps == [("lane", 7, 10, 11, 0.5)]


def test_a_cut_request_ends_its_launch_where_the_target_saw_the_hang_up():
    verdict = lane_verdict(
        {10: [request(10, "a", 0.0, 0.4, cut=True)], 11: [request(11, "a", 0.5)]}
    )

    assert verdict.overlaps == []


def test_a_long_launch_overlaps_every_launch_it_spans():
    verdict = lane_verdict(
        {
            10: [request(10, "a", 0.0), request(10, "b", 2.9, 3.0)],
            11: [request(11, "a", 1.0, 1.5)],
            12: [request(12, "a", 2.0, 2.5)],
        }
    )

    assert [overlap[2:4] for overlap in verdict.overlaps] == [(10, 11), (10, 12)]


# --- cancels ----------------------------------------------------------------------------------


def cancel_verdict(cancelled, seen, *, record_status="CANCELLED", kind="run") -> Verdict:
    verdict = Verdict()
    cancel = Cancel(kind, cancelled.id if kind == "run" else 5, cancelled.id, 1.0, T0)
    records = {5: SimpleNamespace(status=record_status)}
    _check_cancels(
        verdict, load(cancels=[cancel]), {cancelled.id: cancelled}, records, {cancelled.id: seen}
    )
    return verdict


def test_the_request_in_flight_and_the_step_about_to_start_may_reach_the_target():
    seen = [request(1, "a", 0.5, 1.2), request(1, "b", 1.05)]

    assert cancel_verdict(run(status="CANCELLED"), seen).unexpected == []


def test_a_second_step_after_the_cancel_is_a_violation():
    seen = [request(1, "a", 0.5), request(1, "b", 1.05), request(1, "c", 1.5)]

    (violation,) = cancel_verdict(run(status="CANCELLED"), seen).unexpected
    assert violation[:2] == ("cancelled run went on to a new step", 1)


@pytest.mark.parametrize(
    ("finished_at", "violations"), [(T0 - timedelta(seconds=1), 0), (T0 + timedelta(seconds=1), 1)]
)
def test_a_cancelled_run_may_end_otherwise_only_if_it_had_finished_first(finished_at, violations):
    seen = [request(1, "a", 0.1), request(1, "b", 0.2), request(1, "c", 0.3)]

    verdict = cancel_verdict(run(status="PASSED", finished_at=finished_at), seen)

    assert len(verdict.unexpected) == violations


def test_a_cancelled_record_that_did_not_end_cancelled_is_a_violation():
    verdict = cancel_verdict(run(status="CANCELLED"), [], record_status="DONE", kind="record")

    assert verdict.unexpected == [("cancelled record ended", 5, "DONE")]


# --- stale owners -----------------------------------------------------------------------------


def test_an_attempt_that_sends_after_a_later_one_began_is_stale():
    seen = [request(1, "a", 0.0), request(1, "a", 5.0, attempt=2), request(1, "b", 5.5)]
    verdict = Verdict()

    _check_run(verdict, run(status="PASSED", attempt=2), [], seen)

    assert verdict.overlaps == [("stale attempt sent after a later one began", 1, 1)]


def test_an_attempt_taken_over_after_its_last_request_is_a_recovery():
    seen = [request(1, "a", 0.0), request(1, "a", 5.0, attempt=2), request(1, "c", 5.5, attempt=2)]
    verdict = Verdict()

    _check_run(verdict, run(status="FAILED", attempt=2), [], seen)

    assert verdict.overlaps == [] and verdict.disagreements == []


@pytest.mark.parametrize(
    ("received", "taken_over", "violations"), [(9.0, True, 0), (11.0, True, 1), (11.0, False, 0)]
)
def test_a_resumed_owner_whose_run_was_taken_over_sends_nothing(received, taken_over, violations):
    verdict = Verdict()
    seen = {1: [request(1, "a", 0.0), request(1, "b", received)]}

    _check_pauses(verdict, load(pauses=[Pause(1, 1, 10.0, taken_over)]), seen)

    assert len(verdict.overlaps) == violations


# --- binary bodies ----------------------------------------------------------------------------


BINARY_STEPS = [{"name": n, "plugin": "http"} for n in ("a", "fetch", "b")]


def binary_verdict(kind, size, status, stored, *, sha="ab" * 32) -> Verdict:
    fetch = request(1, "fetch", 0.1, path="/binary", lane=f"chaos-binary-{kind}")
    fetch.body_bytes, fetch.body_sha256 = size, sha
    seen = [request(1, "a", 0.0), fetch]
    if status == "PASSED":
        seen.append(request(1, "b", 0.2))
    verdict = Verdict()
    _check_binary(verdict, run(status=status, steps=BINARY_STEPS), fetch, seen, stored)
    return verdict


def step(status, response=None):
    return SimpleNamespace(name="fetch", status=status, attempt=1, response=response or {})


def test_a_huge_body_ends_its_step_error():
    huge = MAX_RESPONSE_BYTES + 1

    assert binary_verdict("huge", huge, "ERROR", [step("ERROR")]).disagreements == []
    assert binary_verdict("huge", huge, "ERROR", []).disagreements  # gave up, no step stored


def test_a_body_under_the_limit_is_stored_with_its_digest():
    stored = [step("PASSED", {"body": {"sha256": "ab" * 32}})]

    assert binary_verdict("png", 4096, "PASSED", stored).disagreements == []
    assert binary_verdict(
        "png", 4096, "PASSED", [step("PASSED", {"body": "\ufffdPNG"})]
    ).disagreements
    assert binary_verdict("nul", 4096, "ERROR", []).disagreements
