#!/bin/sh
# Runs once, when the PostgreSQL volume is first initialised: MLflow's auth app keeps its users
# and permissions in a database of its own (its migrations would clash with the tracking store's).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -c "CREATE DATABASE mlflow_auth OWNER \"$POSTGRES_USER\""
