"""The admin: every page renders with data in every status, the dashboard counts right, and
the actions change state through the same services as the API (and only for operators)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from xml.etree import ElementTree

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from queue_catalog.models import QueueRecord, QueueRun
from queue_catalog.services import RecordConflict, queue_record_move_to_front
from queue_catalog.states import RecordStatus
from runs.models import DeadLetter, StepResult, TestRun
from runs.states import RunStatus
from tests.factories import delay_step, make_scenario

pytestmark = pytest.mark.integration


@pytest.fixture
def data(db) -> dict:
    """Runs, steps, dead letters and queue records in every status."""
    scenario = make_scenario([delay_step("first"), delay_step("second")], name="checkout")
    now = timezone.now()
    runs = {}
    for status in RunStatus:
        runs[status] = TestRun.objects.create(
            scenario=scenario, definition=scenario.definition, status=status, attempt=1
        )
        StepResult.objects.create(
            run=runs[status],
            attempt=1,
            position=0,
            name="first",
            plugin="delay",
            status="PASSED" if status == RunStatus.PASSED else "ERROR",
            request={"seconds": 0},
            error="" if status == RunStatus.PASSED else "boom",
        )
    DeadLetter.objects.create(task="runs.execute_run", reason="run 1 does not exist")
    records = {}
    for status in RecordStatus:
        lane = make_scenario(name=f"lane-{status.lower()}")  # one RUNNING per scenario
        records[status] = QueueRecord.objects.create(
            scenario=lane,
            payload={"customer": f"c-{status}"},
            status=status,
            start_count=0 if status == RecordStatus.SCHEDULED else 2,
            errors=[{"attempt": 1, "at": now.isoformat(), "message": "step 'pay' failed"}],
            current_run=runs[RunStatus.FAILED],
        )
    QueueRun.objects.create(
        record=records[RecordStatus.ERROR], run=runs[RunStatus.FAILED], start_number=1
    )
    return {"scenario": scenario, "runs": runs, "records": records}


def staff(role: str) -> Client:
    user = User.objects.create_user(f"{role}-admin", password="pw", is_staff=True)
    user.groups.add(Group.objects.get(name=f"{role}s"))
    client = Client()
    client.force_login(user)
    return client


def registered(app_label: str) -> list:
    return [model for model in admin.site._registry if model._meta.app_label == app_label]


@pytest.mark.parametrize("app_label", ["runs", "queue_catalog"])
def test_every_changelist_and_change_page_renders_with_data_in_every_status(
    admin_client, data, app_label
):
    for model in registered(app_label):
        opts = model._meta
        changelist = admin_client.get(
            reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
        )
        assert changelist.status_code == 200, opts.model_name
        for obj in model.objects.all():
            url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])
            assert admin_client.get(url).status_code == 200, f"{opts.model_name} {obj.pk}"


def test_queue_record_page_is_grouped_like_the_original_catalog_in_russian(admin_client, data):
    record = data["records"][RecordStatus.ERROR]
    url = reverse("admin:queue_catalog_queuerecord_change", args=[record.pk])

    page = admin_client.get(url, HTTP_ACCEPT_LANGUAGE="ru").content.decode()

    for heading in ("Выполнить", "Исполнение", "Служебная информация"):
        assert heading in page
    assert "step &#x27;pay&#x27; failed" in page or "step 'pay' failed" in page
    assert f"/admin/runs/testrun/{data['runs'][RunStatus.FAILED].pk}/change/" in page


def test_dashboard_counts_runs_lanes_the_oldest_waiting_record_and_dead_letters(admin_client, data):
    old = data["runs"][RunStatus.PASSED]
    TestRun.objects.filter(pk=old.pk).update(queued_at=timezone.now() - timedelta(hours=2))
    waiting = data["records"][RecordStatus.SCHEDULED]
    QueueRecord.objects.create(scenario=waiting.scenario, payload={})

    page = admin_client.get(reverse("admin:index"))

    dashboard = page.context["dashboard"]
    counts = {row["status"]: row["count"] for row in dashboard["runs_last_hour"]}
    assert counts == {status: 0 if status == RunStatus.PASSED else 1 for status in RunStatus}
    lanes = {lane["scenario__name"]: lane for lane in dashboard["lanes"]}
    assert lanes["lane-scheduled"]["waiting"] == 2
    assert lanes["lane-running"]["running"] == 1
    assert dashboard["oldest_waiting"] == waiting
    assert dashboard["dead_letters_waiting"] == 1
    html = page.content.decode()
    assert 'id="dashboard"' in html and 'href="http://127.0.0.1:5555/"' in html


def post_action(client: Client, model: str, action: str, ids: list[int]):
    app = "queue_catalog" if model == "queuerecord" else "runs"
    return client.post(
        reverse(f"admin:{app}_{model}_changelist"),
        {"action": action, "_selected_action": ids},
        follow=True,
    )


def test_queue_actions_change_records_through_the_services(data):
    operator = staff("operator")
    failed = data["records"][RecordStatus.ERROR]
    waiting = data["records"][RecordStatus.SCHEDULED]

    post_action(operator, "queuerecord", "retry_records", [failed.pk])
    post_action(operator, "queuerecord", "cancel_records", [waiting.pk])

    failed.refresh_from_db()
    waiting.refresh_from_db()
    assert failed.status == RecordStatus.RUNNING  # back in its idle lane, started at once
    assert failed.start_count == 3 and failed.attempts.count() == 2  # one more start
    assert waiting.status == RecordStatus.CANCELLED


def test_run_and_scenario_actions_go_through_the_services(data):
    operator = staff("operator")
    queued = data["runs"][RunStatus.QUEUED]
    failed = data["runs"][RunStatus.FAILED]
    before = TestRun.objects.count()

    post_action(operator, "testrun", "cancel_runs", [queued.pk])
    post_action(operator, "testrun", "rerun_runs", [failed.pk])
    post_action(operator, "scenario", "start_runs", [data["scenario"].pk])

    queued.refresh_from_db()
    assert queued.status == RunStatus.CANCELLED
    assert TestRun.objects.count() == before + 2  # the re-run and the "run now"


def test_viewers_see_the_admin_but_no_action_that_changes_state(data):
    viewer = staff("viewer")
    record = data["records"][RecordStatus.ERROR]

    page = viewer.get(reverse("admin:queue_catalog_queuerecord_changelist"))
    assert page.status_code == 200
    assert "retry_records" not in page.content.decode()
    post_action(viewer, "queuerecord", "retry_records", [record.pk])
    record.refresh_from_db()
    assert record.status == RecordStatus.ERROR


# --- move to the front of a lane ----------------------------------------------------------------


def lane_order(scenario) -> list[int]:
    return list(
        QueueRecord.objects.filter(scenario=scenario, status__in=["SCHEDULED", "RUNNING"])
        .order_by("lane_position")
        .values_list("id", flat=True)
    )


def make_lane(head_status: str, head_starts: int, waiting: int = 3):
    scenario = make_scenario()
    head = QueueRecord.objects.create(
        scenario=scenario,
        payload={},
        status=head_status,
        start_count=head_starts,
        next_attempt_at=timezone.now() + timedelta(minutes=5) if head_starts else None,
    )
    rest = [QueueRecord.objects.create(scenario=scenario, payload={}) for _ in range(waiting)]
    return scenario, head, rest


@pytest.mark.parametrize(
    ("head_status", "head_starts"),
    [("RUNNING", 1), ("SCHEDULED", 2)],
    ids=["behind-the-running-head", "behind-a-head-waiting-to-re-run"],
)
def test_a_waiting_record_moves_to_the_front_but_never_past_the_head(db, head_status, head_starts):
    scenario, head, (first, second, third) = make_lane(head_status, head_starts)

    queue_record_move_to_front(record_id=third.id)

    assert lane_order(scenario) == [head.id, third.id, first.id, second.id]
    head.refresh_from_db()
    assert (head.status, head.start_count) == (head_status, head_starts)
    assert QueueRecord.objects.filter(scenario=scenario, status="RUNNING").count() == (
        1 if head_status == "RUNNING" else 0
    )


def test_only_a_waiting_record_can_move(db):
    scenario, head, (first, _, _) = make_lane("RUNNING", 1)

    with pytest.raises(RecordConflict, match="only a waiting record can move"):
        queue_record_move_to_front(record_id=head.id)
    queue_record_move_to_front(record_id=first.id)  # already first: nothing changes
    assert lane_order(scenario)[:2] == [head.id, first.id]


def test_the_admin_action_keeps_the_selection_in_its_order_at_the_front(data):
    scenario, head, (first, second, third) = make_lane("RUNNING", 1)
    operator = staff("operator")

    post_action(operator, "queuerecord", "move_records_to_front", [second.id, third.id])

    assert lane_order(scenario) == [head.id, second.id, third.id, first.id]


def test_a_record_added_in_the_admin_goes_through_the_queue_service(admin_client, db):
    scenario = make_scenario(name="added-by-hand")

    response = admin_client.post(
        reverse("admin:queue_catalog_queuerecord_add"),
        {"scenario": scenario.pk, "payload": '{"n": 1}', "priority": "normal", "max_attempts": 5},
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    record = QueueRecord.objects.get(scenario=scenario)
    assert (record.status, record.start_count, record.payload) == ("RUNNING", 1, {"n": 1})
    assert record.attempts.count() == 1


def test_a_run_page_links_its_reports_and_they_open_for_an_admin_user(admin_client, data):
    run = data["runs"][RunStatus.FAILED]

    page = admin_client.get(reverse("admin:runs_testrun_change", args=[run.pk])).content.decode()

    for path in (f"/api/runs/{run.pk}/report/", f"/api/runs/{run.pk}/junit/"):
        assert f'href="{path}"' in page
        assert admin_client.get(path).status_code == 200  # the admin session is enough


def test_a_run_is_titled_with_the_name_of_its_scenario(data):
    run = data["runs"][RunStatus.PASSED]

    assert str(run) == f"run {run.pk} of checkout (PASSED)"


@pytest.mark.parametrize(
    ("language", "count", "text"),
    [
        ("en", 1, "1 queue record"),
        ("en", 14, "14 queue records"),
        ("ru", 1, "1 запись очереди"),
        ("ru", 3, "3 записи очереди"),
        ("ru", 14, "14 записей очереди"),
        ("ru", 21, "21 запись очереди"),
    ],
)
def test_the_queue_counts_its_records_in_the_plural_form_of_each_language(
    admin_client, db, language, count, text
):
    scenario = make_scenario(name="counted")
    QueueRecord.objects.bulk_create(
        QueueRecord(scenario=scenario, payload={"n": n}) for n in range(count)
    )

    page = admin_client.get(
        reverse("admin:queue_catalog_queuerecord_changelist"), HTTP_ACCEPT_LANGUAGE=language
    ).content.decode()

    assert f"\n{text}\n" in page
    delete = {"en": "Delete selected queue records", "ru": "Удалить выбранные записи очереди"}
    assert delete[language] in page
    assert "14 queue\n" not in page and "Очередь\n" not in page.split('id="changelist"')[1]


@pytest.mark.parametrize(
    ("model", "language", "text"),
    [
        ("testrun", "en", "6 test runs"),
        ("testrun", "ru", "6 тестовых запусков"),
        ("stepresult", "en", "6 step results"),
        ("stepresult", "ru", "6 результатов шагов"),
        ("deadletter", "en", "1 dead letter"),
        ("deadletter", "ru", "1 недоставленное сообщение"),
        ("scenario", "en", "6 scenarios"),
        ("scenario", "ru", "6 сценариев"),
    ],
)
def test_every_list_counts_in_the_plural_form_of_its_language(
    admin_client, data, model, language, text
):
    page = admin_client.get(
        reverse(f"admin:runs_{model}_changelist"), HTTP_ACCEPT_LANGUAGE=language
    ).content.decode()

    assert f"\n{text}\n" in page


def test_the_add_form_starts_with_an_empty_object_and_accepts_it(admin_client, db):
    scenario = make_scenario(name="empty-payload")
    url = reverse("admin:queue_catalog_queuerecord_add")

    form = admin_client.get(url).content.decode()

    assert "\n{}</textarea>" in form and "null</textarea>" not in form
    for hidden in ("Execution", "Start count", "Process code", "Service information"):
        assert hidden not in form
    response = admin_client.post(
        url, {"scenario": scenario.pk, "payload": "{}", "priority": "normal", "max_attempts": 5}
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert QueueRecord.objects.get(scenario=scenario).payload == {}


@pytest.mark.parametrize("payload", ["null", "[1, 2]", "7", '"text"', ""])
def test_the_add_form_refuses_launch_parameters_that_are_not_an_object(admin_client, db, payload):
    scenario = make_scenario(name="bad-payload")

    response = admin_client.post(
        reverse("admin:queue_catalog_queuerecord_add"),
        {"scenario": scenario.pk, "payload": payload, "priority": "normal", "max_attempts": 5},
    )

    assert response.status_code == 200
    assert response.context["adminform"].form.errors["payload"] == [
        "Enter a JSON object, for example {}."
    ]
    assert not QueueRecord.objects.filter(scenario=scenario).exists()


def test_the_process_code_links_its_run_and_names_its_owner_on_the_same_line(admin_client, db):
    scenario = make_scenario(name="owned")
    run = TestRun.objects.create(
        scenario=scenario, definition=scenario.definition, worker="worker-3:4711"
    )
    record = QueueRecord.objects.create(
        scenario=scenario,
        payload={},
        status=RecordStatus.RUNNING,
        current_run=run,
        process_code=str(run.pk),
    )
    line = (
        f'<a href="/admin/runs/testrun/{run.pk}/change/">run {run.pk}</a> · '
        '<span style="overflow-wrap:anywhere">owner worker-3:4711</span>'
    )

    detail = admin_client.get(reverse("admin:queue_catalog_queuerecord_change", args=[record.pk]))
    listing = admin_client.get(reverse("admin:queue_catalog_queuerecord_changelist"))

    assert line in detail.content.decode()
    assert line in listing.content.decode()


def test_times_show_seconds_and_the_zone_in_the_admin_the_errors_and_the_reports(admin_client, db):
    at = datetime(2026, 12, 2, 2, 41, 7, 123456, tzinfo=UTC)
    scenario = make_scenario(name="timed")
    run = TestRun.objects.create(
        scenario=scenario,
        definition=scenario.definition,
        status=RunStatus.PASSED,
        started_at=at,
        finished_at=at + timedelta(seconds=2.5),
    )
    TestRun.objects.filter(pk=run.pk).update(queued_at=at)
    StepResult.objects.create(
        run=run, attempt=0, position=0, name="wait", plugin="delay", status="PASSED", started_at=at
    )
    record = QueueRecord.objects.create(
        scenario=scenario,
        payload={},
        status=RecordStatus.DONE,
        started_at=at,
        errors=[{"attempt": 1, "at": at.isoformat(), "message": "step 'wait' failed"}],
    )
    shown = "2026-12-02 02:41:07 UTC"
    pages = {
        "run": reverse("admin:runs_testrun_change", args=[run.pk]),
        "record": reverse("admin:queue_catalog_queuerecord_change", args=[record.pk]),
        "runs": reverse("admin:runs_testrun_changelist"),
        "report": f"/api/runs/{run.pk}/report/",
    }
    for language in ("en", "ru"):
        for name, url in pages.items():
            page = admin_client.get(url, HTTP_ACCEPT_LANGUAGE=language).content.decode()
            assert shown in page, f"{name} ({language})"
            assert "02:41:07.123456" not in page and "2026-12-02T02:41" not in page, name
    record_page = admin_client.get(pages["record"]).content.decode()
    assert f"#1 {shown}: step &#x27;wait&#x27; failed" in record_page
    assert f'title="{shown}"' in admin_client.get(pages["runs"]).content.decode()  # the age
    junit = ElementTree.fromstring(admin_client.get(f"/api/runs/{run.pk}/junit/").content)
    assert junit.find("testsuite").get("timestamp") == "2026-12-02T02:41:07+00:00"


def test_the_run_page_is_a_report_with_failures_first_and_every_step_in_place(admin_client, data):
    run = data["runs"][RunStatus.FAILED]  # attempt 1: step "first" ERROR, then a crash
    StepResult.objects.create(
        run=run, attempt=2, position=0, name="first", plugin="delay", status="FAILED", error="no"
    )
    StepResult.objects.create(
        run=run,
        attempt=2,
        position=1,
        name="clean up",
        plugin="delay",
        status="PASSED",
        is_cleanup=True,
        request={"token": "[REDACTED]"},
        tries=[{"try": 1, "status": "PASSED", "duration_ms": 1.5, "error": ""}],
    )

    page = admin_client.get(reverse("admin:runs_testrun_change", args=[run.pk])).content.decode()

    report = page[page.index('id="run-report"') :]
    failures = report[report.index('id="failures"') : report.index("<h2>Attempt 1")]
    assert 'href="#step-2-0"' in failures and "#step-1-0" not in failures  # the latest attempt
    assert "interrupted; a later attempt ran the run again" in report
    assert report.index("<h2>Attempt 1") < report.index("<h2>Attempt 2")
    assert report.index('id="failures"') < report.index('<details class="step failed"')
    assert report.index('<details class="step failed"') < report.index("clean up")
    assert '<span class="tag">finally</span>' in report
    assert "[REDACTED]" in report
    assert "icon-no.svg" not in page  # no red cross for "not a finally step"
