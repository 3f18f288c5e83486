"""REST API latency under load: ``POST /api/runs/`` and ``GET /api/runs/``, served by gunicorn,
beside a plain Django view doing the same INSERT and publish.

gunicorn (``--workers 4``, sync workers) serves orchestra with production settings (DEBUG off,
HTTPS expected: the clients send ``X-Forwarded-Proto: https`` as a TLS-terminating proxy would),
plus ``POST /bench/plain-runs/`` (``bench/api_peer_urls.py``, served only here through
``bench/api_peer_settings.py``). 50 concurrent clients (asyncio + httpx, one keep-alive
connection each) send requests for a fixed time per phase; each request's latency is recorded.
Then one client sends requests one after the other (``single``): one request's latency alone.
No worker consumes the started runs (they stay QUEUED; their messages are purged at the end), so
the figures are the API's own: authentication, throttle, validation, the run INSERT, the publish
to RabbitMQ, the response.

    .venv/bin/python bench/api_latency.py [--clients 50] [--seconds 10] [--repeat 3] [--quick]

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

# Run as a script, bench/ comes first on sys.path, where bench/queue.py would shadow the standard
# library's queue module; the repository root takes its place.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.plotting import bar_chart  # noqa: E402
from bench.throughput import (  # noqa: E402 - the line above makes the package importable
    ROOT,
    Broker,
    ensure_database,
    ensure_vhost,
    log,
    migrate,
    percentile,
    spread,
)

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/orchestra_bench_api"
DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/orchestra_bench_api"
DEFINITION = {"steps": [{"name": "wait", "plugin": "delay", "with": {"seconds": 0}}]}
SCENARIO = "bench-api"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


#: The request kinds: orchestra's POST and GET, and the plain view's POST.
KINDS = ("POST", "GET", "plain")


async def phase(base: str, token: str, method: str, clients: int, seconds: float) -> dict:
    """``clients`` concurrent loops of one request kind of :data:`KINDS` for ``seconds``;
    latency figures."""
    import httpx

    headers = {"Authorization": f"Token {token}", "X-Forwarded-Proto": "https"}
    body = {"scenario": SCENARIO, "payload": {"customer": "c-1"}, "priority": "normal"}
    latencies: list[float] = []
    errors: dict[int, int] = {}
    stop_at = time.monotonic() + seconds

    async def client() -> None:
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                if method == "POST":
                    response = await http.post("/api/runs/", json=body)
                elif method == "plain":
                    response = await http.post("/bench/plain-runs/", json=body)
                else:
                    response = await http.get("/api/runs/", params={"limit": 50})
                latencies.append((time.perf_counter() - started) * 1000)
                if response.status_code not in (200, 201):
                    errors[response.status_code] = errors.get(response.status_code, 0) + 1

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.monotonic() - started
    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "requests_per_s": round(len(ordered) / elapsed, 1),
        "p50_ms": round(percentile(ordered, 50), 1),
        "p99_ms": round(percentile(ordered, 99), 1),
        "errors": errors,
    }


def wait_until_serving(url: str, process: subprocess.Popen, log_path: Path) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited:\n{log_path.read_text()[-3000:]}")
        try:
            httpx.get(f"{url}/api/health/", headers={"X-Forwarded-Proto": "https"}, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("gunicorn did not answer within 60 s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--gunicorn-workers", type=int, default=4)
    parser.add_argument(
        "--single-seconds", type=float, default=3, help="time of each one-client phase"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 10 clients, 2 s")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG (needs matplotlib)")
    parser.add_argument(
        "--database-url", default=os.environ.get("BENCH_API_DATABASE_URL", DEFAULT_DATABASE_URL)
    )
    parser.add_argument(
        "--broker-url", default=os.environ.get("BENCH_API_BROKER_URL", DEFAULT_BROKER_URL)
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.seconds, args.repeat, args.single_seconds = 10, 2, 1, 1
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    env = {
        **os.environ,
        "DATABASE_URL": args.database_url,
        "CELERY_BROKER_URL": args.broker_url,
        "SECRET_KEY": os.environ.get("SECRET_KEY") or "bench-only-not-a-secret-" + "x" * 40,
        "DJANGO_DEBUG": "false",
        "ALLOWED_HOSTS": "127.0.0.1",
        "ORCHESTRA_API_WRITE_RATE": "1000000/minute",
        "LOG_LEVEL": "WARNING",
        "DJANGO_SETTINGS_MODULE": "bench.api_peer_settings",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    os.environ.update(env)
    ensure_database(args.database_url)
    ensure_vhost(args.broker_url)
    migrate(env)

    import django

    django.setup()
    from django.contrib.auth.models import Group, User
    from django.db import connection
    from rest_framework.authtoken.models import Token

    from celeryconfig import dead_letter_queue, task_queues
    from runs.services import scenario_save

    scenario_save(name=SCENARIO, definition=DEFINITION)
    user, _ = User.objects.get_or_create(username="bench-api")
    user.groups.add(Group.objects.get(name="operators"))
    token = Token.objects.get_or_create(user=user)[0].key

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    samples: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    single: dict[str, list[dict]] = {"POST": [], "plain": []}
    with ExitStack() as stack:
        broker = Broker(args.broker_url)
        stack.callback(broker.close)
        broker.purge([*task_queues, dead_letter_queue])
        stack.callback(broker.purge, [*task_queues, dead_letter_queue])
        log_path = Path(tempfile.mkstemp(prefix="bench-gunicorn-", suffix=".log")[1])
        process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "gunicorn"),
                "orchestra.wsgi:application",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                str(args.gunicorn_workers),
                "--backlog",
                "512",
            ],
            cwd=ROOT,
            env=env,
            stdout=log_path.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        stack.callback(lambda: (os.killpg(process.pid, signal.SIGTERM), process.wait(20)))
        wait_until_serving(base, process, log_path)
        log(f"gunicorn serving on {base} with {args.gunicorn_workers} workers")
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE runs_stepresult, runs_testrun CASCADE")
        for method in KINDS:  # warm-up, not counted: every gunicorn worker imports and connects
            asyncio.run(phase(base, token, method, args.clients, 1))
        for repetition in range(1, args.repeat + 1):
            for method in KINDS:
                sample = asyncio.run(phase(base, token, method, args.clients, args.seconds))
                samples[method].append(sample)
                log(f"[{repetition}/{args.repeat}] {method:<5} {sample}")
            for method in single:
                sample = asyncio.run(phase(base, token, method, 1, args.single_seconds))
                single[method].append(sample)
                log(f"[{repetition}/{args.repeat}] {method:<5} one client {sample}")
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE runs_stepresult, runs_testrun CASCADE")

    result = {"bench": "api_latency", "clients": args.clients, "seconds": args.seconds}
    for method, rows in samples.items():
        result[method] = {
            key: spread([row[key] for row in rows])
            for key in ("requests_per_s", "p50_ms", "p99_ms")
        }
        result[method]["errors"] = sum(sum(row["errors"].values()) for row in rows)
    result["single"] = {
        method: {key: spread([row[key] for row in rows]) for key in ("p50_ms", "p99_ms")}
        for method, rows in single.items()
    }
    result["single"]["errors"] = sum(
        sum(row["errors"].values()) for rows in single.values() for row in rows
    )
    api, plain = result["POST"]["requests_per_s"], result["plain"]["requests_per_s"]
    result["post_vs_plain"] = round(api["median"] / plain["median"], 2) if plain["median"] else None
    for method in samples:
        figures = result[method]
        what = "POST /bench/plain-runs/" if method == "plain" else f"{method} /api/runs/"
        log(
            f"{what} with {args.clients} clients: p50"
            f" {figures['p50_ms']['median']} ms, p99 {figures['p99_ms']['median']} ms,"
            f" {figures['requests_per_s']['median']} requests/s, errors {figures['errors']}"
        )
    for method in single:
        figures = result["single"][method]
        log(
            f"{method} alone (one client): p50 {figures['p50_ms']['median']} ms,"
            f" p99 {figures['p99_ms']['median']} ms"
        )
    log(f"API POST throughput / plain view's: {result['post_vs_plain']} (target >= 0.7)")
    if args.plot:
        bar_chart(
            args.plot,
            [
                (
                    f"{'POST /bench/plain-runs/' if method == 'plain' else method + ' /api/runs/'},"
                    f" {args.clients} clients",
                    "latency, ms",
                    {key[:-3]: result[method][key]["median"] for key in ("p50_ms", "p99_ms")},
                )
                for method in samples
            ],
        )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
