"""The rate keys' admin: list and change pages render every state, configuration is edited
without touching the throttle's state, unblock is an operators' action; English and Russian."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.db.models import F
from django.db.models.functions import Now
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from targets.models import RateKey
from tests.integration.test_admin import staff
from tests.integration.test_rate_keys_api import CONFIG_COLUMNS, columns_written

pytestmark = pytest.mark.integration

CHANGELIST = reverse("admin:targets_ratekey_changelist")


def change_url(key: RateKey) -> str:
    return reverse("admin:targets_ratekey_change", args=[key.pk])


@pytest.fixture
def keys(db) -> dict[str, RateKey]:
    made = {
        "unlimited": RateKey.objects.create(name="http://127.0.0.1:8081"),
        "limited": RateKey.objects.create(
            name="https://api.example.com:443",
            requests=20,
            interval_seconds=1,
            burst=5,
            max_concurrent=3,
            requests_total=4321,
        ),
        "learned": RateKey.objects.create(name="payments", learned_interval_seconds=0.25),
        "blocked": RateKey.objects.create(
            name="http://slow.example.com:80",
            requests=100,
            interval_seconds=60,
            pushbacks_total=3,
            recent_pushbacks=[
                {"status": 429, "retry_after": 120},
                {"status": 503, "retry_after": 90},
            ],
        ),
    }
    RateKey.objects.filter(pk=made["blocked"].pk).update(
        blocked_until=Now() + timedelta(seconds=150), tat=Now() + timedelta(seconds=1)
    )
    return made


def test_the_list_shows_limit_concurrency_block_recent_429s_and_requests(admin_client, keys):
    page = admin_client.get(CHANGELIST)

    assert page.status_code == 200
    html = page.content.decode()
    assert "20 / 1 s, burst 5" in html and "100 / 60 s, burst 1" in html
    assert "unlimited; learned from 429s: 1 / 0.25 s" in html
    assert "4321" in html
    blocked = RateKey.objects.get(pk=keys["blocked"].pk).blocked_until
    # Relative, with the exact time on hover.
    assert f'title="{blocked:%Y-%m-%d %H:%M:%S} UTC">in 2' in html
    rows = page.context["cl"].result_list
    counts = {key.name: len(key.recent_pushbacks) for key in rows}
    assert counts["http://slow.example.com:80"] == 2


def test_every_change_page_renders_state_read_only(admin_client, keys):
    for key in keys.values():
        page = admin_client.get(change_url(key))
        assert page.status_code == 200, key.name
        form = page.context["adminform"].form
        assert set(form.fields) == {"requests", "interval_seconds", "burst", "max_concurrent"}
    html = admin_client.get(change_url(keys["blocked"])).content.decode()
    assert "&quot;retry_after&quot;: 120" in html or '"retry_after": 120' in html
    assert "1.66667 requests/s" in html
    assert admin_client.get(reverse("admin:targets_ratekey_add")).status_code == 200


def test_the_pages_speak_russian(admin_client, keys):
    html = admin_client.get(CHANGELIST, HTTP_ACCEPT_LANGUAGE="ru").content.decode()
    assert "Ключи ограничения" in html and "20 / 1 с, всплеск 5" in html
    assert "через 2" in html
    page = admin_client.get(change_url(keys["blocked"]), HTTP_ACCEPT_LANGUAGE="ru")
    assert "Состояние (ведёт ограничитель)" in page.content.decode()


def test_saving_the_form_changes_the_configuration_and_keeps_the_throttle_state(admin_client, keys):
    key = keys["blocked"]
    page = admin_client.get(change_url(key))  # the form is read
    RateKey.objects.filter(pk=key.pk).update(requests_total=F("requests_total") + 7)  # a worker
    assert page.status_code == 200

    with CaptureQueriesContext(connection) as captured:
        response = admin_client.post(
            change_url(key),
            {"requests": 30, "interval_seconds": 2, "burst": 4, "max_concurrent": ""},
        )

    assert response.status_code == 302, response.context["adminform"].form.errors
    # Only the configuration: the state the form was opened with is never written back.
    assert columns_written(captured) == CONFIG_COLUMNS
    stored = RateKey.objects.get(pk=key.pk)
    assert (stored.requests, stored.interval_seconds, stored.burst) == (30, 2.0, 4)
    assert stored.max_concurrent is None and stored.requests_total == 7
    assert stored.blocked_until is not None and stored.pushbacks_total == 3


@pytest.mark.parametrize(
    ("field", "value"),
    [("requests", 0), ("burst", 0), ("max_concurrent", 0), ("interval_seconds", 0),
     ("interval_seconds", -1), ("interval_seconds", 100_000), ("interval_seconds", "inf")],
)  # fmt: skip
def test_the_form_refuses_what_the_api_refuses(admin_client, keys, field, value):
    key = keys["limited"]
    data = {"requests": 20, "interval_seconds": 1, "burst": 5, "max_concurrent": 3, field: value}

    response = admin_client.post(change_url(key), data)

    assert response.status_code == 200
    assert list(response.context["adminform"].form.errors) == [field]
    assert RateKey.objects.get(pk=key.pk).requests == 20


def test_adding_a_key_configures_it(admin_client, db):
    response = admin_client.post(
        reverse("admin:targets_ratekey_add"),
        {"name": "search", "requests": 5, "interval_seconds": 1, "burst": 2, "max_concurrent": ""},
    )

    assert response.status_code == 302
    key = RateKey.objects.get(name="search")
    assert (key.requests, key.burst, key.max_concurrent) == (5, 2, None)
    again = admin_client.post(
        reverse("admin:targets_ratekey_add"), {"name": "search", "interval_seconds": 1, "burst": 1}
    )
    assert "name" in again.context["adminform"].form.errors


def unblock(client: Client, ids: list[int]):
    return client.post(CHANGELIST, {"action": "unblock_keys", "_selected_action": ids}, follow=True)


def test_an_operator_unblocks_keys_and_nothing_else_changes(keys):
    operator = staff("operator")
    key = keys["blocked"]

    page = unblock(operator, [key.pk, keys["limited"].pk])

    assert "2 rate keys unblocked." in page.content.decode()
    stored = RateKey.objects.get(pk=key.pk)
    assert stored.blocked_until is None
    assert stored.pushbacks_total == 3 and len(stored.recent_pushbacks) == 2


def test_a_viewer_sees_the_keys_but_can_neither_unblock_nor_edit(keys):
    viewer = staff("viewer")
    key = keys["blocked"]

    page = viewer.get(CHANGELIST)
    assert page.status_code == 200
    assert "unblock_keys" not in page.content.decode()
    unblock(viewer, [key.pk])
    viewer.post(change_url(key), {"requests": 1, "interval_seconds": 1, "burst": 1})

    stored = RateKey.objects.get(pk=key.pk)
    assert stored.blocked_until is not None and stored.requests == 100
    assert viewer.get(reverse("admin:targets_ratekey_add")).status_code == 403
