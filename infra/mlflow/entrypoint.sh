#!/bin/sh
# Starts `mlflow server` with the basic-auth app. Everything comes from the environment (set by
# compose.yaml from infra/mlflow/.env); nothing secret is written to a command line (`mlflow
# server` reads the two store URIs from the environment itself).
#   MLFLOW_BACKEND_STORE_URI      tracking store (PostgreSQL in compose.yaml)
#   MLFLOW_ARTIFACTS_DESTINATION  artifact store behind the server's artifact proxy
#   MLFLOW_AUTH_DATABASE_URI      users and permissions store
#   MLFLOW_HOST / MLFLOW_PORT     bind address, default 127.0.0.1:5000 (compose.yaml sets
#                                 0.0.0.0 inside the container and publishes the port on the
#                                 host's 127.0.0.1)
#   MLFLOW_WORKERS                server worker processes (default 4)
#   MLFLOW_ALLOWED_HOSTS          optional Host-header allow list (MLflow's default: localhost
#                                 and private addresses)
#   MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD / MLFLOW_FLASK_SERVER_SECRET_KEY
#                                 read by MLflow itself
set -eu

: "${MLFLOW_BACKEND_STORE_URI:?MLFLOW_BACKEND_STORE_URI is not set}"
: "${MLFLOW_AUTH_DATABASE_URI:?MLFLOW_AUTH_DATABASE_URI is not set}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?MLFLOW_ARTIFACTS_DESTINATION is not set}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?MLFLOW_AUTH_ADMIN_PASSWORD is not set}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?MLFLOW_FLASK_SERVER_SECRET_KEY is not set}"

export MLFLOW_BACKEND_STORE_URI MLFLOW_ARTIFACTS_DESTINATION
# The auth app reads its database from an ini file: write one readable by this user only.
umask 077
auth_dir="$(mktemp -d)"
cat > "$auth_dir/basic_auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = ${MLFLOW_AUTH_DATABASE_URI}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
export MLFLOW_AUTH_CONFIG_PATH="$auth_dir/basic_auth.ini"

set -- mlflow server --app-name basic-auth \
    --host "${MLFLOW_HOST:-127.0.0.1}" --port "${MLFLOW_PORT:-5000}" --workers "${MLFLOW_WORKERS:-4}" \
    --serve-artifacts
if [ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]; then
    set -- "$@" --allowed-hosts "$MLFLOW_ALLOWED_HOSTS"
fi
exec "$@"
