#!/usr/bin/env bash
# Side-by-side UDP (DNS) benchmark on loopback: weir (a UDP listener) vs nginx
# (`stream` with `listen ... udp`), both in front of one dnsmasq, driven by
# dnsperf. HAProxy does not proxy UDP. Writes a markdown report (medians, proxy
# CPU per query, ratios to nginx) and prints it. See bench/README.md.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_DIR/.." && pwd)

usage() {
    cat <<EOF
Usage: bench/udp.sh [options]

  --duration SECS    length of each dnsperf run (default 10; env BENCH_DURATION)
  --rounds N         interleaved rounds; the report shows medians (default 3; env BENCH_ROUNDS)
  --proxies LIST     comma list of weir,nginx (default both; env BENCH_PROXIES)
  --weir PATH        weir binary (default target/release/weir; env BENCH_WEIR)
  --out FILE         report path (default bench/results/udp-<UTC date>.md)
  --quick            smoke test: --duration 3 --rounds 1
  --port-base PORT   first port used (default 17500; the run uses PORT..PORT+29)
  --keep-work        keep the work dir (configs, logs, raw tool outputs)
  -h, --help         this help
EOF
}

die() { echo "udp.sh: error: $*" >&2; exit 1; }
log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

DURATION=${BENCH_DURATION:-}
ROUNDS=${BENCH_ROUNDS:-}
PROXIES=${BENCH_PROXIES:-weir,nginx}
WEIR=${BENCH_WEIR:-$REPO_ROOT/target/release/weir}
OUT=""
QUICK=0
PORT_BASE=17500
KEEP_WORK=0
while (($#)); do
    case $1 in
        --duration) DURATION=${2:?}; shift 2 ;;
        --rounds) ROUNDS=${2:?}; shift 2 ;;
        --proxies) PROXIES=${2:?}; shift 2 ;;
        --weir) WEIR=${2:?}; shift 2 ;;
        --out) OUT=${2:?}; shift 2 ;;
        --port-base) PORT_BASE=${2:?}; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --keep-work) KEEP_WORK=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done
if ((QUICK)); then DURATION=${DURATION:-3}; ROUNDS=${ROUNDS:-1}; fi
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
for v in DURATION ROUNDS PORT_BASE; do
    [[ ${!v} =~ ^[0-9]+$ && ${!v} -gt 0 ]] || die "$v must be a positive integer"
done

for c in nginx dnsmasq dnsperf dig python3 taskset timeout pgrep; do
    command -v "$c" >/dev/null || die "missing $c — apt-get install -y nginx libnginx-mod-stream dnsmasq-base dnsperf bind9-dnsutils"
done
taskset -c 0,1 true 2>/dev/null || die "CPUs 0 and 1 must both be available"
STREAM_MODULE=
if nginx -V 2>&1 | grep -q -- '--with-stream=dynamic'; then
    for f in /usr/lib/nginx/modules/ngx_stream_module.so /usr/share/nginx/modules/ngx_stream_module.so; do
        [[ -f $f ]] && STREAM_MODULE=$f && break
    done
    [[ -n $STREAM_MODULE ]] || die "nginx stream module not found — apt-get install -y libnginx-mod-stream"
elif ! nginx -V 2>&1 | grep -q -- '--with-stream'; then
    die "this nginx has no stream module"
fi
IFS=, read -r -a KEYS <<<"$PROXIES"
declare -A LABEL=([weir]=weir [nginx]=nginx)
for k in "${KEYS[@]}"; do [[ -n ${LABEL[$k]:-} ]] || die "unknown proxy '$k'"; done
if [[ ,$PROXIES, == *,weir,* ]]; then
    WEIR=$(realpath -m -- "$WEIR")
    [[ -x $WEIR ]] || die "weir binary not found at $WEIR — cargo build --release, or --weir PATH"
fi

# ---------------------------------------------------------------- processes
declare -A STARTED=()
WORK=$(mktemp -d "${TMPDIR:-/tmp}/weir-udp-bench.XXXXXX")
RAW=$WORK/raw.jsonl
META=$WORK/meta.txt
: >"$RAW"
# shellcheck source=bench/common.sh
source "$BENCH_DIR/common.sh"
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${!STARTED[@]}"; do stop_pid "$pid"; done
    if ((rc != 0 || KEEP_WORK)); then echo "udp.sh: work dir kept: $WORK" >&2; else rm -rf -- "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
answers() { # port -> true once a query through it is answered
    [[ $(dig +short +timeout=1 +tries=1 -p "$1" @127.0.0.1 a.bench 2>/dev/null) == 10.0.0.1 ]]
}
wait_answer() { # pid deadline_s port
    local deadline=$((SECONDS + $2))
    until answers "$3"; do
        alive "$1" && ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
MAXFLOWS=$(( NOFILE - 200 < 50000 ? NOFILE - 200 : 50000 ))
DNS_PORT=$PORT_BASE
declare -A FRONT=()
i=1
for k in "${KEYS[@]}"; do FRONT[$k]=$((PORT_BASE + 10 * i)); i=$((i + 1)); done

# ---------------------------------------------------------------- backend
mkdir -p "$WORK/dns"
printf '10.0.0.1 a.bench\n10.0.0.2 b.bench\n' >"$WORK/dns/hosts"
printf 'a.bench A\nb.bench A\n' >"$WORK/queries.txt"
launch dnsmasq "$WORK/dns/out.log" taskset -c 0 dnsmasq --keep-in-foreground --no-resolv \
    --no-hosts --bind-interfaces --listen-address=127.0.0.1 --port="$DNS_PORT" \
    --addn-hosts="$WORK/dns/hosts" --user=root --log-facility=- --pid-file="$WORK/dns/pid"
DNS_PID=$LAUNCHED_PID
wait_answer "$DNS_PID" 20 "$DNS_PORT" || die "dnsmasq did not answer"

start_proxy() { # round key -> PROXY_PID
    local key=$2 dir=$WORK/r$1-$2
    mkdir -p "$dir"
    local vars=(DIR="$dir" NOFILE="$NOFILE" MAXFLOWS="$MAXFLOWS" DNS_PORT="$DNS_PORT" FRONT="${FRONT[$key]}")
    case $key in
        nginx)
            render nginx-udp.conf.in "$dir/nginx.conf" "${vars[@]}" "STREAM_MODULE=${STREAM_MODULE:-none}"
            [[ -n $STREAM_MODULE ]] || sed -i '/^load_module/d' "$dir/nginx.conf"
            launch nginx "$dir/proxy.log" taskset -c 1 \
                nginx -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf" -g 'daemon off;' ;;
        weir)
            render weir-udp.toml.in "$dir/weir.toml" "${vars[@]}"
            launch weir "$dir/proxy.log" taskset -c 1 "$WEIR" run --config "$dir/weir.toml" ;;
    esac
    PROXY_PID=$LAUNCHED_PID
    wait_answer "$PROXY_PID" 20 "${FRONT[$key]}" \
        || { tail -n 20 "$dir/proxy.log" >&2; die "${LABEL[$key]} did not answer"; }
}

# ---------------------------------------------------------------- measurements
CLK_TCK=$(getconf CLK_TCK)
TIMEOUT=$((DURATION + 30))
run_dnsperf() { # round key pid
    local r=$1 key=$2 pid=$3 f=$WORK/r$1-$2-dnsperf.txt t0 t1 qps lost completed lat cpu per_core
    t0=$(cpu_ticks "$pid")
    timeout -k 5 $TIMEOUT taskset -c 0 dnsperf -s 127.0.0.1 -p "${FRONT[$key]}" \
        -d "$WORK/queries.txt" -l "$DURATION" -c 16 -q 200 -t 2 >"$f" 2>&1 || true
    t1=$(cpu_ticks "$pid")
    read -r qps completed lost lat < <(python3 "$BENCH_DIR/report.py" dnsperf "$f" 2>/dev/null)
    read -r cpu per_core < <(python3 -c "
t, c = ($t1 - $t0) / $CLK_TCK, float('$completed' if '$completed' != 'null' else 0)
print(round(t / c * 1e6, 2) if c else 'null', round(c / t) if t else 'null')" 2>/dev/null || echo "null null")
    record "$r" "$key" dns_qps "$qps"
    record "$r" "$key" dns_lat_ms "$lat"
    record "$r" "$key" dns_cpu_us "$cpu"
    record "$r" "$key" dns_qps_per_core "$per_core"
    record "$r" "$key" dns_completed "$completed"
    record "$r" "$key" dns_lost "$lost"
    log "    dnsperf: $qps queries/s, $lost lost, avg latency $lat ms, proxy CPU $cpu µs/query ($per_core queries per CPU-second)"
}
{
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "nproc=$(nproc)"
    echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo unknown)"
    echo "mem=$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
    echo "kernel=$(uname -sr)"
    [[ ,$PROXIES, == *,weir,* ]] && echo "weir=$("$WEIR" --version | head -n1) (git $(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown))"
    echo "nginx=$(nginx -v 2>&1 | head -n1)"
    echo "dnsperf=$(dnsperf -h 2>&1 | grep -m1 -i 'version' || echo dnsperf)"
    echo "dnsmasq=$(dnsmasq --version | head -n1)"
    echo "duration=$DURATION"
    echo "rounds=$ROUNDS"
    echo "proxies=$(IFS=,; echo "${KEYS[*]}")"
    labels=(); for k in "${KEYS[@]}"; do labels+=("${LABEL[$k]}"); done
    echo "labels=$(IFS=,; echo "${labels[*]}")"
    echo "desc_weir=a \`protocol = \"udp\"\` listener, \`responses = 1\`, \`worker_threads = 1\`, access log off"
    echo "desc_nginx=\`worker_processes 1\`, \`stream { listen ... udp; proxy_responses 1; }\`, access log off"
} >"$META"
log "work dir $WORK; proxies: ${KEYS[*]}; $ROUNDS round(s) of ${DURATION}s runs"
for ((round = 1; round <= ROUNDS; round++)); do
    for key in "${KEYS[@]}"; do
        log "round $round/$ROUNDS: ${LABEL[$key]}"
        start_proxy "$round" "$key"
        run_dnsperf "$round" "$key" "$PROXY_PID"
        stop_pid "$PROXY_PID"
    done
done
if [[ -z $OUT ]]; then
    OUT=$BENCH_DIR/results/udp-$(date -u +%Y-%m-%d).md
    [[ -e $OUT ]] && OUT=$BENCH_DIR/results/udp-$(date -u +%Y-%m-%d-%H%M%S).md
fi
mkdir -p "$(dirname -- "$OUT")"
python3 "$BENCH_DIR/report.py" render --suite udp --raw "$RAW" --meta "$META" --out "$OUT"
cp "$RAW" "${OUT%.md}.raw.jsonl"
log "report written to $OUT"
