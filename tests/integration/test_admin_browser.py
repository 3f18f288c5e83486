"""Every admin page an operator reads, in a real browser at 1280 px (Playwright driving Debian's
chromium): nothing is cut off or scrolls sideways, and each page shows what it is for.

``ORCHESTRA_SCREENSHOTS=<dir>`` keeps the screenshots there (to look at); otherwise they go to a
temporary directory.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from queue_catalog.models import QueueRecord, QueueRun
from runs.models import DeadLetter, StepResult, TestRun
from tests.factories import delay_step, make_scenario
from tests.integration.test_browser import page  # noqa: F401 (the browser fixture)

pytestmark = pytest.mark.integration

WIDTH = 1280


def _http_step(run: TestRun, position: int, name: str, status: str, **extra) -> StepResult:
    started = run.started_at + timedelta(seconds=position)
    return StepResult.objects.create(
        run=run,
        attempt=run.attempt,
        position=position,
        name=name,
        plugin="http",
        status=status,
        started_at=started,
        finished_at=started + timedelta(milliseconds=180),
        duration_ms=182.4,
        request={
            "method": "POST",
            "url": "http://shop.internal.example:8081/api/v2/customers/registrations/verify",
            "headers": {"Authorization": "[REDACTED]", "Content-Type": "application/json"},
            "json": {"email": "ada@example.test", "plan": "enterprise-annual"},
        },
        response={"status": 503, "headers": {"Retry-After": "2"}, "body": "upstream " * 40},
        assertions=[
            {
                "name": "status",
                "passed": status == "PASSED",
                "expected": 201,
                "actual": 201 if status == "PASSED" else 503,
                "message": "" if status == "PASSED" else "status is 503, expected 201",
            }
        ],
        tries=[
            {"try": n, "status": status, "duration_ms": 60.1, "error": "status is 503"}
            for n in range(1, 4)
        ],
        error="" if status == "PASSED" else "register: status is 503, expected 201",
        **extra,
    )


@pytest.fixture
def busy_admin(transactional_db) -> dict:
    """An afternoon's worth of runs, steps, queue records and dead letters, long names included."""
    now = timezone.now()
    checkout = make_scenario(
        [delay_step("pay")], name="checkout-flow-with-a-rather-long-scenario-name"
    )
    signup = make_scenario([delay_step("register")], name="user-signup")
    runs = []
    for n, status in enumerate(["PASSED", "FAILED", "ERROR", "IN_PROGRESS", "QUEUED", "CANCELLED"]):
        scenario = checkout if n % 2 else signup
        started = now - timedelta(minutes=40 - n)
        runs.append(
            TestRun.objects.create(
                scenario=scenario,
                definition=scenario.definition,
                status=status,
                attempt=1,
                worker="worker-7.orchestra.internal.example:48211" if status != "QUEUED" else "",
                started_at=started if status != "QUEUED" else None,
                finished_at=started + timedelta(seconds=3.4)
                if status in ("PASSED", "FAILED", "ERROR")
                else None,
                error="step 'register' failed" if status == "FAILED" else "",
            )
        )
    failed = runs[1]
    _http_step(failed, 0, "create customer", "PASSED")
    _http_step(failed, 1, "register", "FAILED")
    _http_step(failed, 2, "delete customer", "PASSED", is_cleanup=True)
    _http_step(runs[0], 0, "create customer", "PASSED")
    long_error = "pay: status is 503, expected 200; " + "the gateway said: try later " * 6
    record = QueueRecord.objects.create(
        scenario=checkout,
        payload={"order": 1042, "customer": "grace@example.test"},
        status="RUNNING",
        start_count=2,
        errors=[{"attempt": 1, "at": now.isoformat(), "message": long_error}],
        started_at=now - timedelta(minutes=3),
        current_run=runs[3],
        process_code=str(runs[3].id),
    )
    QueueRun.objects.create(record=record, run=runs[3], start_number=2)
    for n in range(12):
        QueueRecord.objects.create(scenario=signup, payload={"n": n}, status="SCHEDULED")
    DeadLetter.objects.create(
        task="runs.execute_run",
        task_id="3f1c2a9e-5b7d-4c1e-9a0f-1d2e3f4a5b6c",
        run_id_hint=failed.id,
        reason="run 99182 does not exist in this database: " + "a very long reason " * 10,
        received=True,
        body="eyJydW5faWQiOiA5OTE4Mn0" * 40,  # one long word, as an encoded body is
        headers={"x-death": [{"queue": "runs.normal", "count": 4}]},
    )
    User.objects.create_superuser("operator", password="operator-password")
    return {"failed": failed, "record": record, "letter": DeadLetter.objects.get()}


def _look(page, live_server, path: str, shots: Path, name: str) -> str:  # noqa: F811
    page.goto(f"{live_server.url}{path}")
    page.wait_for_selector("#content")
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    assert_no_sideways_scroll(page, path)
    return page.inner_text("#content")


# Elements that scroll or clip sideways: the page itself, or a box (the list's table) that
# hides columns behind its own scroll bar.
CLIPPED = """() => [document.documentElement, ...document.querySelectorAll("body *")]
  .filter(e => !e.closest(".visually-hidden") && e.scrollWidth > e.clientWidth + 1
    && (e === document.documentElement
    || ["auto", "scroll", "hidden"].includes(getComputedStyle(e).overflowX)))
  .map(e => `${e.tagName}#${e.id}.${e.className}: ${e.scrollWidth} > ${e.clientWidth}`)"""


def assert_no_sideways_scroll(page, path: str) -> None:  # noqa: F811
    clipped = page.evaluate(CLIPPED)
    assert not clipped, f"{path} is cut off at {WIDTH} px: {clipped}"


def test_every_admin_page_fits_1280_px_and_shows_what_matters(
    live_server,
    busy_admin,
    page,  # noqa: F811
    tmp_path,
):
    shots = Path(os.environ.get("ORCHESTRA_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": WIDTH, "height": 800})
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", "operator-password")
    page.click("input[type=submit]")
    page.wait_for_selector("#dashboard")
    failed, record = busy_admin["failed"], busy_admin["record"]

    text = _look(page, live_server, "/admin/", shots, "dashboard")
    header = page.locator("#queue-lanes th").first.bounding_box()
    assert header["width"] > header["height"], "lane headers print as vertical letters"
    record_link = page.locator("#attention td a").first.bounding_box()
    waiting = page.locator("#attention td span[title$=' UTC']").first.bounding_box()
    assert record_link["y"] == waiting["y"], "a line break splits the oldest waiting record"
    assert "seconds" in text or "minute" in text

    text = _look(page, live_server, "/admin/runs/testrun/", shots, "runs")
    assert "6 test runs" in text and "3.4 s" in text and "ago" in text
    assert page.locator("#result_list td.field-age span[title$=' UTC']").count() == 6

    text = _look(page, live_server, f"/admin/runs/testrun/{failed.id}/change/", shots, "run")
    assert text.index("Failures") < text.index("Attempt 1")
    assert "register: status is 503, expected 201" in text
    assert page.locator("details.step[open]").count() == 1  # the failed step, open in place
    page.locator("details.step").first.locator("summary").click()
    assert page.locator("details.step[open]").count() == 2
    page.emulate_media(color_scheme="dark")  # the admin's dark theme: the report follows it
    _look(page, live_server, f"/admin/runs/testrun/{failed.id}/change/", shots, "run_dark")
    page.emulate_media(color_scheme="light")

    text = _look(page, live_server, "/admin/runs/stepresult/", shots, "steps")
    assert "4 step results" in text and "182 ms" in text

    text = _look(page, live_server, "/admin/runs/deadletter/", shots, "dead_letters")
    assert "1 dead letter" in text

    letter = busy_admin["letter"]
    text = _look(page, live_server, f"/admin/runs/deadletter/{letter.id}/change/", shots, "letter")
    assert "runs.normal" in text
    step = failed.steps.get(position=1)
    text = _look(page, live_server, f"/admin/runs/stepresult/{step.id}/change/", shots, "step")
    assert "Finally step:\nno" in text

    text = _look(page, live_server, "/admin/queue_catalog/queuerecord/", shots, "queue")
    assert "13 queue records" in text
    assert "worker-7.orchestra.internal.example:48211" in text

    path = f"/admin/queue_catalog/queuerecord/{record.id}/change/"
    text = _look(page, live_server, path, shots, "queue_record")
    assert f"run {record.current_run_id} · owner worker-7" in text
    assert " UTC: pay: status is 503" in text

    text = _look(page, live_server, "/admin/queue_catalog/queuerecord/add/", shots, "queue_add")
    assert page.input_value("#id_payload") == "{}"
    assert "start count" not in text.lower()

    # Russian words are longer: the lists must still fit.
    language = {"name": "django_language", "url": live_server.url}
    page.context.add_cookies([{**language, "value": "ru"}])
    for path, name, count in [
        ("/admin/", "dashboard_ru", "ЗАПУСКИ ЗА ПОСЛЕДНИЙ ЧАС"),
        ("/admin/runs/testrun/", "runs_ru", "6 тестовых запусков"),
        ("/admin/runs/stepresult/", "steps_ru", "4 результата шага"),
        ("/admin/runs/deadletter/", "dead_letters_ru", "1 недоставленное сообщение"),
        ("/admin/queue_catalog/queuerecord/", "queue_ru", "13 записей очереди"),
        (f"/admin/runs/testrun/{failed.id}/change/", "run_ru", "Сбои"),
    ]:
        assert count in _look(page, live_server, path, shots, name)
    page.context.add_cookies([{**language, "value": "en"}])

    page.goto(f"{live_server.url}/api/runs/{failed.id}/report/")
    page.screenshot(path=str(shots / "report.png"), full_page=True)
    assert_no_sideways_scroll(page, "the HTML report")
    assert page.inner_text("body").index("Failures") < page.inner_text("body").index("Attempt 1")
