#!/usr/bin/env bash
# orchestra demo: set up the database and an admin user, start every process in the background,
# run the sample scenario and print where to look.
#
#   scripts/demo.sh          start (stopping an earlier demo first); `make demo` runs this
#   scripts/demo.sh stop     stop what the demo started; `make stop` runs this
#   scripts/demo.sh status   show which demo processes are running
#
# PostgreSQL and RabbitMQ must be running already (`make services`). Each process runs in its own
# session (so its own process group) with its pid in .run/<name>.pid and its output in
# .run/<name>.log; `stop` signals whole process groups, which takes gunicorn's and Celery's
# child processes down with their parents.
set -euo pipefail
set +m # no job control: a background job stays a plain child, so setsid need not fork

cd "$(dirname "$0")/.."
ROOT=$PWD
RUN_DIR=$ROOT/.run
BIN=$ROOT/.venv/bin
NAMES=(target web worker beat flower) # start order; stopped in reverse

WEB_ADDR=127.0.0.1:8000
TARGET_PORT=8081
FLOWER_PORT=5555
ADMIN_USER=admin
# Seconds each process may take to answer, and the sample run to finish.
STARTUP_TIMEOUT=${DEMO_STARTUP_TIMEOUT:-60}
RUN_TIMEOUT=${DEMO_RUN_TIMEOUT:-120}

# A local, single-user demo: DEBUG gives localhost ALLOWED_HOSTS and plain-HTTP cookies. Never
# use these settings for anything reachable from elsewhere. The rest comes from the .env file
# the demo writes when there is none (write_env_file), which manage.py and celery read later too.
ENV_FILE=${ORCHESTRA_ENV_FILE:-$ROOT/.env}
# The demo's own RabbitMQ vhost: a second orchestra on this machine (another checkout, the test
# suite) uses another one, so neither takes the other's messages.
DEMO_VHOST=orchestra_demo
export DJANGO_SETTINGS_MODULE=orchestra.settings
export DJANGO_DEBUG=true
export PYTHONUNBUFFERED=1
# Quick re-runs, so the flaky scenario's three starts take seconds, not minutes.
export ORCHESTRA_QUEUE_RETRY_BASE_SECONDS=${ORCHESTRA_QUEUE_RETRY_BASE_SECONDS:-1}
export ORCHESTRA_SWEEP_INTERVAL_SECONDS=${ORCHESTRA_SWEEP_INTERVAL_SECONDS:-1}
WORKER_NODE=demo-worker@$(uname -n) # what Celery's %h expands to
# The order flow's shop (examples/order-flow.yaml): a database and a vhost of its own, on the
# same servers as orchestra's. The workers get them as credentials, and the outbound policy is
# opened for those two servers, which it refuses by default as orchestra's infrastructure.
SHOP=orchestra_shop
SHOP_DB=postgresql://postgres@127.0.0.1:5432/$SHOP
SHOP_EVENTS=amqp://guest:guest@127.0.0.1:5672/$SHOP

say() { printf '==> %s\n' "$*"; }
fail() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}
manage() { "$BIN/python" manage.py "$@"; }

# --- process bookkeeping -----------------------------------------------------------------------

pid_of() { # the recorded pid (= process group id) of a demo process, if its group still exists
  local file=$RUN_DIR/$1.pid pid
  [[ -f $file ]] || return 1
  pid=$(<"$file")
  [[ $pid =~ ^[0-9]+$ ]] && pgrep -g "$pid" >/dev/null 2>&1 && echo "$pid"
}

stop_one() {
  local name=$1 pid
  if pid=$(pid_of "$name"); then
    say "stopping $name (process group $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || true
    # Celery's warm shutdown waits for running tasks; give it a while, then insist.
    for _ in $(seq 1 60); do
      pgrep -g "$pid" >/dev/null 2>&1 || break
      sleep 0.25
    done
    if pgrep -g "$pid" >/dev/null 2>&1; then
      say "$name did not stop within 15s; killing it"
      kill -KILL -- "-$pid" 2>/dev/null || true
      sleep 0.2
    fi
  fi
  rm -f "$RUN_DIR/$name.pid"
}

stop_all() {
  local i
  for ((i = ${#NAMES[@]} - 1; i >= 0; i--)); do stop_one "${NAMES[i]}"; done
  rm -f "$RUN_DIR/credentials"
}

status() {
  local name pid
  for name in "${NAMES[@]}"; do
    if pid=$(pid_of "$name"); then
      printf '%-7s running (process group %s)\n' "$name" "$pid"
    else
      printf '%-7s not running\n' "$name"
    fi
  done
}

start() { # start NAME COMMAND...: in its own session, detached from the terminal
  local name=$1
  shift
  : >"$RUN_DIR/$name.log"
  # setsid makes the process a session and process group leader, so its pid is the group id.
  setsid nohup "$@" >>"$RUN_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/$name.pid"
}

startup_failed() {
  local name=$1 reason=$2
  printf '\nerror: %s %s\n--- last lines of .run/%s.log ---\n' "$name" "$reason" "$name" >&2
  tail -n 40 "$RUN_DIR/$name.log" >&2 || true
  printf -- '---\n' >&2
  stop_all
  exit 1
}

wait_until() { # wait_until NAME DESCRIPTION CHECK...: poll CHECK until it passes or time is up
  local name=$1 what=$2 deadline=$((SECONDS + STARTUP_TIMEOUT))
  shift 2
  until "$@" >/dev/null 2>&1; do
    if [[ -f $RUN_DIR/$name.pid ]] && ! pid_of "$name" >/dev/null; then
      startup_failed "$name" "exited during start-up"
    fi
    ((SECONDS < deadline)) || startup_failed "$name" "did not answer ($what) within ${STARTUP_TIMEOUT}s"
    sleep 0.5
  done
  say "$name is up ($what)"
}

ensure_vhost() { # ensure_vhost NAME: create the RabbitMQ vhost and give guest every right on it
  rabbitmqctl -q list_vhosts | grep -xF "$1" >/dev/null || rabbitmqctl -q add_vhost "$1"
  rabbitmqctl -q set_permissions -p "$1" guest '.*' '.*' '.*'
}

write_env_file() { # the demo's settings, unless a settings file exists already
  if [[ -e $ENV_FILE ]]; then
    say "settings: $ENV_FILE (kept as it is)"
    return
  fi
  say "writing the demo's settings to $ENV_FILE (manage.py and celery read it; see .env.example)"
  local secret
  secret=$("$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(50))')
  (
    umask 077
    cat >"$ENV_FILE" <<EOF
# Written by scripts/demo.sh for a local, single-user demo; every setting: .env.example.
DJANGO_DEBUG=true
SECRET_KEY=$secret
CELERY_BROKER_URL=amqp://guest:guest@127.0.0.1:5672/$DEMO_VHOST
DATABASE_URL=postgres://postgres@127.0.0.1:5432/orchestra
ORCHESTRA_QUEUE_RETRY_BASE_SECONDS=1
ORCHESTRA_SWEEP_INTERVAL_SECONDS=1
EOF
  )
}

# --- readiness checks --------------------------------------------------------------------------

http_status() { # http_status URL [USER:PASSWORD]: print the HTTP status code (000: no answer)
  # Python rather than curl, which a fresh machine may lack; the password goes in the
  # environment, not on a command line.
  DEMO_BASIC_AUTH=${2:-} "$BIN/python" - "$1" <<'EOF'
import base64, os, sys, urllib.error, urllib.request
request = urllib.request.Request(sys.argv[1])
if os.environ["DEMO_BASIC_AUTH"]:
    credentials = base64.b64encode(os.environ["DEMO_BASIC_AUTH"].encode()).decode()
    request.add_header("Authorization", f"Basic {credentials}")
try:
    with urllib.request.urlopen(request, timeout=3) as response:
        print(response.status)
except urllib.error.HTTPError as exc:
    print(exc.code)
except Exception:
    print("000")
EOF
}
http_is() { [[ $(http_status "$2" "${3:-}") == "$1" ]]; }
celery_node_answers() { "$BIN/celery" -A orchestra inspect ping -d "$1" --timeout 2; }
port_taken() { (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

check_broker() { # declare orchestra's queues as the worker will, and explain a mismatch
  "$BIN/python" - <<'EOF'
import sys

from amqp.exceptions import PreconditionFailed

from celeryconfig import dead_letter_queue, task_queues
from orchestra.celery import app

with app.connection_for_write() as connection:
    try:
        connection.ensure_connection(max_retries=2)
    except Exception as exc:
        sys.exit(f"cannot reach RabbitMQ at {connection.as_uri()}: {exc} (try 'make services')")
    vhost = connection.virtual_host
    for queue in [*task_queues, dead_letter_queue]:
        try:
            queue(connection.channel()).declare()
        except PreconditionFailed as exc:
            sys.exit(
                f"RabbitMQ already has the queue {queue.name!r} (vhost {vhost!r}) with other "
                f"arguments than celeryconfig.py gives it (left by an older version?):\n  {exc}\n"
                "If it holds nothing you need, delete it and run the demo again:\n"
                f"  rabbitmqctl delete_queue -p '{vhost}' {queue.name}"
            )
EOF
}

# --- the demo ----------------------------------------------------------------------------------

demo() {
  command -v setsid >/dev/null || fail "setsid is required (apt-get install util-linux)"
  [[ -x $BIN/python ]] || fail ".venv is missing; run 'make install' (or 'make demo')"
  mkdir -p "$RUN_DIR"
  stop_all

  local port
  for port in "${WEB_ADDR##*:}" "$FLOWER_PORT"; do
    port_taken "$port" && fail "port $port is in use by another program; stop it and retry"
  done

  write_env_file
  say "RabbitMQ vhost '$DEMO_VHOST'"
  ensure_vhost "$DEMO_VHOST" ||
    fail "cannot create the vhost '$DEMO_VHOST' (is RabbitMQ running? 'make services')"

  say "checking RabbitMQ"
  check_broker || fail "RabbitMQ is not ready for orchestra (see above)"

  say "migrating the database"
  manage migrate --noinput >"$RUN_DIR/migrate.log" 2>&1 ||
    {
      tail -n 40 "$RUN_DIR/migrate.log" >&2
      fail "migrate failed (is PostgreSQL running? 'make services')"
    }
  # /static/ is served by gunicorn from the apps' static folders (see web below), so the
  # demo needs no collectstatic; a deployment runs `manage.py collectstatic` for its web server.

  say "creating the superuser '$ADMIN_USER' and its API token"
  local password token
  password=$("$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(12))')
  # The password travels in the environment, never on a command line that `ps` shows.
  token=$(DEMO_ADMIN_PASSWORD=$password manage shell --no-imports -c "
import os
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
user, _ = get_user_model().objects.get_or_create(username='$ADMIN_USER')
user.is_active = user.is_staff = user.is_superuser = True
user.set_password(os.environ['DEMO_ADMIN_PASSWORD'])
user.save()
print(Token.objects.get_or_create(user=user)[0].key)
" | tail -n 1)
  (
    umask 077
    printf 'admin user: %s\nadmin password: %s\nAPI token: %s\n' \
      "$ADMIN_USER" "$password" "$token" >"$RUN_DIR/credentials"
  )

  if port_taken "$TARGET_PORT"; then
    http_is 200 "http://127.0.0.1:$TARGET_PORT/health" ||
      fail "port $TARGET_PORT is in use by something that is not examples/target.py"
    say "target: examples/target.py already answers on port $TARGET_PORT (not started by the demo); using it"
  else
    say "the shop of the order flow: database and RabbitMQ vhost '$SHOP'"
    bash scripts/services.sh "$SHOP" >/dev/null
    ensure_vhost "$SHOP"
    start target "$BIN/python" examples/target.py --port "$TARGET_PORT" \
      --shop-database "$SHOP_DB" --shop-events "$SHOP_EVENTS"
    wait_until target "http://127.0.0.1:$TARGET_PORT/health" \
      http_is 200 "http://127.0.0.1:$TARGET_PORT/health"
  fi

  # gunicorn does not serve static files, and Django serves them only under runserver; this
  # config wraps the app in Django's StaticFilesHandler (what runserver does) for the demo.
  cat >"$RUN_DIR/gunicorn.conf.py" <<'EOF'
# Written by scripts/demo.sh: serve /static/ (admin CSS and JS) from the apps, like runserver.
def post_worker_init(worker):
    from django.contrib.staticfiles.handlers import StaticFilesHandler

    worker.wsgi = StaticFilesHandler(worker.wsgi)
EOF
  start web "$BIN/gunicorn" orchestra.wsgi:application --bind "$WEB_ADDR" --workers 2 \
    --config "$RUN_DIR/gunicorn.conf.py" --access-logfile - --error-logfile -
  wait_until web "admin login page" http_is 200 "http://$WEB_ADDR/admin/login/"
  http_is 200 "http://$WEB_ADDR/static/admin/css/base.css" ||
    startup_failed web "does not serve /static/admin/css/base.css"

  ORCHESTRA_CREDENTIAL_SHOP_DB=$SHOP_DB ORCHESTRA_CREDENTIAL_SHOP_EVENTS=$SHOP_EVENTS \
    ORCHESTRA_OUTBOUND_OPEN_INFRASTRUCTURE=127.0.0.1:5432,127.0.0.1:5672 \
    start worker "$BIN/celery" -A orchestra worker -c 2 -Q test_runs_queue,orchestra_control -E \
    -n "$WORKER_NODE" --loglevel=INFO
  wait_until worker "celery inspect ping $WORKER_NODE" celery_node_answers "$WORKER_NODE"

  # Beat is not given remote control: it would answer pings and count as a worker in Flower
  # and /api/health/. It is up once it logs that it starts scheduling.
  start beat "$BIN/celery" -A orchestra beat -S django_celery_beat.schedulers:DatabaseScheduler \
    --loglevel=INFO
  wait_until beat "scheduler started" grep -q "beat: Starting" "$RUN_DIR/beat.log"

  # Flower reads FLOWER_BASIC_AUTH like --basic-auth=user:password, but the environment keeps
  # the password out of the process list.
  FLOWER_BASIC_AUTH=$ADMIN_USER:$password start flower "$BIN/celery" -A orchestra flower \
    --address=127.0.0.1 --port="$FLOWER_PORT"
  wait_until flower "http://127.0.0.1:$FLOWER_PORT/ with basic auth" \
    http_is 200 "http://127.0.0.1:$FLOWER_PORT/" "$ADMIN_USER:$password"
  http_is 401 "http://127.0.0.1:$FLOWER_PORT/" ||
    startup_failed flower "answers without authentication"

  say "loading the sample scenarios (manage.py import_scenarios examples)"
  manage import_scenarios examples || fail "a sample scenario in examples/ was refused (see above)"

  say "running examples/create-and-fetch-user.yaml (manage.py run_scenario --wait)"
  local run_ok=true
  manage run_scenario examples/create-and-fetch-user.yaml --wait --timeout "$RUN_TIMEOUT" ||
    run_ok=false

  say "running examples/order-flow.yaml: the API, the row in PostgreSQL, the event on RabbitMQ"
  manage run_scenario examples/order-flow.yaml --wait --timeout "$RUN_TIMEOUT" || run_ok=false

  say "through the scenario queue: 3 launches in one lane, another scenario in parallel, a flaky one"
  "$BIN/python" scripts/demo_story.py --timeout "$RUN_TIMEOUT" \
    --target "http://127.0.0.1:$TARGET_PORT" || run_ok=false

  local web=http://$WEB_ADDR
  cat <<EOF

orchestra demo is running; stop it with 'make stop'. Logs: .run/*.log

  Admin    $web/admin/          user $ADMIN_USER, password $password
  API      $web/api/            header  Authorization: Token $token
           $web/api/docs/       Swagger UI, $web/api/redoc/ ReDoc (the schema is at /api/schema/)
           curl -H 'Authorization: Token $token' $web/api/runs/
  Flower   http://127.0.0.1:$FLOWER_PORT/          user $ADMIN_USER, password $password
  Target   http://127.0.0.1:$TARGET_PORT/          the sample system under test (examples/target.py)

  The credentials are also in .run/credentials (readable only by you). The settings are in
  $ENV_FILE: manage.py and celery read them in any shell. RabbitMQ vhost: $DEMO_VHOST.
EOF
  if [[ $run_ok != true ]]; then
    printf '\nerror: the sample run did not pass; last lines of .run/worker.log:\n' >&2
    tail -n 30 "$RUN_DIR/worker.log" >&2
    exit 1
  fi
}

case "${1:-start}" in
  start) demo ;;
  stop) stop_all ;;
  status) status ;;
  *)
    echo "usage: $0 [start|stop|status]" >&2
    exit 2
    ;;
esac
