#!/bin/sh
# RabbitMQ container start (docker-compose.yml, cluster profile): the nodes' shared Erlang
# cookie from the environment (.env: RABBITMQ_ERLANG_COOKIE), written where the server
# and its CLI tools read it, then the image's own entrypoint. Changing the cookie means
# restarting every node.
set -eu
if [ -z "${RABBITMQ_ERLANG_COOKIE:-}" ]; then
  echo "rabbitmq: set RABBITMQ_ERLANG_COOKIE in .env (the same long random secret for every node)" >&2
  exit 2
fi
cookie=/var/lib/rabbitmq/.erlang.cookie
umask 077
printf '%s' "$RABBITMQ_ERLANG_COOKIE" > "$cookie"
chown rabbitmq:rabbitmq "$cookie"
chmod 400 "$cookie"
unset RABBITMQ_ERLANG_COOKIE
exec docker-entrypoint.sh rabbitmq-server
