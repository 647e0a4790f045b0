#!/usr/bin/env bash
# Health-check scale benchmark: weir probes N backends (HTTP GET, interval 1s)
# served by one nginx listening on N loopback ports, and we read how much CPU
# weir spends doing it. weir runs single-threaded pinned to CPU 1, nginx to CPU 0.
#
#   bench/health.sh [--backends N] [--seconds S] [--check http|tcp] [--weir PATH]
#
# Prints weir's CPU use as a percentage of one core (and its user and system
# parts), and the CPU nginx spent answering. Starts only its own processes and
# stops them (by PID) on exit.
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
REPO_ROOT=$(cd "$BENCH_DIR/.." && pwd)
N=10000
SECONDS_RUN=20
CHECK=http
WEIR=$REPO_ROOT/target/release/weir
PORT_BASE=10000  # below the ephemeral port range, so no client socket holds one
ADMIN_PORT=9979
while (($#)); do
    case $1 in
        --backends) N=$2; shift 2 ;;
        --seconds) SECONDS_RUN=$2; shift 2 ;;
        --check) CHECK=$2; shift 2 ;;
        --weir) WEIR=$2; shift 2 ;;
        --port-base) PORT_BASE=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[[ -x $WEIR ]] || { echo "no weir binary at $WEIR (cargo build --release)" >&2; exit 1; }
command -v nginx >/dev/null || { echo "nginx is needed: apt-get install -y nginx" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)"
WORK=$(mktemp -d /tmp/weir-health-bench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    [[ -n ${KEEP:-} ]] && echo "work dir kept: $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT

# nginx: the N health endpoints, spread over several nginx processes of at most
# PER_NGINX ports each, so that each process's listening sockets plus the kept
# probe connections fit its descriptor limit. Every one answers 200 to anything.
PER_NGINX=2500
NGINX_PIDS=()
for ((first = 0; first < N; first += PER_NGINX)); do
    last=$((first + PER_NGINX < N ? first + PER_NGINX : N))
    d=$WORK/nginx-$first
    mkdir -p "$d"
    {
        echo "daemon off; master_process off; worker_processes 1; pid $d/nginx.pid; error_log $d/error.log;"
        echo "worker_rlimit_nofile $(ulimit -n);"
        echo "events { worker_connections $(( $(ulimit -n) - 100 )); }"
        echo "http { access_log off; keepalive_timeout 300s; keepalive_requests 1000000;"
        echo "  client_body_temp_path $d/t1; proxy_temp_path $d/t2;"
        echo "  fastcgi_temp_path $d/t3; uwsgi_temp_path $d/t4; scgi_temp_path $d/t5;"
        echo "  server {"
        for ((i = first; i < last; i++)); do echo "    listen 127.0.0.1:$((PORT_BASE + i));"; done
        echo "    location / { return 200 \"ok\\n\"; }"
        echo "  }"
        echo "}"
    } >"$d/nginx.conf"
    taskset -c 0 nginx -p "$d" -c "$d/nginx.conf" &
    PIDS+=($!)
    NGINX_PIDS+=($!)
done

# weir: one pool of N backends, probed every second; no traffic.
{
    echo "[admin]"
    echo "http = \"127.0.0.1:$ADMIN_PORT\""
    echo "[runtime]"
    echo "worker_threads = 1"
    echo "[log]"
    echo "level = \"${WEIR_LOG_LEVEL:-warn}\""
    echo "[[pools]]"
    echo "name = \"many\""
    echo "[pools.health]"
    echo "type = \"$CHECK\""
    echo "interval = \"1s\""
    echo "timeout = \"1s\""
    for ((i = 0; i < N; i++)); do
        printf '[[pools.backends]]\naddress = "127.0.0.1:%d"\n' $((PORT_BASE + i))
    done
} >"$WORK/weir.toml"

# Wait for every nginx's last port.
for ((first = 0; first < N; first += PER_NGINX)); do
    last=$((first + PER_NGINX < N ? first + PER_NGINX : N))
    for _ in $(seq 200); do
        (exec 3<>/dev/tcp/127.0.0.1/$((PORT_BASE + last - 1))) 2>/dev/null && break
        sleep 0.05
    done
done

taskset -c 1 "$WEIR" run --config "$WORK/weir.toml" >"$WORK/weir.log" 2>&1 &
PIDS+=($!)
WEIR_PID=$!
# /readyz answers 200 once the first probe round is done: how many backends
# (all of them healthy) failed their first probe then?
for _ in $(seq 600); do
    curl -fs "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1 && break
    sleep 0.05
done
first_down=$(curl -fs "http://127.0.0.1:$ADMIN_PORT/metrics" \
    | awk '/^weir_pool_backends\{pool="many",state="down"\}/ {print $2}')
echo "first probe round: ${first_down:-?} of $N healthy backends failed their first probe"
sleep 5 # let the first rounds spread out

ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
user_ticks() { awk '{print $14}' "/proc/$1/stat"; }
TCK=$(getconf CLK_TCK)
w0=$(ticks "$WEIR_PID"); n0=$(ticks "${NGINX_PIDS[@]}"); u0=$(user_ticks "$WEIR_PID")
if [[ -n ${STRACE:-} ]]; then timeout 5 strace -c -f -p "$WEIR_PID" 2>"$WORK/strace.txt" || true; cat "$WORK/strace.txt" >&2; fi
sleep "$SECONDS_RUN"
w1=$(ticks "$WEIR_PID"); n1=$(ticks "${NGINX_PIDS[@]}"); u1=$(user_ticks "$WEIR_PID")
kill -0 "$WEIR_PID" || { echo "weir exited:"; tail "$WORK/weir.log"; exit 1; }
up=$(grep -c "to=\"up\"\|to=up" "$WORK/weir.log" || true)
python3 - "$w0" "$w1" "$n0" "$n1" "$TCK" "$SECONDS_RUN" "$N" "$CHECK" "$u0" "$u1" <<'PY'
import sys
w0, w1, n0, n1, tck, secs, n = (float(x) for x in sys.argv[1:8])
check = sys.argv[8]
u0, u1 = (float(x) for x in sys.argv[9:11])
weir = 100 * (w1 - w0) / tck / secs
user = 100 * (u1 - u0) / tck / secs
nginx = 100 * (n1 - n0) / tck / secs
print(f"backends: {int(n)}, check: {check}, interval: 1s, measured over {int(secs)} s")
print(f"weir CPU: {weir:.1f}% of one core ({weir / n * 1000:.2f}% per 1,000 backends; "
      f"user {user:.1f}%, system {weir - user:.1f}%)")
print(f"nginx (the {int(n)} health endpoints, all processes) CPU: {nginx:.1f}% of one core")
PY
