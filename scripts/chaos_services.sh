#!/usr/bin/env bash
# A PostgreSQL cluster and a RabbitMQ node of the fault-injection suite's own, so that `make chaos`
# can restart them without touching the shared services other test sessions use.
#
#   scripts/chaos_services.sh start   start both (in .run/chaos/), print the environment to use
#   scripts/chaos_services.sh stop    stop both and delete their data
#
# PostgreSQL listens on 127.0.0.1:55432 (trust), RabbitMQ on 127.0.0.1:5673 as node
# orchestra-chaos@localhost, with a 5 s consumer_timeout (checked every second) for the long-step
# fault.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=$PWD/.run/chaos
PG_BIN=/usr/lib/postgresql/$(ls /usr/lib/postgresql | sort -n | tail -n1)/bin
PG_PORT=55432
export RABBITMQ_NODENAME=orchestra-chaos@localhost
export RABBITMQ_NODE_PORT=5673
export RABBITMQ_DIST_PORT=25673
export RABBITMQ_MNESIA_BASE=$DIR/rabbitmq/mnesia
export RABBITMQ_LOG_BASE=$DIR/rabbitmq/log
export RABBITMQ_PID_FILE=$DIR/rabbitmq/pid
export RABBITMQ_ENABLED_PLUGINS_FILE=$DIR/rabbitmq/enabled_plugins
export RABBITMQ_CONFIG_FILE=$DIR/rabbitmq/rabbitmq
export RABBITMQ_ADVANCED_CONFIG_FILE=$DIR/rabbitmq/advanced.config

start() {
  stop >/dev/null 2>&1 || true
  mkdir -p "$DIR/rabbitmq/log" "$DIR/rabbitmq/mnesia" "$DIR/pg"
  chown postgres "$DIR/pg"
  runuser -u postgres -- "$PG_BIN/initdb" -D "$DIR/pg/data" --auth=trust -U postgres >/dev/null
  # In the configuration, not on pg_ctl's command line: the suite restarts the server itself.
  printf "port = %s\nunix_socket_directories = '%s'\nlisten_addresses = '127.0.0.1'\nmax_connections = 200\n" \
    "$PG_PORT" "$DIR/pg" >>"$DIR/pg/data/postgresql.conf"
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$DIR/pg/data" -l "$DIR/pg/log" -w start >/dev/null

  echo "[]." >"$RABBITMQ_ENABLED_PLUGINS_FILE"
  printf 'consumer_timeout = 5000\nlisteners.tcp.default = 127.0.0.1:%s\n' "$RABBITMQ_NODE_PORT" \
    >"$RABBITMQ_CONFIG_FILE.conf"
  # The consumer timeout is enforced on the channel's tick, once a minute by default: tick every
  # second so that a step outliving the timeout really loses its delivery.
  echo "[{rabbit, [{channel_tick_interval, 1000}]}]." >"$RABBITMQ_ADVANCED_CONFIG_FILE"
  chown -R rabbitmq "$DIR/rabbitmq" # the server runs as the rabbitmq user
  rabbitmq-server -detached >/dev/null 2>&1
  for _ in $(seq 1 120); do rabbitmqctl -q ping >/dev/null 2>&1 && break; sleep 0.5; done
  rabbitmqctl -q await_startup --timeout 120 >/dev/null
  cat <<ENV
export RABBITMQ_NODENAME=$RABBITMQ_NODENAME
export CHAOS_PGDATA=$DIR/pg/data
export CHAOS_PG_CTL=$PG_BIN/pg_ctl
export ORCHESTRA_TEST_ID=chaos
export DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/postgres
export CELERY_BROKER_URL=amqp://guest:guest@127.0.0.1:$RABBITMQ_NODE_PORT/orchestra_test_chaos
ENV
}

stop() {
  rabbitmqctl -q stop >/dev/null 2>&1 || true
  if [[ -f $DIR/pg/data/postmaster.pid ]]; then
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$DIR/pg/data" -m immediate -w stop >/dev/null || true
  fi
  rm -rf "$DIR"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
