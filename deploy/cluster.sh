#!/usr/bin/env bash
# The production topology on one machine, every part on 127.0.0.1:
#
#   clients ─► HAProxy :BASE (http, checks /health)
#                 ├─► storefront :BASE+1 ┐
#                 ├─► storefront :BASE+2 ├─► PgBouncer :BASE+11 (transaction pooling)
#                 └─► storefront :BASE+3 ┘        │
#                                                 ▼
#              HAProxy :BASE+10 (tcp, checks Patroni's REST /primary)
#                 ├─► Postgres node1 :BASE+21 (Patroni REST :BASE+31)
#                 └─► Postgres node2 :BASE+22 (Patroni REST :BASE+32)
#              Patroni's built-in Raft: node1 :BASE+41, node2 :BASE+42, witness :BASE+43
#
# Postgres runs as a primary with a synchronous standby (Patroni `synchronous_mode`), so a
# commit the shop acknowledged is on both nodes.
#
#   deploy/cluster.sh start          the whole topology (database layer, then 3 instances)
#   deploy/cluster.sh stop           everything, data kept
#   deploy/cluster.sh destroy        everything, data removed
#   deploy/cluster.sh status         who is primary, which instances are up
#   deploy/cluster.sh deploy         rolling restart: drain, SIGTERM, start, healthy, next
#   deploy/cluster.sh kill-primary   kill -9 the primary's postmaster (a failover drill)
#   deploy/cluster.sh rejoin         restart a stopped node's Patroni: it comes back as a standby
#
# Environment: CLUSTER_DIR (default /tmp/storefront-cluster), CLUSTER_PORT_BASE (7400),
# STOREFRONT_BIN (default target/release/storefront, else target/debug/storefront),
# OIDC_ISSUER, OIDC_CLIENT_ID, OIDC_CLIENT_SECRET (default: the local provider in idp/,
# started by scripts/idp.sh), STOREFRONT_ENV_FILE (extra KEY=value lines for the instances).
# Needs Debian's haproxy, pgbouncer, patroni and python3-pysyncobj (deploy/install.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DIR=${CLUSTER_DIR:-/tmp/storefront-cluster}
BASE=${CLUSTER_PORT_BASE:-7400}
HTTP=$BASE
PG_FRONT=$((BASE + 10))
PGB=$((BASE + 11))
STATS=$((BASE + 50))
BIN=${STOREFRONT_BIN:-}
if [[ -z $BIN ]]; then
  if [[ -x target/release/storefront ]]; then BIN=$ROOT/target/release/storefront; else BIN=$ROOT/target/debug/storefront; fi
fi
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

log() { echo "cluster.sh: $*" >&2; }
die() { log "$*"; exit 1; }

# Postgres refuses to run as root: as root, the database layer runs as `postgres`.
as_pg() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}
pg_owner() { if [[ $(id -u) -eq 0 ]]; then echo postgres; else id -un; fi; }

instance_port() { echo $((BASE + $1)); }
pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() { # seconds, description, command...
  local secs=$1 what=$2; shift 2
  local until=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < until)) || die "timed out after ${secs}s waiting for $what"
    sleep 0.2
  done
}

write_patroni_config() { # node number
  local n=$1 other=$((3 - $1))
  cat >"$DIR/patroni$n.yml" <<EOF
scope: storefront
name: node$n
log:
  level: WARNING
restapi:
  listen: 127.0.0.1:$((BASE + 30 + n))
  connect_address: 127.0.0.1:$((BASE + 30 + n))
raft:
  data_dir: $DIR/raft$n
  self_addr: 127.0.0.1:$((BASE + 40 + n))
  partner_addrs: ['127.0.0.1:$((BASE + 40 + other))', '127.0.0.1:$((BASE + 43))']
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 1
    retry_timeout: 4
    maximum_lag_on_failover: 1048576
    synchronous_mode: true
    postgresql:
      use_pg_rewind: true
      parameters:
        wal_level: replica
        hot_standby: 'on'
        max_wal_senders: 10
        max_replication_slots: 10
        wal_log_hints: 'on'
        max_connections: 100
  initdb:
    - encoding: UTF8
    - auth: trust
  pg_hba:
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
postgresql:
  listen: 127.0.0.1:$((BASE + 20 + n))
  connect_address: 127.0.0.1:$((BASE + 20 + n))
  data_dir: $DIR/node$n
  bin_dir: $PGBIN
  pgpass: $DIR/pgpass$n
  authentication:
    superuser: {username: postgres}
    replication: {username: postgres}
    rewind: {username: postgres}
  parameters:
    unix_socket_directories: '$DIR'
tags:
  nofailover: false
  noloadbalance: false
EOF
}

write_witness_config() {
  cat >"$DIR/witness.yml" <<EOF
raft:
  data_dir: $DIR/raft-witness
  self_addr: 127.0.0.1:$((BASE + 43))
  partner_addrs: ['127.0.0.1:$((BASE + 41))', '127.0.0.1:$((BASE + 42))']
EOF
}

write_haproxy_config() {
  local servers="" n
  for n in 1 2 3; do
    servers+="    server shop$n 127.0.0.1:$(instance_port "$n") check inter 1s fall 2 rise 2"$'\n'
  done
  cat >"$DIR/haproxy.cfg" <<EOF
global
    stats socket $DIR/haproxy.sock mode 600 level admin
    pidfile $DIR/haproxy.pid

defaults
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout check 2s
    # With no instance able to serve, clients get the shop's own kind of answer.
    errorfile 503 $DIR/503.http

frontend shop
    mode http
    bind 127.0.0.1:$HTTP
    option forwardfor
    default_backend instances

backend instances
    mode http
    balance roundrobin
    option httpchk GET /health
    http-check expect status 200
    # A request an instance never answered (it stopped, its connection closed) is sent to
    # another one; a request it answered is never sent twice.
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout
$servers
listen postgres_primary
    mode tcp
    bind 127.0.0.1:$PG_FRONT
    option httpchk GET /primary
    http-check expect status 200
    default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions
    server node1 127.0.0.1:$((BASE + 21)) check port $((BASE + 31))
    server node2 127.0.0.1:$((BASE + 22)) check port $((BASE + 32))

listen stats
    mode http
    bind 127.0.0.1:$STATS
    stats enable
    stats uri /
EOF
  printf 'HTTP/1.0 503 Service Unavailable\r\nCache-Control: no-store\r\nRetry-After: 5\r\nContent-Type: text/plain\r\n\r\nThe shop is temporarily unavailable. Please try again in a moment.\n' >"$DIR/503.http"
}

write_pgbouncer_config() {
  cat >"$DIR/pgbouncer.ini" <<EOF
[databases]
; The shop (database.pooler = "transaction") sets its timeouts per transaction.
storefront = host=127.0.0.1 port=$PG_FRONT dbname=storefront

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB
unix_socket_dir = $DIR
auth_type = trust
auth_file = $DIR/userlist.txt
pool_mode = transaction
; 3 instances x database.max_connections (16) client connections, fanned into 30 servers.
max_client_conn = 200
default_pool_size = 30
reserve_pool_size = 5
server_lifetime = 300
; A server connection to a node that stopped being primary is dropped at once.
server_check_delay = 0
server_connect_timeout = 2
server_login_retry = 1
query_wait_timeout = 5
ignore_startup_parameters = extra_float_digits,options
logfile = $DIR/pgbouncer.log
pidfile = $DIR/pgbouncer.pid
EOF
  echo '"postgres" ""' >"$DIR/userlist.txt"
}

primary_node() {
  local n
  for n in 1 2; do
    if curl -fsS -o /dev/null "http://127.0.0.1:$((BASE + 30 + n))/primary" 2>/dev/null; then
      echo "$n"; return 0
    fi
  done
  return 1
}

sync_standby_ready() {
  local n
  for n in 1 2; do
    curl -fsS -o /dev/null "http://127.0.0.1:$((BASE + 30 + n))/sync" 2>/dev/null && return 0
  done
  return 1
}

# Exactly one node in HAProxy's primary route, and it is the primary.
primary_route_ready() {
  local up
  up=$(haproxy_cmd "show servers state postgres_primary" | awk '$2 == "postgres_primary" && $6 == 2 { print $4 }')
  [[ $up == "node$(primary_node)" ]]
}

start_node() { # n
  local n=$1
  pid_alive "$DIR/patroni$n.pid" && return 0
  as_pg bash -c "nohup patroni '$DIR/patroni$n.yml' >>'$DIR/patroni$n.log' 2>&1 & echo \$! >'$DIR/patroni$n.pid'"
}

start_database() {
  mkdir -p "$DIR"
  chown "$(pg_owner)" "$DIR" 2>/dev/null || true
  chmod 700 "$DIR"
  write_patroni_config 1
  write_patroni_config 2
  write_witness_config
  write_haproxy_config
  write_pgbouncer_config
  chown -R "$(pg_owner)" "$DIR"
  if ! pid_alive "$DIR/witness.pid"; then
    as_pg bash -c "nohup patroni_raft_controller '$DIR/witness.yml' >>'$DIR/witness.log' 2>&1 & echo \$! >'$DIR/witness.pid'"
  fi
  start_node 1
  start_node 2
  wait_for 90 "a primary" primary_node
  wait_for 90 "a synchronous standby" sync_standby_ready
  if ! pid_alive "$DIR/haproxy.pid"; then
    haproxy -D -f "$DIR/haproxy.cfg"
  fi
  if ! pid_alive "$DIR/pgbouncer.pid"; then
    as_pg pgbouncer -d "$DIR/pgbouncer.ini"
  fi
  # HAProxy starts with every server up until its checks say otherwise.
  wait_for 30 "HAProxy's route to the primary" primary_route_ready
  psql "postgres://postgres@127.0.0.1:$PG_FRONT/postgres" -Atqc "SELECT 1 FROM pg_database WHERE datname = 'storefront'" | grep -q 1 \
    || psql "postgres://postgres@127.0.0.1:$PG_FRONT/postgres" -qc 'CREATE DATABASE storefront'
  wait_for 30 "PgBouncer" psql "postgres://postgres@127.0.0.1:$PGB/storefront" -Atqc 'SELECT 1'
  # Migrations take a session-level advisory lock: straight to the primary, not PgBouncer.
  DATABASE_URL="postgres://postgres@127.0.0.1:$PG_FRONT/storefront" "$BIN" migrate >&2
  DATABASE_URL="postgres://postgres@127.0.0.1:$PG_FRONT/storefront" "$BIN" demo-data >&2
}

secrets() {
  if [[ ! -f $DIR/secrets.env ]]; then
    {
      echo "STOREFRONT__SESSION__SECRET_KEY=$(openssl rand -base64 64 | tr -d '\n')"
      echo "STOREFRONT__TOKENS__ENCRYPTION_KEY=$(openssl rand -base64 32 | tr -d '\n')"
    } >"$DIR/secrets.env"
    chmod 600 "$DIR/secrets.env"
  fi
}

start_instance() { # n
  local n=$1 port
  port=$(instance_port "$n")
  pid_alive "$DIR/shop$n.pid" && return 0
  secrets
  (
    set -a
    # shellcheck disable=SC1091
    source "$DIR/secrets.env"
    set +a
    export STOREFRONT_CONFIG_DIR=$ROOT/config
    export STOREFRONT_ENV=${STOREFRONT_ENV:-production}
    export DATABASE_URL="postgres://postgres@127.0.0.1:$PGB/storefront"
    export STOREFRONT__SERVER__HOST=127.0.0.1
    export STOREFRONT__SERVER__PORT=$port
    export STOREFRONT__SERVER__PUBLIC_URL=${PUBLIC_URL:-http://127.0.0.1:$HTTP}
    export STOREFRONT__SERVER__TRUSTED_PROXIES=127.0.0.1/32
    export STOREFRONT__SERVER__TEMPLATES_DIR=$ROOT/templates
    export STOREFRONT__SERVER__STATIC_DIR=$ROOT/static
    export STOREFRONT__DATABASE__POOLER=transaction
    # LISTEN cannot go through PgBouncer: the caches' notifications come straight from the
    # primary, through HAProxy's primary route.
    export STOREFRONT__DATABASE__LISTEN_URL="postgres://postgres@127.0.0.1:$PG_FRONT/storefront"
    export STOREFRONT__OIDC__ISSUER_URL=${OIDC_ISSUER:-http://127.0.0.1:$((BASE + 60))}
    export STOREFRONT__OIDC__CLIENT_ID=${OIDC_CLIENT_ID:-storefront}
    export STOREFRONT__OIDC__CLIENT_SECRET=${OIDC_CLIENT_SECRET:-storefront-dev-secret}
    export RUST_LOG=${RUST_LOG:-info,sqlx::postgres::notice=error}
    # Last, so it can change any of the above (another database URL, another pooler …).
    if [[ -n ${STOREFRONT_ENV_FILE:-} ]]; then set -a; source "$STOREFRONT_ENV_FILE"; set +a; fi
    nohup "$BIN" serve >>"$DIR/shop$n.log" 2>&1 &
    echo $! >"$DIR/shop$n.pid"
  )
  wait_for 60 "instance $n" curl -fsS -o /dev/null "http://127.0.0.1:$port/health"
}

haproxy_cmd() { echo "$1" | socat stdio "unix-connect:$DIR/haproxy.sock" 2>/dev/null || true; }

instance_state() { # n: UP, DOWN, MAINT ... as HAProxy sees it
  haproxy_cmd "show servers state instances" | awk -v s="shop$1" '$4 == s { print $6 }'
}

instance_up() { [[ $(instance_state "$1") == 2 ]]; }

rolling_deploy() {
  local n port
  for n in 1 2 3; do
    port=$(instance_port "$n")
    log "instance $n: drain"
    haproxy_cmd "set server instances/shop$n state drain"
    # In-flight requests finish; the instance's own drain fails its health check.
    if pid_alive "$DIR/shop$n.pid"; then
      kill -TERM "$(cat "$DIR/shop$n.pid")"
      local until=$((SECONDS + 40))
      while pid_alive "$DIR/shop$n.pid"; do
        ((SECONDS < until)) || die "instance $n did not stop"
        sleep 0.1
      done
    fi
    rm -f "$DIR/shop$n.pid"
    log "instance $n: start"
    start_instance "$n"
    haproxy_cmd "set server instances/shop$n state ready"
    # Back in rotation once HAProxy's own checks pass (state 2 = running).
    wait_for 30 "instance $n back in rotation" instance_up "$n"
  done
}

stop_all() {
  local f pidfile
  for pidfile in "$DIR"/shop*.pid; do
    [[ -e $pidfile ]] || continue
    if pid_alive "$pidfile"; then kill -TERM "$(cat "$pidfile")"; fi
  done
  for pidfile in "$DIR"/shop*.pid; do
    [[ -e $pidfile ]] || continue
    while pid_alive "$pidfile"; do sleep 0.1; done
    rm -f "$pidfile"
  done
  pid_alive "$DIR/pgbouncer.pid" && kill "$(cat "$DIR/pgbouncer.pid")"
  pid_alive "$DIR/haproxy.pid" && kill "$(cat "$DIR/haproxy.pid")"
  for f in patroni1 patroni2 witness; do
    pid_alive "$DIR/$f.pid" && kill "$(cat "$DIR/$f.pid")"
  done
  for f in patroni1 patroni2 witness pgbouncer haproxy; do
    local until=$((SECONDS + 30))
    while pid_alive "$DIR/$f.pid"; do
      ((SECONDS < until)) || { kill -9 "$(cat "$DIR/$f.pid")" 2>/dev/null || true; break; }
      sleep 0.2
    done
  done
  # Postgres itself, if Patroni left it running.
  for n in 1 2; do
    if [[ -f $DIR/node$n/postmaster.pid ]]; then
      as_pg "$PGBIN/pg_ctl" -D "$DIR/node$n" -m fast stop >/dev/null 2>&1 || true
    fi
  done
}

status() {
  local n p
  p=$(primary_node || echo none)
  echo "primary: node$p"
  for n in 1 2; do
    printf 'node%s: %s\n' "$n" "$(curl -fsS "http://127.0.0.1:$((BASE + 30 + n))/patroni" 2>/dev/null | head -c 300 || echo down)"
  done
  for n in 1 2 3; do
    printf 'instance %s (:%s): %s\n' "$n" "$(instance_port "$n")" \
      "$(curl -fsS "http://127.0.0.1:$(instance_port "$n")/health" 2>/dev/null || echo down)"
  done
  echo "shop: http://127.0.0.1:$HTTP   HAProxy stats: http://127.0.0.1:$STATS/"
}

command -v haproxy >/dev/null && command -v pgbouncer >/dev/null && command -v patroni >/dev/null \
  || die "haproxy, pgbouncer and patroni are needed: run deploy/install.sh"
[[ -x $BIN ]] || die "no storefront binary at $BIN (cargo build --release)"

case "${1:-}" in
  start)
    start_database
    if [[ -z ${OIDC_ISSUER:-} ]]; then
      # The local provider of idp/, registered for this topology's address.
      IDP_PORT=$((BASE + 60)) IDP_KEY_FILE=$DIR/idp-key.json \
        IDP_REDIRECT_URIS="http://127.0.0.1:$HTTP/callback" \
        IDP_POST_LOGOUT_REDIRECT_URIS="http://127.0.0.1:$HTTP/" \
        IDP_BACKCHANNEL_LOGOUT_URI="http://127.0.0.1:$HTTP/backchannel-logout" \
        scripts/idp.sh start
      export OIDC_ISSUER=http://127.0.0.1:$((BASE + 60)) OIDC_CLIENT_SECRET=storefront-dev-secret
    fi
    for n in 1 2 3; do start_instance "$n"; done
    for n in 1 2 3; do wait_for 30 "HAProxy to route to instance $n" instance_up "$n"; done
    status
    ;;
  start-database) start_database ;;
  start-instance) start_instance "${2:?instance number}" ;;
  stop) stop_all ;;
  destroy) stop_all; rm -rf "$DIR" ;;
  status) status ;;
  deploy) rolling_deploy ;;
  kill-primary)
    p=$(primary_node) || die "no primary"
    pid=$(head -1 "$DIR/node$p/postmaster.pid")
    # The Patroni of that node goes too: the machine is lost, not just Postgres.
    kill -9 "$(cat "$DIR/patroni$p.pid")" "$pid"
    echo "node$p"
    ;;
  rejoin)
    for n in 1 2; do pid_alive "$DIR/patroni$n.pid" || start_node "$n"; done
    wait_for 120 "both nodes streaming" bash -c "curl -fsS http://127.0.0.1:$((BASE + 31))/health && curl -fsS http://127.0.0.1:$((BASE + 32))/health"
    ;;
  *) sed -n '2,30p' "$0"; exit 2 ;;
esac
