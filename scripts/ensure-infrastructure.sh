#!/usr/bin/env bash
# Make sure uv, promtool, PostgreSQL and RabbitMQ are there: install uv and promtool if missing, start the
# servers if down.
# Idempotent; used by `make up`, `make test` and .ci/run.
set -euo pipefail

log() { printf 'ensure-infrastructure: %s\n' "$*"; }

if ! command -v uv >/dev/null 2>&1; then
  log "installing uv from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check uv
  hash -r
fi

# The tests lint every service's /metrics with promtool. Debian ships it in the package prometheus, whose
# installation may start a Prometheus server (where init scripts run): only the tool is wanted, so the
# server is stopped and disabled again.
if ! command -v promtool >/dev/null 2>&1; then
  log "installing promtool (Debian package prometheus)"
  as_root=()
  [ "$(id -u)" -eq 0 ] || as_root=(sudo)
  install_prometheus() {
    DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -q --no-install-recommends prometheus >/dev/null
  }
  install_prometheus || { "${as_root[@]}" apt-get update -q >/dev/null && install_prometheus; } \
    || { log "could not install promtool (apt-get install prometheus)"; exit 1; }
  if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled --quiet prometheus 2>/dev/null; then
    "${as_root[@]}" systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
  if command -v service >/dev/null 2>&1; then
    "${as_root[@]}" service prometheus stop >/dev/null 2>&1 || true
  fi
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
log "uv $(uv --version | cut -d' ' -f2), promtool, PostgreSQL and RabbitMQ are up"
