"""examples/order-flow.yaml end to end: the shop's API, the row it wrote to PostgreSQL and the
event it published on RabbitMQ, through a worker of its own (with the shop's credentials)."""

from __future__ import annotations

import subprocess
import threading
import uuid

import psycopg2
import pytest
import yaml

from examples.target import Shop, make_server
from runs.services import run_start, scenario_save
from tests.integration.test_examples import EXAMPLES, finished
from tests.support import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("live_db")]


@pytest.fixture
def shop():
    """The order flow's own database and vhost, and a target that uses them."""
    name = f"orchestra_shop_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", name], check=True)
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", name, "guest", ".*", ".*", ".*"], check=True
    )
    database_url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    events_url = f"amqp://guest:guest@127.0.0.1:5672/{name}"
    server = make_server(shop=Shop(database_url, events_url))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", database_url, events_url
    server.shutdown()
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", name], check=True)
    admin.cursor().execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.close()


def test_the_order_flow_checks_the_row_and_the_event_behind_the_api(shop):
    base_url, database_url, events_url = shop
    worker = WorkerProcess(
        "shop",
        env={
            "ORCHESTRA_CREDENTIAL_SHOP_DB": database_url,
            "ORCHESTRA_CREDENTIAL_SHOP_EVENTS": events_url,
            # The shop's database and broker share their servers with orchestra's own.
            "ORCHESTRA_OUTBOUND_OPEN_INFRASTRUCTURE": "127.0.0.1:5432,127.0.0.1:5672",
        },
    ).start()
    try:
        definition = yaml.safe_load((EXAMPLES / "order-flow.yaml").read_text())
        scenario = scenario_save(name="order-flow", definition=definition)
        run = finished(run_start(scenario=scenario, payload={"base_url": base_url}))
    finally:
        worker.stop()

    steps = {step.name: step for step in run.steps.all()}
    assert run.status == "PASSED", {name: step.error for name, step in steps.items()}
    stored = "\n".join(str(vars(step)) for step in steps.values())
    assert database_url not in stored and events_url not in stored
