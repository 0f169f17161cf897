#!/usr/bin/env bash
# A multi-node Ray cluster on one machine, for trying distributed searches locally.
#
#   infra/local-cluster.sh start [--workers N] [--cpus-per-node C] [--gpus-per-node G]
#                                [--object-store-mb M] [--dashboard] [--dir DIR]
#   infra/local-cluster.sh status [--dir DIR]
#   infra/local-cluster.sh stop [--dir DIR]
#   infra/local-cluster.sh address [--dir DIR]     # prints host:port for --address
#
# `start` runs a head node and N worker nodes (default 1) on this machine, each with C CPUs
# (default 1), G GPUs (default 0; Ray schedules on the declared count, so G > 0 without a GPU
# tries out fractional --gpus-per-trial) and a custom resource naming it: node_0 (the head),
# node_1 ... node_N.
# Each node is one `ray start --block` process in the background; its pid, log and the
# cluster address are kept in DIR (default: $FUSETUNE_CLUSTER_DIR, else
# ${TMPDIR:-/tmp}/fusetune-cluster). Every port is chosen free, so the cluster does not clash
# with other Ray instances on the machine; the dashboard (off unless --dashboard) listens on
# 127.0.0.1 only; Ray token authentication is on (RAY_AUTH_MODE=token, token in
# ~/.ray/auth_token). Then:
#
#   export RAY_ADDRESS=$(infra/local-cluster.sh address) RAY_AUTH_MODE=token
#   python -m search.run --address "$RAY_ADDRESS" --space baseline --storage /tmp/fusetune-results
#
# `stop` ends exactly the processes this script started (by pid; never `ray stop`, which
# would also end other Ray instances of the same user).
set -euo pipefail

DIR="${FUSETUNE_CLUSTER_DIR:-${TMPDIR:-/tmp}/fusetune-cluster}"
WORKERS=1
CPUS=1
GPUS=0
OBJECT_STORE_MB=200
DASHBOARD=false
STOP_TIMEOUT_S=30
START_TIMEOUT_S=120

usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

die() { echo "local-cluster: $*" >&2; exit 1; }

free_port() {
    python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

node_pidfiles() { compgen -G "$DIR/node_*.pid" || true; }

# ---- parse arguments ---------------------------------------------------------------------
[[ $# -ge 1 ]] || usage 2
CMD="$1"; shift
while [[ $# -gt 0 ]]; do
    case "$1" in
        --workers) WORKERS="$2"; shift 2 ;;
        --cpus-per-node) CPUS="$2"; shift 2 ;;
        --gpus-per-node) GPUS="$2"; shift 2 ;;
        --object-store-mb) OBJECT_STORE_MB="$2"; shift 2 ;;
        --dashboard) DASHBOARD=true; shift ;;
        --dir) DIR="$2"; shift 2 ;;
        -h|--help) usage 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
[[ "$WORKERS" =~ ^[0-9]+$ ]] || die "--workers expects a whole number, got '$WORKERS'"
[[ "$CPUS" =~ ^[0-9]+$ && "$CPUS" -ge 1 ]] || die "--cpus-per-node expects a whole number >= 1, got '$CPUS'"
[[ "$GPUS" =~ ^[0-9]+$ ]] || die "--gpus-per-node expects a whole number, got '$GPUS'"
[[ "$OBJECT_STORE_MB" =~ ^[0-9]+$ && "$OBJECT_STORE_MB" -ge 80 ]] || die "--object-store-mb expects a whole number >= 80, got '$OBJECT_STORE_MB'"

# Every node and the client below authenticate with Ray's token (~/.ray/auth_token, or the file
# RAY_AUTH_TOKEN_PATH names, or RAY_AUTH_TOKEN; `start` generates the file when none is there:
# `ray start` refuses to start without one).
export RAY_AUTH_MODE=token RAY_USAGE_STATS_ENABLED=0
# Trials run in the nodes' worker processes: they import this checkout, installed or not.
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"

# ---- one node: `ray start --block` in the background --------------------------------------
start_node() {  # start_node INDEX [ray start arguments...]
    local i="$1"; shift
    local common=(
        --block --disable-usage-stats
        --num-cpus "$CPUS" --num-gpus "$GPUS"
        --resources "{\"node_$i\": 1}"
        --object-store-memory $((OBJECT_STORE_MB * 1024 * 1024))
        --temp-dir "$(cat "$DIR/ray_temp_dir")"
        --min-worker-port 0 --max-worker-port 0
        --dashboard-agent-listen-port "$(free_port)"
        --metrics-export-port "$(free_port)"
        --runtime-env-agent-port "$(free_port)"
    )
    nohup ray start "${common[@]}" "$@" >"$DIR/node_$i.log" 2>&1 &
    echo $! >"$DIR/node_$i.pid"
}

wait_for_gcs() {  # wait until the head's GCS port accepts connections (or the head died)
    local port="$1" t=0
    while ! python -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)" "$port" 2>/dev/null; do
        alive "$DIR/node_0.pid" || return 1
        ((t < START_TIMEOUT_S * 2)) || return 1
        sleep 0.5; t=$((t + 1))
    done
}

wait_for_nodes() {  # wait until ADDRESS reports $1 alive nodes
    local want="$1"
    python - "$(cat "$DIR/address")" "$want" "$START_TIMEOUT_S" <<'PY'
import sys, time
import ray

address, want, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + timeout
ray.init(address=address, logging_level="ERROR", log_to_driver=False)
try:
    while True:
        alive = sum(1 for n in ray.nodes() if n["Alive"])
        if alive >= want:
            break
        if time.monotonic() > deadline:
            sys.exit(f"local-cluster: only {alive} of {want} nodes up after {timeout:.0f}s")
        time.sleep(0.5)
finally:
    ray.shutdown()
PY
}

ensure_token() {  # the token every node and client reads; generated once (0600) if none is set
    [[ -n "${RAY_AUTH_TOKEN:-}" || -s "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}" ]] && return 0
    [[ -z "${RAY_AUTH_TOKEN_PATH:-}" ]] || die "RAY_AUTH_TOKEN_PATH names $RAY_AUTH_TOKEN_PATH, which is missing or empty"
    ray get-auth-token --generate >/dev/null || die "could not generate Ray's auth token (ray get-auth-token --generate)"
    chmod 600 "$HOME/.ray/auth_token"  # Ray writes it readable by every user of the machine
}

cmd_start() {
    mkdir -p "$DIR"
    ensure_token
    for f in $(node_pidfiles); do
        alive "$f" && die "a cluster is already running from $DIR (run: $0 stop --dir $DIR)"
    done
    rm -f "$DIR"/node_*.pid "$DIR"/node_*.log "$DIR/address"
    # Ray's sockets live under its temp dir and a Unix socket path has at most 107 bytes, so the
    # temp dir is a short fresh one (its path is kept in DIR; the previous one is removed)
    [[ -f "$DIR/ray_temp_dir" ]] && rm -rf "$(cat "$DIR/ray_temp_dir")"
    mktemp -d "${TMPDIR:-/tmp}/ray-ftc-XXXXXX" >"$DIR/ray_temp_dir"

    local port; port="$(free_port)"
    echo "127.0.0.1:$port" >"$DIR/address"
    local head=(--head --port "$port")
    if [[ "$DASHBOARD" == true ]]; then
        head+=(--include-dashboard true --dashboard-host 127.0.0.1 --dashboard-port "$(free_port)")
    else
        head+=(--include-dashboard false)
    fi
    start_node 0 "${head[@]}"
    # the workers join once the GCS answers
    if ! wait_for_gcs "$port" || ! wait_for_nodes 1; then cmd_stop; die "head node did not start; see $DIR/node_0.log"; fi
    for ((i = 1; i <= WORKERS; i++)); do
        start_node "$i" --address "127.0.0.1:$port"
    done
    if ! wait_for_nodes $((WORKERS + 1)); then cmd_stop; die "worker nodes did not start; see $DIR/node_*.log"; fi
    echo "Ray cluster up: $((WORKERS + 1)) nodes x ($CPUS CPU, $GPUS GPU) at $(cat "$DIR/address") (state in $DIR)"
    echo "  export RAY_ADDRESS=$(cat "$DIR/address") RAY_AUTH_MODE=token"
    echo "  python -m search.run --address \$RAY_ADDRESS ..."
}

cmd_stop() {
    local pids=() f
    for f in $(node_pidfiles); do
        alive "$f" && pids+=("$(cat "$f")")
    done
    # Workers first, then the head. `ray start --block` ends its node's processes on SIGTERM.
    local ordered=() p
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do ordered+=("${pids[$i]}"); done
    for p in "${ordered[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    local waited=0
    for p in "${ordered[@]}"; do
        while kill -0 "$p" 2>/dev/null && ((waited < STOP_TIMEOUT_S * 10)); do
            sleep 0.1; waited=$((waited + 1))
        done
        kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null || true
    done
    rm -f "$DIR"/node_*.pid "$DIR/address"
    echo "Ray cluster in $DIR stopped (${#pids[@]} nodes; Ray's logs: $(cat "$DIR/ray_temp_dir" 2>/dev/null || echo -))"
}

cmd_status() {
    local up=0 total=0 f
    for f in $(node_pidfiles); do
        total=$((total + 1))
        local name; name="$(basename "$f" .pid)"
        if alive "$f"; then
            up=$((up + 1)); echo "$name: running (pid $(cat "$f"))"
        else
            echo "$name: not running (log: $DIR/$name.log)"
        fi
    done
    if ((total == 0)); then echo "no cluster in $DIR"; return 3; fi
    echo "address: $(cat "$DIR/address" 2>/dev/null || echo '?')"
    ((up == total)) || return 1
}

cmd_address() {
    [[ -f "$DIR/address" ]] || die "no cluster in $DIR"
    cat "$DIR/address"
}

case "$CMD" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    address) cmd_address ;;
    -h|--help|help) usage 0 ;;
    *) die "unknown command '$CMD' (start, stop, status, address)" ;;
esac
