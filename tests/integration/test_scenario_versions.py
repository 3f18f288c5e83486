"""Scenario versions: every save path keeps one, runs record the version they executed (direct
and through the queue's SQL hand-off), diffs, the import's guard over edits made elsewhere, and
the scenario page (stats, recent runs, "run with payload")."""

from __future__ import annotations

import io
import threading
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from queue_catalog.models import QueueRecord
from queue_catalog.services import queue_record_create
from runs.models import Scenario, ScenarioVersion, TestRun, VersionOrigin
from runs.services import run_start, scenario_update
from tests.conftest import make_api_client
from tests.factories import delay_step, make_scenario

pytestmark = pytest.mark.integration

YAML_V1 = """\
# Checkout, as the shop team wrote it.
steps:
  - name: pay   # the slow one
    plugin: delay
    with: {seconds: 0}
"""
YAML_V2 = YAML_V1.replace("seconds: 0", "seconds: 0.01")


def staff(role: str) -> Client:
    user = User.objects.create_user(f"{role}-admin", password="pw", is_staff=True)
    user.groups.add(Group.objects.get(name=f"{role}s"))
    client = Client()
    client.force_login(user)
    client.user = user
    return client


def versions(scenario: Scenario) -> list[tuple[int, str]]:
    return list(scenario.versions.order_by("number").values_list("number", "origin"))


def admin_save(client: Client, scenario: Scenario, source: str, **fields):
    url = reverse("admin:runs_scenario_change", args=[scenario.pk])
    data = {"name": scenario.name, "description": "", "definition_source": source, **fields}
    data.setdefault("is_active", "on")
    return client.post(url, data)


def test_an_admin_edit_keeps_the_yaml_with_its_comments_as_a_new_version(db):
    scenario = make_scenario([delay_step("pay")], name="checkout")
    operator = staff("operator")

    response = admin_save(operator, scenario, YAML_V2)

    assert response.status_code == 302, response.content.decode()[:2000]
    scenario.refresh_from_db()
    assert scenario.definition_source == YAML_V2
    assert scenario.definition["steps"][0]["with"] == {"seconds": 0.01}
    assert versions(scenario) == [(1, VersionOrigin.CODE), (2, VersionOrigin.ADMIN)]
    latest = scenario.current_version
    assert (latest.number, latest.source, latest.created_by) == (2, YAML_V2, operator.user)
    page = operator.get(reverse("admin:runs_scenario_change", args=[scenario.pk]))
    assert "# the slow one" in page.content.decode()


def test_a_scenario_added_in_the_admin_starts_at_version_one(db):
    operator = staff("operator")

    response = operator.post(
        reverse("admin:runs_scenario_add"),
        {"name": "added", "description": "", "definition_source": YAML_V1, "is_active": "on"},
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    scenario = Scenario.objects.get(name="added")
    assert versions(scenario) == [(1, VersionOrigin.ADMIN)]
    assert scenario.definition_source == YAML_V1 and scenario.current_version.source == YAML_V1


def test_concurrent_saves_of_one_scenario_number_their_versions_one_by_one(transactional_db):
    scenario = make_scenario([delay_step("pay")], name="contended")
    barrier = threading.Barrier(4)
    errors = []

    def save(seconds: float) -> None:
        try:
            barrier.wait(timeout=10)
            scenario_update(
                scenario=Scenario.objects.get(id=scenario.id),
                definition={"steps": [delay_step("pay", seconds)]},
            )
        except Exception as exc:  # reported below, with the others
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=save, args=(n / 100,)) for n in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    assert [number for number, _ in versions(scenario)] == [1, 2, 3, 4, 5]
    scenario.refresh_from_db()
    assert scenario.current_version.number == 5
    assert scenario.current_version.definition == scenario.definition


def test_an_admin_save_that_changes_only_the_description_keeps_the_version(db):
    scenario = make_scenario([delay_step("pay")], name="checkout")
    operator = staff("operator")
    admin_save(operator, scenario, scenario.definition_source)

    response = admin_save(operator, scenario, scenario.definition_source, description="new")

    assert response.status_code == 302
    assert versions(scenario) == [(1, VersionOrigin.CODE)]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("steps: [\n  {name: a", "not valid YAML"),
        ("- just\n- a list\n", "must be an object"),
        (YAML_V1.replace("seconds: 0", "seconds: -1"), "steps[0] (pay): with.seconds"),
    ],
)
def test_an_admin_edit_with_a_bad_definition_names_the_problem_and_keeps_the_version(
    db, source, expected
):
    scenario = make_scenario([delay_step("pay")], name="checkout")

    response = admin_save(staff("operator"), scenario, source)

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors["definition_source"]
    assert any(expected in error for error in errors), errors
    assert versions(scenario) == [(1, VersionOrigin.CODE)]


def test_the_api_keeps_a_version_per_change_and_lists_them_with_diffs(api_client):
    created = api_client.post(
        "/api/scenarios/",
        {"name": "api-made", "definition": {"steps": [delay_step("one")]}},
        format="json",
    )
    assert created.status_code == 201, created.json()
    assert created.json()["version"] == 1
    scenario_id = created.json()["id"]
    changed = api_client.patch(
        f"/api/scenarios/{scenario_id}/",
        {"definition": {"steps": [delay_step("one"), delay_step("two")]}},
        format="json",
    )
    assert changed.json()["version"] == 2
    api_client.patch(f"/api/scenarios/{scenario_id}/", {"description": "d"}, format="json")

    listed = api_client.get(f"/api/scenarios/{scenario_id}/versions/").json()["results"]

    assert [(v["number"], v["origin"], v["created_by"]) for v in listed] == [
        (2, "api", api_client.user.username),
        (1, "api", api_client.user.username),
    ]
    assert "+- name: two" in listed[0]["diff"].splitlines()
    assert listed[0]["diff"].startswith("--- version 1\n+++ version 2")
    assert listed[1]["diff"] == ""
    assert api_client.get("/api/scenarios/999999/versions/").status_code == 404


def test_the_api_takes_a_definition_as_yaml_and_keeps_its_text(api_client):
    created = api_client.post(
        "/api/scenarios/", {"name": "from-yaml", "definition_source": YAML_V1}, format="json"
    )
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["definition_source"] == YAML_V1 and body["version"] == 1
    assert body["definition"]["steps"][0]["name"] == "pay"

    changed = api_client.put(
        f"/api/scenarios/{body['id']}/",
        {"name": "from-yaml", "definition_source": YAML_V2},
        format="json",
    )

    assert changed.json()["version"] == 2
    versions = api_client.get(f"/api/scenarios/{body['id']}/versions/").json()["results"]
    assert "+    with: {seconds: 0.01}" in versions[0]["diff"].splitlines()
    assert versions[0]["source"] == YAML_V2


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"definition_source": "steps: [\n"}, "definition_source", "not valid YAML"),
        ({"definition_source": "- a\n"}, "definition_source", "must be an object"),
        (
            {"definition_source": YAML_V1.replace("seconds: 0", "seconds: -1")},
            "definition_source",
            "steps[0] (pay): with.seconds",
        ),
        (
            {"definition_source": 'steps: [{name: "\\ud800", plugin: delay}]'},
            "definition_source",
            "unpaired surrogates",
        ),
        (
            {"definition_source": YAML_V1, "definition": {"steps": [delay_step("a")]}},
            "definition_source",
            "not both",
        ),
        ({}, "definition", "This field is required"),
    ],
)
def test_a_bad_yaml_definition_gets_a_400_naming_the_problem(api_client, data, field, message):
    response = api_client.post("/api/scenarios/", {"name": "bad", **data}, format="json")

    assert response.status_code == 400, response.json()
    messages = response.json()["error"]["fields"][field]
    assert any(message in text for text in messages), messages
    assert not Scenario.objects.filter(name="bad").exists()


def test_each_run_records_the_version_it_executed_started_directly_or_by_the_queue(db):
    scenario = make_scenario([delay_step("pay")], name="checkout")
    first = run_start(scenario=scenario, payload={})
    scenario_update(scenario=scenario, definition={"steps": [delay_step("pay", 0.01)]})
    direct = run_start(scenario=scenario, payload={})
    record = queue_record_create(scenario=scenario, payload={"order": 1})

    record.refresh_from_db()
    queued = TestRun.objects.get(id=record.current_run_id)  # inserted by the lane's SQL
    numbers = {
        run.id: run.scenario_version.number
        for run in TestRun.objects.filter(id__in=[first.id, direct.id, queued.id])
    }
    assert numbers == {first.id: 1, direct.id: 2, queued.id: 2}
    assert queued.definition == queued.scenario_version.definition


def test_the_run_page_and_the_api_show_the_runs_version(admin_client, db):
    scenario = make_scenario([delay_step("pay")], name="checkout")
    run = run_start(scenario=scenario, payload={})

    page = admin_client.get(reverse("admin:runs_testrun_change", args=[run.id])).content.decode()

    versions_url = reverse("admin:runs_scenario_versions", args=[scenario.id])
    assert f'<a href="{versions_url}?to=1">v1</a>' in page
    api = make_api_client("viewer")
    assert api.get(f"/api/runs/{run.id}/").json()["scenario_version"] == 1
    assert api.get("/api/runs/").json()["results"][0]["scenario_version"] == 1
    assert api.get(f"/api/scenarios/{scenario.id}/").json()["version"] == 1


def test_the_versions_page_shows_the_diff_between_two_versions(admin_client, db):
    scenario = make_scenario([delay_step("pay")], name="checkout")
    operator = staff("operator")
    admin_save(operator, scenario, YAML_V1)
    admin_save(operator, scenario, YAML_V2)
    url = reverse("admin:runs_scenario_versions", args=[scenario.id])

    latest = admin_client.get(url)
    chosen = admin_client.get(url, {"from": 1, "to": 3})

    assert latest.status_code == 200
    lines = [line for _, line in latest.context["diff"]]
    assert "-    with: {seconds: 0}" in lines and "+    with: {seconds: 0.01}" in lines
    assert ("diff-add", "+    with: {seconds: 0.01}") in latest.context["diff"]
    assert "+# Checkout, as the shop team wrote it." in [line for _, line in chosen.context["diff"]]
    assert admin_client.get(url, {"to": 9}).status_code == 404
    assert admin_client.get(url, {"to": "x"}).status_code == 404


def write(tmp_path, text: str, name: str = "checkout.yaml"):
    (tmp_path / name).write_text(text)


def import_dir(tmp_path, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("import_scenarios", str(tmp_path), *args, stdout=out, stderr=err)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, out.getvalue(), err.getvalue()


def test_reimporting_a_file_keeps_the_admins_edit_unless_forced(db, tmp_path):
    write(tmp_path, "name: checkout\n" + YAML_V1)
    assert import_dir(tmp_path)[0] == 0
    scenario = Scenario.objects.get(name="checkout")
    code, out, _ = import_dir(tmp_path)
    assert code == 0 and "version 1, unchanged" in out
    admin_save(staff("operator"), scenario, "name: checkout\n" + YAML_V2)
    write(tmp_path, "name: checkout\n" + YAML_V1 + "# a new comment\n")

    code, out, err = import_dir(tmp_path)

    assert code == 1
    assert (
        "scenario 'checkout' was changed in the admin by operator-admin (version 2) since its "
        "last import (version 1); not overwritten (--force replaces it with the file)"
    ) in err
    scenario.refresh_from_db()
    assert scenario.current_version.number == 2 and "0.01" in scenario.definition_source

    code, out, err = import_dir(tmp_path, "--force")

    assert code == 0, err
    assert "version 3, new version" in out
    assert versions(scenario) == [(1, "import"), (2, "admin"), (3, "import")]
    scenario.refresh_from_db()
    assert scenario.definition_source.endswith("# a new comment\n")


def test_a_changed_file_over_an_imported_scenario_makes_a_new_version(db, tmp_path):
    write(tmp_path, YAML_V1)
    import_dir(tmp_path)
    write(tmp_path, YAML_V2)

    code, out, _ = import_dir(tmp_path)

    assert code == 0 and "checkout (1 steps, version 2, new version)" in out
    assert versions(Scenario.objects.get(name="checkout")) == [(1, "import"), (2, "import")]


def test_importing_over_a_scenario_made_in_the_api_says_it_was_never_imported(db, tmp_path):
    make_scenario(name="checkout")
    ScenarioVersion.objects.update(origin=VersionOrigin.API)
    write(tmp_path, YAML_V1)

    code, _, err = import_dir(tmp_path)

    assert code == 1
    assert "changed in the API (version 1) and was never imported" in err


@pytest.fixture
def history(db) -> Scenario:
    """A scenario with 7 finished runs: 5 passed, 1 failed, 1 error (1 to 7 s), and 2 more."""
    scenario = make_scenario([delay_step("pay")], name="checkout")
    now = timezone.now()
    outcomes = ["PASSED"] * 5 + ["FAILED", "ERROR"]
    for seconds, status in enumerate(outcomes, start=1):
        TestRun.objects.create(
            scenario=scenario,
            definition=scenario.definition,
            status=status,
            started_at=now - timedelta(seconds=seconds),
            finished_at=now,
        )
    TestRun.objects.create(scenario=scenario, definition=scenario.definition, status="CANCELLED")
    TestRun.objects.create(scenario=scenario, definition=scenario.definition)
    return scenario


def test_the_scenario_page_shows_pass_rate_median_duration_and_recent_runs(history):
    page = staff("viewer").get(reverse("admin:runs_scenario_page", args=[history.id]))

    assert page.status_code == 200
    stats = page.context["stats"]
    assert (stats.runs, stats.passed, stats.median_seconds) == (7, 5, pytest.approx(4.0))
    html = page.content.decode()
    assert "71 %" in html and "4.0 s" in html
    assert len(page.context["recent_runs"]) == 9
    assert page.context["form"] is None  # a viewer may not start anything
    assert "Run with payload" not in html


def test_the_scenario_stats_look_only_at_the_last_runs_in_one_query(
    history, django_assert_num_queries
):
    from runs.selectors import scenario_stats

    with django_assert_num_queries(1):
        stats = scenario_stats(scenario_ids=[history.id], window=2)[history.id]

    assert (stats.runs, stats.passed) == (2, 0)  # the newest two are the failed and error runs


def test_the_run_form_starts_a_run_with_the_payload_and_priority(history):
    url = reverse("admin:runs_scenario_page", args=[history.id])
    data = {"priority": "urgent", "payload": '{"order": 7}', "launch": "run"}

    operator = staff("operator")
    response = operator.post(url, data)

    run = TestRun.objects.filter(scenario=history).order_by("-id").first()
    assert response.status_code == 302
    assert response.url == reverse("admin:runs_testrun_change", args=[run.id])
    assert f"Started run {run.id} of checkout." in operator.get(response.url).content.decode()
    assert (run.priority, run.context["payload"], run.status) == ("urgent", {"order": 7}, "QUEUED")
    assert run.scenario_version == history.current_version


def test_the_run_form_adds_a_queue_record(history):
    url = reverse("admin:runs_scenario_page", args=[history.id])
    data = {"priority": "normal", "payload": "{}", "launch": "queue"}

    operator = staff("operator")
    response = operator.post(url, data)

    record = QueueRecord.objects.get(scenario=history)
    assert response.url == reverse("admin:queue_catalog_queuerecord_change", args=[record.id])
    page = operator.get(response.url).content.decode()
    assert f"Added queue record {record.id} of checkout." in page
    assert record.status == "RUNNING"  # an idle lane starts at once


@pytest.mark.parametrize(
    ("payload", "priority", "field", "message"),
    [
        ('{"order": ', "normal", "payload", "not valid JSON: Expecting value: line 1 column 11"),
        ("[1, 2]", "normal", "payload", "must be a JSON object"),
        ('{"a": "\\u0000"}', "normal", "payload", "NUL characters"),
        ("{}", "soon", "priority", "Select a valid choice"),
    ],
)
def test_a_bad_run_form_says_what_is_wrong_and_starts_nothing(
    history, payload, priority, field, message
):
    url = reverse("admin:runs_scenario_page", args=[history.id])
    before = TestRun.objects.count()

    response = staff("operator").post(
        url, {"priority": priority, "payload": payload, "launch": "run"}
    )

    assert response.status_code == 400
    errors = response.context["form"].errors[field]
    assert any(message in error for error in errors), errors
    assert message.split(":")[0] in response.content.decode()
    assert TestRun.objects.count() == before


def test_the_run_form_of_an_inactive_scenario_says_so(history):
    Scenario.objects.filter(id=history.id).update(is_active=False)
    url = reverse("admin:runs_scenario_page", args=[history.id])

    response = staff("operator").post(url, {"priority": "normal", "payload": "{}", "launch": "run"})

    assert response.status_code == 400
    assert "is not active" in response.content.decode()


def test_only_operators_may_start_from_the_scenario_page(history):
    url = reverse("admin:runs_scenario_page", args=[history.id])

    response = staff("viewer").post(url, {"priority": "normal", "payload": "{}", "launch": "run"})

    assert response.status_code == 403
    assert TestRun.objects.filter(scenario=history).count() == 9


def test_version_one_is_kept_for_scenarios_older_than_versions(db):
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    executor.migrate([("runs", "0005_run_lifecycle")])
    old_apps = executor.loader.project_state([("runs", "0005_run_lifecycle")]).apps
    old = old_apps.get_model("runs", "Scenario").objects.create(
        name="old", definition={"steps": [delay_step("pay")]}
    )
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())

    scenario = Scenario.objects.get(id=old.id)
    assert scenario.current_version.number == 1
    assert scenario.current_version.origin == VersionOrigin.MIGRATION
    assert "- name: pay" in scenario.definition_source


def test_a_scenario_without_runs_can_still_be_deleted_with_its_versions(admin_client, db):
    scenario = make_scenario([delay_step("pay")], name="short-lived")
    scenario_update(scenario=scenario, definition={"steps": [delay_step("pay", 0.01)]})

    response = admin_client.post(
        reverse("admin:runs_scenario_delete", args=[scenario.pk]), {"post": "yes"}
    )

    assert response.status_code == 302
    assert not Scenario.objects.filter(id=scenario.id).exists()
    assert not ScenarioVersion.objects.filter(scenario_id=scenario.id).exists()


def test_the_scenario_and_versions_pages_speak_russian(history):
    operator = staff("operator")

    page = operator.get(
        reverse("admin:runs_scenario_page", args=[history.id]), HTTP_ACCEPT_LANGUAGE="ru"
    ).content.decode()
    versions_page = operator.get(
        reverse("admin:runs_scenario_versions", args=[history.id]), HTTP_ACCEPT_LANGUAGE="ru"
    ).content.decode()

    assert "Запуск с параметрами" in page and "завершённых запусков (из последних 50)" in page
    assert "Сохранённые версии" in versions_page and "код или консоль" in versions_page
