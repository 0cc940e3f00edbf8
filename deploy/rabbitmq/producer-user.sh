#!/bin/sh
# Create (or update) the RabbitMQ user an external queue producer gets: it may publish to the exchange
# gridloop.upstream and nothing else. It cannot declare or delete anything (configure ^$), publish to
# any other exchange (gridloop.devices included, so no device.action.* around the scheduler), nor read
# or consume any queue (read ^$). The services keep their own user with configure/write/read.
#
#   PRODUCER_PASSWORD=... ./deploy/rabbitmq/producer-user.sh
#
# Environment: PRODUCER_PASSWORD (required), PRODUCER_USER (gridloop-producer), RABBITMQ_VHOST (/),
# RABBITMQ_NODE (the local node when empty; rabbit@<host> for a remote one, which needs its Erlang
# cookie). Run it where rabbitmqctl reaches the broker: `docker compose` runs it as the one-shot service
# rabbitmq-producer-user; on Kubernetes, in a broker pod (deploy/k8s/README.md).
# tests/deploy checks these permissions; tests/deploy/test_producer_user.py runs this script on a real broker.
set -eu

user="${PRODUCER_USER:-gridloop-producer}"
vhost="${RABBITMQ_VHOST:-/}"
password="${PRODUCER_PASSWORD:?set PRODUCER_PASSWORD to the producer user's password}"

rabbitmqctl_() {
    if [ -n "${RABBITMQ_NODE:-}" ]; then
        rabbitmqctl -q --node "$RABBITMQ_NODE" "$@"
    else
        rabbitmqctl -q "$@"
    fi
}

if rabbitmqctl_ list_users --no-table-headers | cut -f1 | grep -qx -- "$user"; then
    rabbitmqctl_ change_password "$user" "$password"
else
    rabbitmqctl_ add_user "$user" "$password"
fi
rabbitmqctl_ set_user_tags "$user"
#                                        configure  write                  read
rabbitmqctl_ set_permissions -p "$vhost" "$user" '^$' '^gridloop\.upstream$' '^$'
echo "RabbitMQ user $user: publish to gridloop.upstream on vhost $vhost, nothing else"
