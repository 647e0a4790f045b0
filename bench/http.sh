#!/usr/bin/env bash
# Side-by-side HTTP benchmark on loopback: weir (l7 routes) vs HAProxy (`mode http`)
# vs nginx (`proxy_pass` with upstream keep-alive). Three scenarios per proxy:
# HTTP/1.1 keep-alive, h2c in front of an HTTP/1.1 backend, and a new TLS connection
# per request (full handshakes). Writes a markdown report (medians, CPU per request,
# ratios to HAProxy) and prints it. See bench/README.md.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_DIR/.." && pwd)

usage() {
    cat <<EOF
Usage: bench/http.sh [options]

  --duration SECS    length of each load run (default 10; env BENCH_DURATION)
  --rounds N         interleaved rounds; the report shows medians (default 3; env BENCH_ROUNDS)
  --proxies LIST     comma list of weir,haproxy,nginx (default all three; env BENCH_PROXIES)
  --scenarios LIST   comma list of h1,h2c,tls (default all three)
  --callgrind N      also count each proxy's user-space instructions per request over N
                     requests (h1 and h2c, under valgrind's callgrind, weir and HAProxy):
                     a figure that, unlike CPU time, hardly moves between runs; with it
                     simulated cache misses, mispredicted branches, atomic instructions,
                     clock readings and the code run per request
  --paired N         also N alternating pairs of short runs (h1 and h2c) with every proxy
                     up at once: CPU per request from runs seconds apart, so that drifts
                     of the machine between rounds weigh less (default 0)
  --pair-duration S  length of each paired run (default 4)
  --h2c-rate N       h2c load at a fixed N requests per second (a multiple of 10, split
                     over h2load's 10 connections) instead of as many as the proxy
                     serves: CPU per request of every proxy at the same load
  --weir PATH        weir binary (default target/release/weir; env BENCH_WEIR)
  --out FILE         report path (default bench/results/http-<UTC date>.md)
  --quick            smoke test: --duration 3 --rounds 1
  --port-base PORT   first port used (default 17400; the run uses PORT..PORT+49)
  --keep-work        keep the work dir (configs, logs, raw tool outputs)
  -h, --help         this help
EOF
}

die() { echo "http.sh: error: $*" >&2; exit 1; }
log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

DURATION=${BENCH_DURATION:-}
ROUNDS=${BENCH_ROUNDS:-}
PROXIES=${BENCH_PROXIES:-weir,haproxy,nginx}
SCENARIOS=h1,h2c,tls
CALLGRIND=0
PAIRED=0
PAIR_DURATION=4
H2C_RATE=0
WEIR=${BENCH_WEIR:-$REPO_ROOT/target/release/weir}
OUT=""
QUICK=0
PORT_BASE=17400
KEEP_WORK=0
while (($#)); do
    case $1 in
        --duration) DURATION=${2:?}; shift 2 ;;
        --rounds) ROUNDS=${2:?}; shift 2 ;;
        --proxies) PROXIES=${2:?}; shift 2 ;;
        --scenarios) SCENARIOS=${2:?}; shift 2 ;;
        --callgrind) CALLGRIND=${2:?}; shift 2 ;;
        --paired) PAIRED=${2:?}; shift 2 ;;
        --pair-duration) PAIR_DURATION=${2:?}; shift 2 ;;
        --h2c-rate) H2C_RATE=${2:?}; shift 2 ;;
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
IFS=, read -r -a SCENARIO_LIST <<<"$SCENARIOS"
for s in "${SCENARIO_LIST[@]}"; do
    [[ $s == h1 || $s == h2c || $s == tls ]] || die "unknown scenario: $s (h1, h2c or tls)"
done
[[ $CALLGRIND =~ ^[0-9]+$ ]] || die "--callgrind takes a request count"
[[ $PAIRED =~ ^[0-9]+$ ]] || die "--paired takes a number of pairs"
[[ $PAIR_DURATION =~ ^[1-9][0-9]*$ ]] || die "--pair-duration takes whole seconds"
[[ $H2C_RATE =~ ^[0-9]+$ ]] && ((H2C_RATE % 10 == 0)) || die "--h2c-rate takes requests per second, a multiple of 10"
# h2load's --rps is per connection.
H2C_LOAD=(-t1 -c10 -m10)
((H2C_RATE > 0)) && H2C_LOAD+=(--rps $((H2C_RATE / 10)))
if ((CALLGRIND)); then
    for c in valgrind callgrind_control; do
        command -v "$c" >/dev/null || die "missing $c — apt-get install -y valgrind"
    done
    command -v objdump >/dev/null || die "missing objdump — apt-get install -y binutils"
fi
for v in DURATION ROUNDS PORT_BASE; do
    [[ ${!v} =~ ^[0-9]+$ && ${!v} -gt 0 ]] || die "$v must be a positive integer"
done

for c in haproxy nginx wrk h2load openssl python3 ss taskset timeout pgrep; do
    command -v "$c" >/dev/null || die "missing $c — apt-get install -y haproxy nginx wrk nghttp2-client openssl"
done
taskset -c 0,1 true 2>/dev/null || die "CPUs 0 and 1 must both be available"
IFS=, read -r -a KEYS <<<"$PROXIES"
declare -A LABEL=([weir]=weir [haproxy]=HAProxy [nginx]=nginx)
for k in "${KEYS[@]}"; do [[ -n ${LABEL[$k]:-} ]] || die "unknown proxy '$k'"; done
if [[ ,$PROXIES, == *,weir,* ]]; then
    WEIR=$(realpath -m -- "$WEIR")
    [[ -x $WEIR ]] || die "weir binary not found at $WEIR — cargo build --release, or --weir PATH"
fi

# ---------------------------------------------------------------- processes
declare -A STARTED=()
WORK=$(mktemp -d "${TMPDIR:-/tmp}/weir-http-bench.XXXXXX")
RAW=$WORK/raw.jsonl
META=$WORK/meta.txt
: >"$RAW"
# shellcheck source=bench/common.sh
source "$BENCH_DIR/common.sh"
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${!STARTED[@]}"; do stop_pid "$pid"; done
    if ((rc != 0 || KEEP_WORK)); then echo "http.sh: work dir kept: $WORK" >&2; else rm -rf -- "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
wait_listen() { # pid deadline_s port...
    local pid=$1 deadline=$((SECONDS + $2)) port
    shift 2
    for port in "$@"; do
        until [[ -n $(ss -Hltn "( sport = :$port )") ]]; do
            alive "$pid" && ((SECONDS < deadline)) || return 1
            sleep 0.1
        done
    done
}
wait_quiet() { # port...: until no connection (TIME_WAIT aside) uses the ports, 60 s at most
    local filter="" p deadline=$((SECONDS + 60))
    for p in "$@"; do filter+="${filter:+ or }sport = :$p or dport = :$p"; done
    while [[ -n $(ss -Htn state connected exclude time-wait "( $filter )") ]] && ((SECONDS < deadline)); do
        sleep 0.2
    done
}

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
MAXCONN=$(( (NOFILE - 200) / 2 < 20000 ? (NOFILE - 200) / 2 : 20000 ))
NGINX_PORT=$PORT_BASE
declare -A FRONT_H1=() FRONT_H2C=() FRONT_TLS=()
i=1
for k in "${KEYS[@]}"; do
    FRONT_H1[$k]=$((PORT_BASE + 10 * i)); FRONT_H2C[$k]=$((PORT_BASE + 10 * i + 1)); FRONT_TLS[$k]=$((PORT_BASE + 10 * i + 2))
    i=$((i + 1))
done

# ---------------------------------------------------------------- backend and certificate
BODY=$(printf 'x%.0s' $(seq 1023))'\n'
# One ECDSA P-256 certificate for every proxy: the handshakes cost the same.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=bench.weir -addext subjectAltName=DNS:bench.weir \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
cat "$WORK/cert.pem" "$WORK/key.pem" >"$WORK/combined.pem"
mkdir -p "$WORK/backend/tmp"
render nginx-backend.conf.in "$WORK/backend/nginx.conf" DIR="$WORK/backend" NOFILE="$NOFILE" \
    MAXCONN="$MAXCONN" NGINX_PORT="$NGINX_PORT" BODY="$BODY"
launch "backend nginx" "$WORK/backend/out.log" taskset -c 0 \
    nginx -p "$WORK/backend/" -e "$WORK/backend/error.log" -c "$WORK/backend/nginx.conf" -g 'daemon off;'
wait_listen "$LAUNCHED_PID" 20 "$NGINX_PORT" || die "backend nginx did not start"

start_proxy() { # dir key [wrapper...] -> PROXY_PID; a wrapper (valgrind) runs the proxy under it
    local dir=$1 key=$2 wait=20
    shift 2
    (($#)) && wait=120
    mkdir -p "$dir"
    local vars=(DIR="$dir" NOFILE="$NOFILE" MAXCONN="$MAXCONN" NGINX_PORT="$NGINX_PORT"
        FRONT_H1="${FRONT_H1[$key]}" FRONT_H2C="${FRONT_H2C[$key]}" FRONT_TLS="${FRONT_TLS[$key]}"
        CERT="$WORK/cert.pem" KEY="$WORK/key.pem" CERT_COMBINED="$WORK/combined.pem")
    case $key in
        haproxy)
            render haproxy-http.cfg.in "$dir/haproxy.cfg" "${vars[@]}"
            launch haproxy "$dir/proxy.log" taskset -c 1 "$@" haproxy -db -f "$dir/haproxy.cfg" ;;
        nginx)
            render nginx-http.conf.in "$dir/nginx.conf" "${vars[@]}"
            launch nginx "$dir/proxy.log" taskset -c 1 "$@" \
                nginx -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf" -g 'daemon off;' ;;
        weir)
            render weir-http.toml.in "$dir/weir.toml" "${vars[@]}"
            launch weir "$dir/proxy.log" taskset -c 1 "$@" "$WEIR" run --config "$dir/weir.toml" ;;
    esac
    PROXY_PID=$LAUNCHED_PID
    wait_listen "$PROXY_PID" "$wait" "${FRONT_H1[$key]}" "${FRONT_H2C[$key]}" "${FRONT_TLS[$key]}" \
        || { tail -n 20 "$dir/proxy.log" >&2; die "${LABEL[$key]} did not start"; }
}

# ---------------------------------------------------------------- measurements
CLK_TCK=$(getconf CLK_TCK)
per_request_us() { # ticks_before ticks_after requests -> CPU µs per request
    python3 -c "b, a, n = $1, $2, float('$3' or 0); print(round((a - b) / $CLK_TCK / n * 1e6, 2) if n > 0 else 'null')" 2>/dev/null || echo null
}
TIMEOUT=$((DURATION + 30))

run_scenario() { # round key scenario pid
    local r=$1 key=$2 s=$3 pid=$4 f=$WORK/r$1-$2-$3.txt t0 t1 k0 k1 rps p50=null p99=null errs=0 n
    t0=$(cpu_ticks "$pid")
    k0=$(cpu_ticks "$pid" sys)
    case $s in
        h1)
            timeout -k 5 $TIMEOUT taskset -c 0 wrk -t1 -c50 -d"${DURATION}s" --timeout 5s --latency \
                -s "$BENCH_DIR/wrk_report.lua" "http://127.0.0.1:${FRONT_H1[$key]}/" >"$f" 2>&1 || true
            read -r rps p50 p99 errs < <(python3 "$BENCH_DIR/report.py" wrk "$f" 2>/dev/null) ;;
        h2c)
            timeout -k 5 $TIMEOUT taskset -c 0 h2load "${H2C_LOAD[@]}" -D "$DURATION" \
                "http://127.0.0.1:${FRONT_H2C[$key]}/" >"$f" 2>&1 || true
            read -r rps errs < <(python3 "$BENCH_DIR/report.py" h2load "$f" 2>/dev/null) ;;
        tls)
            timeout -k 5 $TIMEOUT taskset -c 0 wrk -t1 -c50 -d"${DURATION}s" --timeout 5s --latency \
                -H 'Connection: close' -s "$BENCH_DIR/wrk_report.lua" \
                "https://127.0.0.1:${FRONT_TLS[$key]}/" >"$f" 2>&1 || true
            read -r rps p50 p99 errs < <(python3 "$BENCH_DIR/report.py" wrk "$f" 2>/dev/null) ;;
    esac
    t1=$(cpu_ticks "$pid")
    k1=$(cpu_ticks "$pid" sys)
    n=$(python3 -c "print(float('$rps') * $DURATION)" 2>/dev/null || echo 0)
    local per
    per=$(per_request_us "$t0" "$t1" "$n")
    record "$r" "$key" "${s}_rps" "$rps"
    record "$r" "$key" "${s}_p50_ms" "$p50"
    record "$r" "$key" "${s}_p99_ms" "$p99"
    record "$r" "$key" "${s}_cpu_us" "$per"
    record "$r" "$key" "${s}_sys_us" "$(per_request_us "$k0" "$k1" "$n")"
    record "$r" "$key" "${s}_errors" "$errs"
    log "    $s: $rps req/s, p99 $p99 ms, $errs errors, proxy CPU $per µs/request"
}

# Paired runs: every proxy is up at once (each on its own ports, all on CPU 1,
# the idle ones using none) and takes its turn in a short run, the order
# rotating from pair to pair. A proxy's figure and the next one's are seconds
# apart, not a whole round: what the machine's neighbours do weighs on both.
pair_run() { # pair key scenario pid
    local p=$1 key=$2 s=$3 pid=$4 f=$WORK/pair$1-$2-$3.txt t0 t1 rps n per
    local timeout=$((PAIR_DURATION + 30))
    t0=$(cpu_ticks "$pid")
    case $s in
        h1)
            timeout -k 5 $timeout taskset -c 0 wrk -t1 -c50 -d"${PAIR_DURATION}s" --timeout 5s \
                -s "$BENCH_DIR/wrk_report.lua" "http://127.0.0.1:${FRONT_H1[$key]}/" >"$f" 2>&1 || true
            read -r rps _ < <(python3 "$BENCH_DIR/report.py" wrk "$f" 2>/dev/null) ;;
        h2c)
            timeout -k 5 $timeout taskset -c 0 h2load "${H2C_LOAD[@]}" -D "$PAIR_DURATION" \
                "http://127.0.0.1:${FRONT_H2C[$key]}/" >"$f" 2>&1 || true
            read -r rps _ < <(python3 "$BENCH_DIR/report.py" h2load "$f" 2>/dev/null) ;;
    esac
    t1=$(cpu_ticks "$pid")
    n=$(python3 -c "print(float('$rps') * $PAIR_DURATION)" 2>/dev/null || echo 0)
    per=$(per_request_us "$t0" "$t1" "$n")
    record "$p" "$key" "${s}_pair_cpu_us" "$per"
    log "    pair $p $s ${LABEL[$key]}: proxy CPU $per µs/request"
}
run_pairs() {
    local -A pids=()
    local key p s i order
    for key in "${KEYS[@]}"; do
        wait_quiet "${FRONT_H1[$key]}" "${FRONT_H2C[$key]}" "${FRONT_TLS[$key]}"
        start_proxy "$WORK/pairs-$key" "$key"
        pids[$key]=$PROXY_PID
    done
    for ((p = 1; p <= PAIRED; p++)); do
        # Each pair starts with the next proxy.
        order=()
        for ((i = 0; i < ${#KEYS[@]}; i++)); do
            order+=("${KEYS[(p - 1 + i) % ${#KEYS[@]}]}")
        done
        for s in "${SCENARIO_LIST[@]}"; do
            [[ $s == h1 || $s == h2c ]] || continue
            for key in "${order[@]}"; do
                pair_run "$p" "$key" "$s" "${pids[$key]}"
                wait_quiet "${FRONT_H1[$key]}" "${FRONT_H2C[$key]}"
            done
        done
    done
    for key in "${KEYS[@]}"; do stop_pid "${pids[$key]}"; done
}

# User-space instructions per request, counted by callgrind: the proxy runs
# under valgrind (about 50 times slower, so the load is a fixed request count,
# not a duration), the counters are zeroed after a warm-up and dumped after N
# requests; callgrind_summary.py reads the rest from the same profile. nginx
# forks its workers, which this does not follow: skipped.
proxy_binary() { # key -> the executable that runs the proxy's code
    case $1 in
        weir) echo "$WEIR" ;;
        *) realpath -- "$(command -v "$1")" ;;
    esac
}
count_instructions() { # key
    local key=$1 dir=$WORK/callgrind-$1 s url pid f ir
    [[ $key == nginx ]] && { log "callgrind: nginx skipped (forked workers)"; return; }
    start_proxy "$dir" "$key" valgrind --tool=callgrind --cache-sim=yes --branch-sim=yes \
        --dump-instr=yes --dump-line=no --callgrind-out-file="$dir/callgrind.out"
    pid=$PROXY_PID
    for s in "${SCENARIO_LIST[@]}"; do
        case $s in
            h1) url=(--h1 -c10 "http://127.0.0.1:${FRONT_H1[$key]}/") ;;
            h2c) url=(-c5 -m10 "http://127.0.0.1:${FRONT_H2C[$key]}/") ;;
            *) continue ;;
        esac
        timeout -k 5 300 taskset -c 0 h2load -t1 -n 500 "${url[@]}" >/dev/null 2>&1 || true
        rm -f "$dir"/callgrind.out.*
        callgrind_control -z "$pid" >/dev/null
        timeout -k 5 600 taskset -c 0 h2load -t1 -n "$CALLGRIND" "${url[@]}" >"$dir/$s.txt" 2>&1 || true
        callgrind_control -d "$pid" >/dev/null
        f=$(ls -t "$dir"/callgrind.out.* 2>/dev/null | head -n 1)
        ir=$(awk '/^(summary|totals):/ {print $2; exit}' "${f:-/dev/null}")
        if grep -q "^requests: $CALLGRIND total.* $CALLGRIND succeeded" "$dir/$s.txt" && [[ -n $ir ]]; then
            record 1 "$key" "${s}_instr" "$((ir / CALLGRIND))"
            log "    callgrind $s: $((ir / CALLGRIND)) instructions per request"
            # What else the same profile says per request (cache and branch
            # models, atomic instructions, clock readings, code touched).
            local k v
            while read -r k v; do
                [[ $k == instr ]] || record 1 "$key" "${s}_$k" "$v"
            done < <(python3 "$BENCH_DIR/callgrind_summary.py" "$f" "$CALLGRIND" "$(proxy_binary "$key")" 2>>"$dir/summary.err")
        else
            log "    callgrind $s: the load did not complete; no figure"
        fi
    done
    stop_pid "$pid"
}

{
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "nproc=$(nproc)"
    echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo unknown)"
    echo "mem=$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
    echo "kernel=$(uname -sr)"
    [[ ,$PROXIES, == *,weir,* ]] && echo "weir=$("$WEIR" --version | head -n1) (git $(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown))"
    echo "haproxy=$(haproxy -v 2>&1 | head -n1)"
    echo "nginx=$(nginx -v 2>&1 | head -n1)"
    echo "wrk=$(wrk -v 2>&1 | head -n1)"
    echo "h2load=$(h2load --version 2>&1 | head -n1)"
    echo "openssl=$(openssl version)"
    echo "duration=$DURATION"
    echo "rounds=$ROUNDS"
    echo "paired=$PAIRED"
    echo "pair_duration=$PAIR_DURATION"
    echo "h2c_rate=$H2C_RATE"
    echo "proxies=$(IFS=,; echo "${KEYS[*]}")"
    labels=(); for k in "${KEYS[@]}"; do labels+=("${LABEL[$k]}"); done
    echo "labels=$(IFS=,; echo "${labels[*]}")"
    echo "desc_weir=one l7 route per port, \`worker_threads = 1\`, access log off, \`upstream_keepalive = 60s\`"
    echo "desc_haproxy=\`mode http\`, \`nbthread 1\`, \`http-reuse always\`, h2c by \`proto h2\`, \`option forwardfor\` + X-Forwarded-Proto/-Host + \`unique-id-header X-Request-ID\` (the headers weir adds by default)"
    echo "desc_nginx=\`worker_processes 1\`, \`proxy_pass\` to an upstream with \`keepalive 64\`, h2c by \`listen ... http2\`, Host kept, X-Forwarded-For/-Proto/-Host and X-Request-ID set (the headers weir adds by default)"
} >"$META"

log "work dir $WORK; proxies: ${KEYS[*]}; $ROUNDS round(s) of ${DURATION}s runs"
for ((round = 1; round <= ROUNDS; round++)); do
    for key in "${KEYS[@]}"; do
        log "round $round/$ROUNDS: ${LABEL[$key]}"
        # Client connections only: the proxies keep their backend connections
        # alive on purpose.
        ports=("${FRONT_H1[$key]}" "${FRONT_H2C[$key]}" "${FRONT_TLS[$key]}")
        wait_quiet "${ports[@]}"
        start_proxy "$WORK/r$round-$key" "$key"
        for s in "${SCENARIO_LIST[@]}"; do
            run_scenario "$round" "$key" "$s" "$PROXY_PID"
            wait_quiet "${ports[@]}"
        done
        stop_pid "$PROXY_PID"
    done
done

if ((PAIRED)); then
    log "paired runs: $PAIRED pair(s) of ${PAIR_DURATION}s runs"
    run_pairs
fi

if ((CALLGRIND)); then
    for key in "${KEYS[@]}"; do
        log "callgrind: ${LABEL[$key]}, $CALLGRIND requests per scenario"
        wait_quiet "${FRONT_H1[$key]}" "${FRONT_H2C[$key]}"
        count_instructions "$key"
    done
fi

if [[ -z $OUT ]]; then
    OUT=$BENCH_DIR/results/http-$(date -u +%Y-%m-%d).md
    [[ -e $OUT ]] && OUT=$BENCH_DIR/results/http-$(date -u +%Y-%m-%d-%H%M%S).md
fi
mkdir -p "$(dirname -- "$OUT")"
python3 "$BENCH_DIR/report.py" render --suite http --raw "$RAW" --meta "$META" --out "$OUT"
cp "$RAW" "${OUT%.md}.raw.jsonl"
log "report written to $OUT"
