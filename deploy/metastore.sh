#!/usr/bin/env bash
# A PostgreSQL server holding semspark's Hive metastore, on this host (Debian's postgresql package),
# so that the SQL server, spark-sql users and the nightly use the catalog at the same time.
#
#   deploy/metastore.sh start     initialise (first time) and start the server, create the role, the
#                                 database and the metastore's schema (semspark catalog init)
#   deploy/metastore.sh stop
#   deploy/metastore.sh status
#   deploy/metastore.sh conf      print the catalog section for conf/semspark.yaml
#
# Settings (environment): METASTORE_DIR (default $SEMSPARK_HOME/postgres), METASTORE_PORT (5433),
# METASTORE_HOST (127.0.0.1: listens on loopback only), METASTORE_DB (semspark_metastore),
# METASTORE_USER (semspark), SEMSPARK_METASTORE_PASSWORD (the role's password; generated into
# $METASTORE_DIR/password the first time when unset). PostgreSQL refuses to run as root: run as root,
# the server runs as the system user `postgres` (METASTORE_OS_USER) and owns METASTORE_DIR.
# Installs postgresql and libpostgresql-jdbc-java with apt when they are missing.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SEMSPARK_HOME="${SEMSPARK_HOME:-$ROOT/var}"
DIR="${METASTORE_DIR:-$SEMSPARK_HOME/postgres}"
PORT="${METASTORE_PORT:-5433}"
HOST="${METASTORE_HOST:-127.0.0.1}"
DB="${METASTORE_DB:-semspark_metastore}"
ROLE="${METASTORE_USER:-semspark}"
OS_USER="${METASTORE_OS_USER:-postgres}"

need_packages() {
    local missing=()
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
    [ -f /usr/share/java/postgresql.jar ] || missing+=(libpostgresql-jdbc-java)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing ${missing[*]} (apt)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2
    fi
}

bin_dir() { ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1; }

as_server() {   # run a server command as the server's owner
    if [ "$(id -u)" = 0 ]; then runuser -u "$OS_USER" -- "$@"; else "$@"; fi
}

psql_admin() { as_server "$(bin_dir)/psql" -h "$DIR" -p "$PORT" -d postgres -v ON_ERROR_STOP=1 -qAt "$@"; }

password() {
    if [ -n "${SEMSPARK_METASTORE_PASSWORD:-}" ]; then echo "$SEMSPARK_METASTORE_PASSWORD"; return; fi
    if [ ! -f "$DIR/password" ]; then
        (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$DIR/password")
    fi
    cat "$DIR/password"
}

start() {
    need_packages
    mkdir -p "$DIR"
    if [ "$(id -u)" = 0 ]; then chown "$OS_USER" "$DIR"; fi
    if [ ! -f "$DIR/data/PG_VERSION" ]; then
        as_server mkdir -p "$DIR/data"
        # the superuser logs in only through the local socket (peer): no password of its own is kept
        as_server "$(bin_dir)/initdb" -D "$DIR/data" -A trust --username=postgres >/dev/null   # pg_hba.conf is written just below
        # local socket for this script (peer of the owner), loopback TCP with passwords for Spark
        printf 'local all postgres peer\nhost all all 127.0.0.1/32 scram-sha-256\n' | as_server tee "$DIR/data/pg_hba.conf" >/dev/null
    fi
    if ! as_server "$(bin_dir)/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; then
        as_server "$(bin_dir)/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
            -o "-p $PORT -c listen_addresses=$HOST -k $DIR" start >/dev/null
    fi
    local secret
    secret="$(password)"
    if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" != 1 ]; then
        psql_admin -c "CREATE ROLE \"$ROLE\" LOGIN PASSWORD '$secret'"
    fi
    if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
        psql_admin -c "CREATE DATABASE \"$DB\" OWNER \"$ROLE\""
    fi
    # the metastore's schema, made whole once (semspark catalog init; a no-op when it is there)
    local semspark_bin="$ROOT/.venv/bin/semspark"
    [ -x "$semspark_bin" ] || semspark_bin="$(command -v semspark || true)"
    if [ -z "$semspark_bin" ]; then
        echo "semspark is not installed here (make env): run 'semspark catalog init' with this catalog section" >&2
    else
        local conf_file
        conf_file="$(mktemp)"
        conf > "$conf_file"
        SEMSPARK_CONF="$conf_file" SEMSPARK_METASTORE_PASSWORD="$secret" SEMSPARK_HOME="$SEMSPARK_HOME" \
            "$semspark_bin" catalog init >&2 || { rm -f "$conf_file"; echo "semspark catalog init failed" >&2; exit 1; }
        rm -f "$conf_file"
    fi
    echo "metastore database $DB on $HOST:$PORT (role $ROLE, password in ${SEMSPARK_METASTORE_PASSWORD:+\$SEMSPARK_METASTORE_PASSWORD}${SEMSPARK_METASTORE_PASSWORD:-$DIR/password})"
}

stop() {
    if [ -f "$DIR/data/PG_VERSION" ]; then
        as_server "$(bin_dir)/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    echo "stopped"
}

status() {
    if [ -f "$DIR/data/PG_VERSION" ] && as_server "$(bin_dir)/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; then
        echo "running: $HOST:$PORT, database $DB"
    else
        echo "not running"; return 3
    fi
}

conf() {
    cat <<EOF
catalog:
  metastore: postgresql
  postgresql_url: "jdbc:postgresql://$HOST:$PORT/$DB"
  postgresql_user: $ROLE
  postgresql_password_env: SEMSPARK_METASTORE_PASSWORD   # export it: cat $DIR/password
EOF
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    conf) conf ;;
    *) echo "usage: $0 start|stop|status|conf" >&2; exit 2 ;;
esac
