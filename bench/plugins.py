"""What orchestra adds to a plugin's call: one trivial step through the executor, next to the
same library call in a plain loop, against the same local server, for every plugin.

The orchestra side is ``runs.executor._RunExecution._run_step``, the code a worker runs for each
step: render the ``with``/``expect`` templates, validate them against the plugin's schemas,
``plugin.execute`` (outbound check included), ``plugin.check``, captures, and the redaction of
everything stored. The execution is built on an unsaved claim, so no database write is counted:
storing a step result is the executor's cost per step whatever the plugin (see per_run.py).

The plain side makes the same library calls a plugin makes for that step, with the same
connection lifecycle (http and graphql: one pooled ``httpx.Client``; sql, redis, amqp, mqtt,
websocket and grpc: a connection per step). The websocket, grpc and graphql servers are the
tests' (tests/protocols.py), each in a subprocess so that their CPU is not counted as ours.

    .venv-bench/bin/python bench/plugins.py [--steps 300] [--plot FILE]

A plugin whose server or library is missing is skipped with a note. The last line printed is a
JSON object. To cover a new plugin, add a :class:`Case` to :func:`cases`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ comes first on sys.path, where bench/queue.py would shadow the standard
# library's queue module; the repository root takes its place.
if Path(sys.path[0]).resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.plotting import bar_chart  # noqa: E402

POSTGRESQL = "127.0.0.1:5432"
RABBITMQ = "127.0.0.1:5672"
REDIS_URL = "redis://127.0.0.1:6379/0"
MOSQUITTO = ("127.0.0.1", 1883)
#: The target of the target: "overhead <= 20 % of the raw call, or under 200 µs".
TARGET_RATIO, TARGET_US = 0.20, 200.0


@dataclass
class Case:
    """One plugin's trivial step and the plain call it stands for.

    ``setup`` is entered once per invocation; it yields ``(step, raw)``: the scenario step the
    executor runs and a zero-argument function making the same library call. ``note`` says
    what one side does that the other does not, when that is so.
    """

    plugin: str
    what: str
    setup: Callable[[], Any]
    note: str = ""


def cases() -> list[Case]:
    return [
        Case("http", "GET /health on examples/target.py", http_case),
        Case("delay", "0 s", delay_case),
        Case("sql", "SELECT 1 on PostgreSQL", sql_case),
        Case("redis", "GET on Redis (examples/plugins/redis)", redis_case),
        Case("amqp", "publish with confirms to a queue of a bench vhost", amqp_case),
        Case("mqtt", "publish QoS 1 to Mosquitto", mqtt_case),
        Case("websocket", "send a text, receive its echo", websocket_case),
        Case(
            "grpc",
            "unary SayHello on the tests' greeter, schema by server reflection",
            grpc_case,
            note="grpc: the orchestra and plugin sides include the plugin's reflection lookup, "
            "a streaming call on the channel before every step; the raw side has the descriptors",
        ),
        Case(
            "grpc/protos",
            "the same call, schema from tests/protos (with.protos, compiled once and cached)",
            lambda: grpc_case(protos=True),
            note="grpc/protos: no reflection on any side",
        ),
        Case("graphql", "one query on the tests' graphql-core server", graphql_case),
    ]


@contextmanager
def http_case() -> Iterator[tuple[dict, Callable[[], Any]]]:
    import httpx

    port = _free_port()
    # The target as examples/target.py serves it, but with Nagle's algorithm off: its handler
    # writes the headers and the body apart, and the delayed ACK of the second write would
    # make every request last 40 ms on both sides, hiding what orchestra costs.
    serve = (
        "from examples.target import make_server\n"
        f"server = make_server(port={port})\n"
        "server.RequestHandlerClass.disable_nagle_algorithm = True\n"
        "server.serve_forever()\n"
    )
    target = subprocess.Popen(
        [sys.executable, "-c", serve],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/health"
    client = httpx.Client()
    try:
        _wait_until(lambda: _answers(client, url), what="examples/target.py")
        step = {"name": "health", "plugin": "http", "with": {"url": url}, "expect": {"status": 200}}
        yield step, lambda: client.get(url).raise_for_status()
    finally:
        client.close()
        target.terminate()
        target.wait(timeout=10)


@contextmanager
def delay_case() -> Iterator[tuple[dict, Callable[[], Any]]]:
    import threading

    # The plain equivalent of a 0 s delay: a wait on an event that is not set.
    event = threading.Event()
    yield {"name": "wait", "plugin": "delay", "with": {"seconds": 0}}, lambda: event.wait(0)


@contextmanager
def sql_case() -> Iterator[tuple[dict, Callable[[], Any]]]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    # psycopg2, the driver the plugin uses for postgresql:// (SQLAlchemy's default is psycopg 3).
    dsn = f"postgresql+psycopg2://postgres@{POSTGRESQL}/postgres"

    def raw() -> None:
        engine = create_engine(dsn, poolclass=NullPool)
        with engine.connect() as connection:
            connection.execute(text("SELECT 1")).all()
        engine.dispose()

    raw()
    step = {
        "name": "select",
        "plugin": "sql",
        "with": {"dsn": dsn, "query": "SELECT 1 AS one"},
        "expect": {"rows": 1},
    }
    yield step, raw


@contextmanager
def redis_case() -> Iterator[tuple[dict, Callable[[], Any]]]:
    import redis

    key = f"orchestra-bench-{uuid.uuid4().hex}"
    seed = redis.Redis.from_url(REDIS_URL)
    seed.set(key, "1")

    def raw() -> None:
        client = redis.Redis(host="127.0.0.1", port=6379, db=0)
        client.get(key)
        client.close()

    try:
        step = {
            "name": "get",
            "plugin": "redis",
            "with": {"url": REDIS_URL, "command": "GET", "args": [key]},
            "expect": {"value": 1},
        }
        yield step, raw
    finally:
        seed.delete(key)
        seed.close()


@contextmanager
def amqp_case() -> Iterator[tuple[dict, Callable[[], Any]]]:
    import amqp
    from kombu import Connection

    vhost, queue = f"orchestra_bench_plugins_{uuid.uuid4().hex[:8]}", "bench"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        url = f"amqp://guest:guest@{RABBITMQ}/{vhost}"
        with Connection(url) as setup:
            setup.default_channel.queue_declare(queue, durable=True, auto_delete=False)

        def raw() -> None:
            # As plugins/amqp connect() and _publish(): a confirming connection per step.
            host, port = RABBITMQ.split(":")
            connection = Connection(
                hostname=host,
                port=int(port),
                userid="guest",
                password="guest",
                virtual_host=vhost,
                transport="pyamqp",
                connect_timeout=30,
                heartbeat=0,
                transport_options={"confirm_publish": True},
            )
            connection.ensure_connection(max_retries=0, reraise_as_library_errors=False)
            try:
                message = amqp.Message(
                    b"1", delivery_mode=2, content_type="text/plain", content_encoding="utf-8"
                )
                connection.channel().basic_publish(
                    message, exchange="", routing_key=queue, mandatory=True, timeout=30
                )
            finally:
                connection.release()

        step = {
            "name": "publish",
            "plugin": "amqp",
            "with": {"url": url, "routing_key": queue, "body": "1"},
        }
        yield step, raw
    finally:
        _rabbitmqctl("delete_vhost", vhost)


@contextmanager
def mqtt_case() -> Iterator[tuple[dict, Callable[[], Any]]]:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    host, port = MOSQUITTO
    topic = f"orchestra-bench/{uuid.uuid4().hex}/step"

    def loop_until(client: mqtt.Client, done: Callable[[], bool]) -> None:
        while not done():
            if client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS and not done():
                raise RuntimeError("MQTT connection lost")

    def raw() -> None:
        # As plugins/mqtt connect() and _publish(): a client per step, its loop in this thread.
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"bench-{uuid.uuid4().hex[:16]}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        answer: list[Any] = []
        client.on_connect = lambda _c, _u, _flags, reason, _props: answer.append(reason)
        client.connect(host, port, keepalive=60)
        try:
            loop_until(client, lambda: bool(answer))
            info = client.publish(topic, "1", qos=1)
            loop_until(client, info.is_published)
        finally:
            client.disconnect()

    raw()
    step = {
        "name": "publish",
        "plugin": "mqtt",
        "with": {"host": host, "port": port, "topic": topic, "payload": "1", "qos": 1},
    }
    yield step, raw


@contextmanager
def websocket_case() -> Iterator[tuple[dict, Callable[[], Any]]]:
    from websockets.sync.client import connect

    with _test_server("WebSocketServer", "url") as base:
        url = f"{base}/echo"

        def raw() -> None:
            # A connection per step, as the plugin's one-step form (url, send, receive) makes.
            with connect(url, proxy=None) as connection:
                connection.send("1")
                connection.recv(timeout=30)

        step = {
            "name": "echo",
            "plugin": "websocket",
            "with": {"url": url, "send": {"text": "1"}, "receive": {"count": 1}},
            "expect": {"count": 1},
        }
        yield step, raw


@contextmanager
def grpc_case(*, protos: bool = False) -> Iterator[tuple[dict, Callable[[], Any]]]:
    import grpc
    from google.protobuf.message_factory import GetMessageClass

    from tests.protocols import GREETER, GREETER_PROTO, _greeter_pool

    method = _greeter_pool().FindServiceByName(GREETER).methods_by_name["SayHello"]
    request_class = GetMessageClass(method.input_type)
    response_class = GetMessageClass(method.output_type)
    with _test_server("GrpcServer", "target") as target:

        def raw() -> None:
            # The plugin's stub call, on a channel per step as the plugin opens, with the
            # descriptors at hand: no reflection.
            with grpc.insecure_channel(target, [("grpc.enable_retries", 0)]) as channel:
                call = channel.unary_unary(
                    f"/{GREETER}/SayHello",
                    request_serializer=request_class.SerializeToString,
                    response_deserializer=response_class.FromString,
                )
                call.future(request_class(name="bench"), timeout=30).result()

        step = {
            "name": "hello",
            "plugin": "grpc",
            "with": {
                "target": target,
                "method": f"{GREETER}/SayHello",
                "request": {"name": "bench"},
                # Found under ORCHESTRA_GRPC_PROTO_ROOT, which main() points at tests/protos.
                **({"protos": [GREETER_PROTO]} if protos else {}),
            },
            "expect": {"code": "OK"},
        }
        yield step, raw


@contextmanager
def graphql_case() -> Iterator[tuple[dict, Callable[[], Any]]]:
    import httpx

    query = '{ user(id: "1") { name } }'
    # Nagle's algorithm off, as for http: the handler writes the headers and the body apart.
    nagle_off = "protocols._GraphqlHandler.disable_nagle_algorithm = True"
    with _test_server("GraphqlServer", "url", nagle_off) as url, httpx.Client() as client:

        def raw() -> None:
            # One pooled client, as the plugin keeps one per process.
            response = client.post(url, json={"query": query})
            response.raise_for_status()
            response.json()

        step = {
            "name": "user",
            "plugin": "graphql",
            "with": {"url": url, "query": query},
            "expect": {"status": 200, "errors": False},
        }
        yield step, raw


def executor_step(step: dict) -> Callable[[], Any]:
    """A function executing ``step`` as a worker does, on an unsaved claim."""
    from runs.executor import _RunExecution
    from runs.leases import Delivery, Lease
    from runs.models import StepStatus
    from runs.states import Claim

    claim = Claim(run_id=0, attempt=1, definition={"steps": [step]}, context={})
    lease = Lease(0, "bench", 1, budget_seconds=3600)
    execution = _RunExecution(0, "bench", claim, lease, Delivery())
    positions = iter(range(10**9))

    def run() -> None:
        record = execution._run_step(next(positions), step, is_cleanup=False)
        if record.status != StepStatus.PASSED:
            raise RuntimeError(f"{step['plugin']} step {record.status}: {record.error}")
        execution.resources.close_all()

    return run


def plugin_call(step: dict) -> Callable[[], Any]:
    """``plugin.execute`` and ``plugin.check`` alone, without the executor around them."""
    from plugins.base import StepContext
    from plugins.registry import get_plugin

    plugin = get_plugin(step["plugin"])
    params, expect = step.get("with", {}), step.get("expect", {})

    def run() -> None:
        context = StepContext(run_id=0, step_name=step["name"], timeout=30)
        if not all(a.passed for a in plugin.check(expect, plugin.execute(params, context))):
            raise RuntimeError(f"{step['plugin']} step failed its expectations")
        context.resources.close_all()

    return run


def timed(call: Callable[[], Any], count: int) -> tuple[list[float], list[float]]:
    """Wall and CPU (this process, all threads) microseconds of each of ``count`` calls."""
    wall, cpu = [], []
    for _ in range(count):
        started, started_cpu = time.perf_counter(), time.process_time()
        call()
        cpu.append((time.process_time() - started_cpu) * 1e6)
        wall.append((time.perf_counter() - started) * 1e6)
    return wall, cpu


def measure(step: dict, raw: Callable[[], Any], steps: int, rounds: int) -> dict[str, Any]:
    """Medians over ``rounds`` interleaved rounds, so a slow phase of the machine hits all sides.

    Wall time is what a run feels; CPU time is what orchestra's Python costs, and is far less
    disturbed by other processes on a busy machine than the wall clock.
    """
    sides = {"orchestra": executor_step(step), "plugin": plugin_call(step), "raw": raw}
    wall: dict[str, list[float]] = {name: [] for name in sides}
    cpu: dict[str, list[float]] = {name: [] for name in sides}
    for call in sides.values():
        timed(call, 20)
    per_round = max(1, steps // rounds)
    for _ in range(rounds):
        for name, call in sides.items():
            wall_us, cpu_us = timed(call, per_round)
            wall[name] += wall_us
            cpu[name] += cpu_us
    median = {name: statistics.median(values) for name, values in wall.items()}
    median_cpu = {name: statistics.median(values) for name, values in cpu.items()}
    overhead = median["orchestra"] - median["raw"]
    overhead_cpu = median_cpu["orchestra"] - median_cpu["raw"]
    return {
        "steps": len(wall["orchestra"]),
        **{f"{name}_us": round(value, 1) for name, value in median.items()},
        **{f"{name}_cpu_us": round(value, 1) for name, value in median_cpu.items()},
        "overhead_us": round(overhead, 1),
        "overhead_cpu_us": round(overhead_cpu, 1),
        # Of the overhead, what the executor adds around the plugin; the rest is the plugin's
        # own work (outbound check, deadline handling, summaries).
        "executor_cpu_us": round(median_cpu["orchestra"] - median_cpu["plugin"], 1),
        "ratio": round(overhead / median["raw"], 3) if median["raw"] > 0 else None,
        "cpu_ratio": round(overhead_cpu / median["raw"], 3) if median["raw"] > 0 else None,
        "within_target": _within_target(overhead, median["raw"]),
        "within_target_cpu": _within_target(overhead_cpu, median["raw"]),
    }


def _within_target(overhead: float, raw: float) -> bool:
    return overhead <= TARGET_US or overhead <= TARGET_RATIO * raw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="steps per plugin and side")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    parser.add_argument("--only", help="comma-separated plugin names")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG (needs matplotlib)")
    args = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestra.settings")
    os.environ.setdefault("SECRET_KEY", "bench-only-not-secret")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ["ORCHESTRA_GRPC_PROTO_ROOT"] = str(ROOT / "tests" / "protos")
    # PostgreSQL and RabbitMQ on localhost are orchestra's own database and broker: a step may
    # reach them only when the operator opens them, as here (the amqp case uses a vhost of its
    # own, not orchestra's, which stays refused).
    os.environ["ORCHESTRA_OUTBOUND_OPEN_INFRASTRUCTURE"] = f"{POSTGRESQL},{RABBITMQ}"
    import django

    django.setup()
    notes = _load_example_plugins()

    wanted = set(args.only.split(",")) if args.only else None
    results: dict[str, dict[str, Any]] = {}
    print(
        f"{'plugin':<11} {'orchestra µs':>13} {'raw µs':>10} {'overhead µs':>12} {'ratio':>7}"
        f" {'overhead cpu µs':>16} {'executor cpu µs':>16} {'cpu ratio':>10}"
    )
    for case in cases():
        if wanted is not None and case.plugin not in wanted:
            continue
        try:
            with ExitStack() as stack:
                step, raw = stack.enter_context(case.setup())
                result = measure(step, raw, args.steps, args.rounds)
        except Exception as exc:  # a missing server or library skips that plugin only
            notes.append(f"{case.plugin} skipped: {type(exc).__name__}: {exc}")
            continue
        results[case.plugin] = {"what": case.what, **result}
        if case.note:
            notes.append(case.note)
        print(
            f"{case.plugin:<11} {result['orchestra_us']:>13,.1f} {result['raw_us']:>10,.1f} "
            f"{result['overhead_us']:>12,.1f} {_percent(result['ratio']):>7}"
            f" {result['overhead_cpu_us']:>16,.1f} {result['executor_cpu_us']:>16,.1f}"
            f" {_percent(result['cpu_ratio']):>10}"
            f"{'' if result['within_target_cpu'] else '  (over target)'}",
            flush=True,
        )
    for note in notes:
        print(note)
    if args.plot and results:
        bar_chart(
            args.plot,
            [
                (
                    "orchestra's overhead per step, CPU (target: 200)",
                    "µs (median)",
                    {name: r["overhead_cpu_us"] for name, r in results.items()},
                ),
                (
                    "overhead / raw call, CPU (target: 20)",
                    "% (calls over 100 µs)",
                    {
                        name: 100 * r["cpu_ratio"]
                        for name, r in results.items()
                        if r["cpu_ratio"] is not None and r["raw_us"] >= 100
                    },
                ),
            ],
            rotate_labels=True,
        )
    summary = {"bench": "plugins", "steps": args.steps, "results": results, "notes": notes}
    print(json.dumps(summary), flush=True)
    return 0


def _load_example_plugins() -> list[str]:
    """The example redis plugin, from its source tree when it is not installed."""
    from plugins.registry import installed_plugins

    plugins = installed_plugins()
    if "redis" in plugins:
        return []
    sys.path.insert(0, str(ROOT / "examples" / "plugins" / "redis"))
    try:
        from orchestra_redis import RedisPlugin
    except ImportError as exc:
        return [f"redis skipped: {exc}"]
    # The registry's cached table is what the executor reads: the plugin is used as installed.
    plugins["redis"] = RedisPlugin()
    return ["redis: loaded from examples/plugins/redis (not installed)"]


def _percent(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.1%}"


@contextmanager
def _test_server(name: str, attribute: str, prepare: str = "") -> Iterator[str]:
    """The server ``name`` of tests/protocols.py in a subprocess of its own, its threads' CPU out
    of this process's; ``prepare`` runs first. Yields the server's ``attribute`` (url, target)."""
    serve = (
        "import sys, django\n"
        "django.setup()\n"
        "import tests.protocols as protocols\n"
        f"{prepare}\n"
        f"print(protocols.{name}().{attribute}, flush=True)\n"
        "sys.stdin.read()\n"  # serve until the bench closes the pipe
    )
    process = subprocess.Popen(
        [sys.executable, "-c", serve],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        address = process.stdout.readline().strip()
        if not address:
            raise RuntimeError(f"tests.protocols.{name} did not start")
        yield address
    finally:
        process.stdin.close()
        process.terminate()
        process.wait(timeout=10)


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, check=True)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(client: Any, url: str) -> bool:
    try:
        return client.get(url).status_code == 200
    except Exception:  # not listening yet
        return False


def _wait_until(predicate: Callable[[], bool], *, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer within {timeout:g} s")
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
