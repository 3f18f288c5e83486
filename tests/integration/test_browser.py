"""The admin queue in a real browser (Playwright driving Debian's chromium): log in, open the
queue, filter by status, open a record, retry it. Keeps a screenshot of the queue page.

``ORCHESTRA_REFRESH_DOCS=1`` writes the screenshot to docs/admin-queue.png (the README's picture)
instead of a temporary file.
"""

from __future__ import annotations

import os
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connections
from django.utils import timezone

from queue_catalog.models import QueueRecord
from runs.models import TestRun
from tests.conftest import purge_queues
from tests.factories import delay_step, make_scenario

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "admin-queue.png"


@pytest.fixture
def queue_in_every_status(transactional_db) -> dict[str, QueueRecord]:
    """A few lanes as an operator would see them on a busy afternoon."""
    now = timezone.now()
    checkout = make_scenario([delay_step("pay")], name="checkout-flow")
    signup = make_scenario([delay_step("register")], name="user-signup")
    search = make_scenario([delay_step("query")], name="catalog-search")
    run = TestRun.objects.create(
        scenario=checkout, definition=checkout.definition, worker="worker-1.example:4242"
    )
    error = [
        {"attempt": n, "at": now.isoformat(), "message": "pay: status is 503, expected 200"}
        for n in range(1, 6)
    ]
    rows = [
        (checkout, "DONE", 1, [], {"order": 1041}),
        (checkout, "RUNNING", 2, error[:1], {"order": 1042}),
        (checkout, "SCHEDULED", 0, [], {"order": 1043}),
        (signup, "DONE", 3, error[:2], {"email": "ada@example.test"}),
        (signup, "ERROR", 5, error, {"email": "grace@example.test"}),
        (search, "CANCELLED", 0, [], {"q": "lamp"}),
        (search, "DONE", 1, [], {"q": "desk"}),
    ]
    records = {}
    for minutes, (scenario, status, starts, errors, payload) in enumerate(rows):
        started = now - timedelta(minutes=30 - minutes) if starts else None
        finished = started + timedelta(seconds=4) if status in ("DONE", "ERROR") else None
        records[f"{scenario.name}-{status}"] = QueueRecord.objects.create(
            scenario=scenario,
            payload=payload,
            status=status,
            start_count=starts,
            errors=errors,
            started_at=started,
            finished_at=finished,
            process_code=str(run.id) if starts else "",
            current_run=run if starts else None,
        )
    User.objects.create_superuser("operator", password="operator-password")
    yield records
    purge_queues()  # the retried record's run was published; no worker consumes it here


@pytest.fixture
def page(monkeypatch):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "no chromium: `make test` installs it (scripts/browser.sh)"
    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are safe.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1680, "height": 760}, locale="en-US")
        yield page
        browser.close()
        # Inside Playwright's context the ORM had connections of its own: close them, or they
        # would keep the test database from being dropped at the end of the session.
        connections.close_all()


def test_an_operator_filters_the_queue_opens_a_record_and_retries_it(
    live_server, queue_in_every_status, page, tmp_path
):
    failed = queue_in_every_status["user-signup-ERROR"]

    page.goto(f"{live_server.url}/admin/login/?next=/admin/queue_catalog/queuerecord/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", "operator-password")
    page.click("input[type=submit]")
    page.wait_for_selector("#result_list")
    assert page.locator("#result_list tbody tr").count() == len(queue_in_every_status)
    screenshot = DOCS_SCREENSHOT if os.environ.get("ORCHESTRA_REFRESH_DOCS") else tmp_path / "q.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000

    page.click("#changelist-filter a[href*='status__exact=ERROR']")
    page.wait_for_url("**status__exact=ERROR**")
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 1
    assert "Error" in rows.first.inner_text()

    rows.first.locator("th a, td a").first.click()
    page.wait_for_url(f"**/queuerecord/{failed.id}/**")
    body = page.inner_text("#content")
    assert "grace@example.test" in body and "status is 503" in body

    page.go_back()
    page.check(f"input[name=_selected_action][value='{failed.id}']")
    page.select_option("select[name=action]", "retry_records")
    page.click("button[name=index]")
    page.wait_for_selector(".messagelist")
    assert "sent back to the queue" in page.inner_text(".messagelist")

    failed.refresh_from_db()
    assert failed.status == "RUNNING"  # its lane was idle: it started at once
    assert failed.start_count == 6
