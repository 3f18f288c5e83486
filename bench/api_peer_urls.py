"""orchestra's URLs plus ``POST /bench/plain-runs/``: the run start a Django user writes by hand.

The plain view does the API's work without its framework: read the JSON body, find the scenario
by name, INSERT the run (the same :func:`runs.services.new_run`), and after the commit publish
``execute_run`` with ``apply_async`` and note ``dispatched_at``, as orchestra did before its
batched publish. No authentication, throttle, idempotency or validation beyond what the INSERT
needs: the floor the API's own costs are measured against.
"""

from __future__ import annotations

import json

from django.db import transaction
from django.db.models.functions import Now
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from celeryconfig import PRIORITIES
from orchestra.urls import handler404
from orchestra.urls import urlpatterns as orchestra_urlpatterns
from runs.models import Scenario, TestRun
from runs.services import new_run


@csrf_exempt
@require_POST
def plain_run_start(request: HttpRequest) -> JsonResponse:
    """Start one run of the scenario named in the body; its id and status."""
    from runs.tasks import execute_run

    body = json.loads(request.body)
    scenario = Scenario.objects.get(name=body["scenario"])
    priority = body.get("priority", "normal")
    run = new_run(
        scenario=scenario, priority=priority, context={"payload": body.get("payload") or {}}
    )
    with transaction.atomic():
        run.save()

        def publish() -> None:
            execute_run.apply_async(args=[run.id], priority=PRIORITIES[priority])
            TestRun.objects.filter(id=run.id).update(dispatched_at=Now())

        transaction.on_commit(publish)
    return JsonResponse({"id": run.id, "status": run.status}, status=201)


urlpatterns = [
    path("bench/plain-runs/", plain_run_start, name="bench-plain-runs"),
    *orchestra_urlpatterns,
]
__all__ = ["handler404", "urlpatterns"]
