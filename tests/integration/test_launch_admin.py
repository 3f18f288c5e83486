"""The admin of launches and environments: pages render with data, failing rows link to their
runs, and an environment's secret values are never shown nor lost by a save."""

from __future__ import annotations

import pytest
from django.urls import reverse

from launches.models import Launch
from runs.models import TestRun
from targets.models import Environment
from tests.factories import make_scenario

pytestmark = pytest.mark.integration

SECRET = "sk-admin-canary-5150"


@pytest.fixture
def launch(db) -> Launch:
    scenario = make_scenario(name="checkout")
    environment = Environment.objects.create(
        name="staging", variables={"base_url": "http://t"}, secret_variables={"api_key": SECRET}
    )
    launch = Launch.objects.create(
        tags="smoke", scenario_names=[scenario.name], environment=environment, data_rows=2
    )
    for row, status in ((1, "PASSED"), (2, "FAILED")):
        TestRun.objects.create(
            scenario=scenario,
            definition=scenario.definition,
            status=status,
            launch=launch,
            context={"payload": {"row": row}, "launchRow": row, "launchId": launch.id},
            error="" if status == "PASSED" else "step 'pay' failed",
        )
    return launch


def test_launch_pages_render_with_counts_failing_rows_and_report_links(admin_client, launch):
    assert admin_client.get(reverse("admin:launches_launch_changelist")).status_code == 200
    page = admin_client.get(reverse("admin:launches_launch_change", args=[launch.id]))
    html = page.content.decode()
    assert page.status_code == 200
    failing = TestRun.objects.get(launch=launch, status="FAILED")
    assert reverse("admin:runs_testrun_change", args=[failing.id]) in html
    assert "step &#x27;pay&#x27; failed" in html and "1 failed" in html and "1 passed" in html
    assert reverse("launch-junit", args=[launch.id]) in html


def test_environment_secret_values_are_never_shown_and_a_save_keeps_them(admin_client, launch):
    environment = launch.environment
    url = reverse("admin:targets_environment_change", args=[environment.id])
    page = admin_client.get(url).content.decode()
    assert "api_key" in page and SECRET not in page
    assert admin_client.get(reverse("admin:targets_environment_changelist")).status_code == 200

    response = admin_client.post(
        url,
        {
            "name": "staging",
            "description": "",
            "variables": '{"base_url": "http://t2"}',
            "secret_variables": '{"api_key": "[REDACTED]", "new_key": "fresh-value"}',
            "credentials": "",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    environment.refresh_from_db()
    assert environment.variables == {"base_url": "http://t2"}
    assert environment.secret_variables == {"api_key": SECRET, "new_key": "fresh-value"}


def test_an_environment_naming_an_unknown_credential_is_refused_in_the_admin(admin_client, db):
    response = admin_client.post(
        reverse("admin:targets_environment_add"),
        {
            "name": "prod",
            "description": "",
            "variables": "{}",
            "secret_variables": "{}",
            "credentials": "NOT_CONFIGURED",
        },
    )
    assert response.status_code == 200
    assert "NOT_CONFIGURED" in response.content.decode() and not Environment.objects.exists()
