#!/usr/bin/env bash
# Make sure uv, PostgreSQL and RabbitMQ are there: install uv if missing, start the servers if down.
# Idempotent; used by `make up`, `make test` and .ci/run.
set -euo pipefail

log() { printf 'ensure-infrastructure: %s\n' "$*"; }

if ! command -v uv >/dev/null 2>&1; then
  log "installing uv from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check uv
  hash -r
fi

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if ! pg_up; then
  log "PostgreSQL is down; starting it"
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  fi
fi
for _ in $(seq 1 60); do pg_up && break; sleep 1; done
pg_up || { log "PostgreSQL did not come up on 127.0.0.1:5432"; exit 1; }

rabbit_up() { rabbitmq-diagnostics -q check_port_connectivity >/dev/null 2>&1; }
if ! rabbit_up; then
  log "RabbitMQ is down; starting it"
  rabbitmq-server -detached || true
  for _ in $(seq 1 90); do rabbit_up && break; sleep 1; done
fi
rabbit_up || { log "RabbitMQ did not come up on 127.0.0.1:5672"; exit 1; }
log "uv $(uv --version | cut -d' ' -f2), PostgreSQL and RabbitMQ are up"
