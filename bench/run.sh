#!/usr/bin/env bash
# Side-by-side L4 benchmark on loopback: weir vs HAProxy (`mode tcp`) vs nginx (`stream`).
# Writes a markdown report (medians, ratios to HAProxy, per-round numbers) and prints it.
# See bench/README.md.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_DIR/.." && pwd)

usage() {
    cat <<EOF
Usage: bench/run.sh [options]

  --duration SECS       length of each load run (default 10; env BENCH_DURATION)
  --rounds N            interleaved rounds; the report shows medians (default 3; env BENCH_ROUNDS)
  --proxies LIST        comma list of weir,haproxy,nginx,direct (default weir,haproxy,nginx;
                        'direct' = no proxy, the load generators' ceiling; env BENCH_PROXIES)
  --weir PATH           weir binary (default target/release/weir in the repo; env BENCH_WEIR)
  --weir-modes LIST     comma list of default,splice,copy,nometrics: run weir once per mode
                        with runtime.zero_copy unset / true / false, or (nometrics) the
                        binary built without the metrics feature (default: default)
  --weir-nometrics PATH that binary (default target/nometrics/release/weir; build it with
                        cargo build --release -p weir --no-default-features --target-dir target/nometrics)
  --out FILE            report path (default bench/results/<UTC date>.md; env BENCH_OUT)
  --quick               smoke test: --duration 3 --rounds 1 (explicit flags still win)
  --idle-conns N        connections for the idle-memory test (default 10000, capped by ulimit -n)
  --wrk-conns N         wrk connections (default 50)
  --port-base PORT      first port used (default 17100; the run uses PORT..PORT+99)
  --haproxy-splice      add 'option splice-auto' to HAProxy (default: HAProxy's defaults, no splice)
  --keep-work           keep the temporary work dir (configs, logs, raw outputs)
  -h, --help            this help
EOF
}

die() { echo "run.sh: error: $*" >&2; exit 1; }
log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
warn() { log "WARNING: $*"; NOTES+=("$*"); }

# ---------------------------------------------------------------- options
DURATION=${BENCH_DURATION:-}
ROUNDS=${BENCH_ROUNDS:-}
PROXIES=${BENCH_PROXIES:-weir,haproxy,nginx}
WEIR=${BENCH_WEIR:-$REPO_ROOT/target/release/weir}
WEIR_MODES=${BENCH_WEIR_MODES:-default}
WEIR_NOMETRICS=${BENCH_WEIR_NOMETRICS:-target/nometrics/release/weir}
OUT=${BENCH_OUT:-}
QUICK=0
IDLE_CONNS=10000
WRK_CONNS=50
PORT_BASE=17100
HAPROXY_SPLICE=0
KEEP_WORK=0

while (($#)); do
    if [[ $1 == --*=* ]]; then set -- "${1%%=*}" "${1#*=}" "${@:2}"; fi
    case $1 in
        --duration|--rounds|--proxies|--weir|--weir-modes|--weir-nometrics|--out|--idle-conns|--wrk-conns|--port-base)
            (($# >= 2)) || die "$1 needs a value"
            case $1 in
                --duration) DURATION=$2 ;;
                --rounds) ROUNDS=$2 ;;
                --proxies) PROXIES=$2 ;;
                --weir) WEIR=$2 ;;
                --weir-modes) WEIR_MODES=$2 ;;
                --weir-nometrics) WEIR_NOMETRICS=$2 ;;
                --out) OUT=$2 ;;
                --idle-conns) IDLE_CONNS=$2 ;;
                --wrk-conns) WRK_CONNS=$2 ;;
                --port-base) PORT_BASE=$2 ;;
            esac
            shift 2 ;;
        --quick) QUICK=1; shift ;;
        --haproxy-splice) HAPROXY_SPLICE=1; shift ;;
        --keep-work) KEEP_WORK=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done
if ((QUICK)); then DURATION=${DURATION:-3}; ROUNDS=${ROUNDS:-1}; fi
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
for v in DURATION ROUNDS IDLE_CONNS WRK_CONNS PORT_BASE; do
    [[ ${!v} =~ ^[0-9]+$ && ${!v} -gt 0 ]] || die "$v must be a positive integer (got '${!v}')"
done
((PORT_BASE + 99 <= 65535)) || die "--port-base too high"

# Proxy keys in run order, with labels and ports.
declare -a KEYS=()
declare -A LABEL=() FRONT_HTTP=() FRONT_IPERF=() WEIR_MODE=()
NGINX_PORT=$PORT_BASE
IPERF_PORT=$((PORT_BASE + 1))
add_key() { # key label
    KEYS+=("$1"); LABEL[$1]=$2
    if [[ $1 == direct ]]; then
        FRONT_HTTP[$1]=$NGINX_PORT; FRONT_IPERF[$1]=$IPERF_PORT
    else
        FRONT_HTTP[$1]=$((PORT_BASE + 10 * ${#KEYS[@]})); FRONT_IPERF[$1]=$((PORT_BASE + 10 * ${#KEYS[@]} + 1))
    fi
}
IFS=, read -r -a _proxies <<<"$PROXIES"
for p in "${_proxies[@]}"; do
    case $p in
        weir)
            IFS=, read -r -a _modes <<<"$WEIR_MODES"
            for m in "${_modes[@]}"; do
                case $m in
                    default) add_key weir "weir"; WEIR_MODE[weir]=default ;;
                    splice|copy) add_key "weir-$m" "weir ($m)"; WEIR_MODE[weir-$m]=$m ;;
                    nometrics) add_key weir-nometrics "weir (metrics compiled out)"; WEIR_MODE[weir-nometrics]=nometrics ;;
                    *) die "unknown weir mode '$m' (default, splice, copy, nometrics)" ;;
                esac
            done ;;
        haproxy) add_key haproxy "HAProxy" ;;
        nginx) add_key nginx "nginx" ;;
        direct) add_key direct "direct (no proxy)" ;;
        '') ;;
        *) die "unknown proxy '$p' (weir, haproxy, nginx, direct)" ;;
    esac
done
((${#KEYS[@]})) || die "no proxies to run"
((${#KEYS[@]} <= 8)) || die "too many proxies"
[[ $(printf '%s\n' "${KEYS[@]}" | sort | uniq -d) == "" ]] || die "a proxy is listed twice"

# ---------------------------------------------------------------- prerequisites
missing=()
for c in haproxy nginx iperf3 wrk python3 ss taskset timeout pgrep; do
    command -v "$c" >/dev/null || missing+=("$c")
done
((${#missing[@]} == 0)) || die "missing: ${missing[*]} — apt-get install -y haproxy nginx libnginx-mod-stream iperf3 wrk"
STREAM_MODULE=
if nginx -V 2>&1 | grep -q -- '--with-stream=dynamic'; then
    for f in /usr/lib/nginx/modules/ngx_stream_module.so /usr/share/nginx/modules/ngx_stream_module.so; do
        [[ -f $f ]] && STREAM_MODULE=$f && break
    done
    [[ -n $STREAM_MODULE ]] || die "nginx stream module not found — apt-get install -y libnginx-mod-stream"
elif ! nginx -V 2>&1 | grep -q -- '--with-stream'; then
    die "this nginx has no stream module"
fi
WEIR_USED=0
for k in "${KEYS[@]}"; do [[ $k == weir* ]] && WEIR_USED=1; done
if ((WEIR_USED)); then
    WEIR=$(realpath -m -- "$WEIR")
    [[ -x $WEIR ]] || die "weir binary not found at $WEIR — build it (cargo build --release), pass --weir PATH, or run --proxies haproxy,nginx"
    if [[ ,$WEIR_MODES, == *,nometrics,* ]]; then
        WEIR_NOMETRICS=$(realpath -m -- "$WEIR_NOMETRICS")
        [[ -x $WEIR_NOMETRICS ]] || die "no weir without metrics at $WEIR_NOMETRICS — cargo build --release -p weir --no-default-features --target-dir target/nometrics"
    fi
fi
taskset -c 0,1 true 2>/dev/null || die "CPUs 0 and 1 must both be available (taskset -c 0,1 failed)"

[[ -z $OUT ]] || OUT=$(realpath -m -- "$OUT")

# ---------------------------------------------------------------- state and cleanup
NOTES=()
declare -A STARTED=()   # pid -> name: every process this script started and has not stopped
declare -A SYSCTL_ORIG=()
WORK=$(mktemp -d "${TMPDIR:-/tmp}/weir-bench.XXXXXX")
RAW=$WORK/raw.jsonl
META=$WORK/meta.txt
: >"$RAW"

alive() { # pid: exists and is not a zombie
    local st
    st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [[ -n $st && $st != Z ]]
}
descendants() {
    local p
    for p in $(pgrep -P "$1" 2>/dev/null || true); do echo "$p"; descendants "$p"; done
}
stop_pid() { # pid: TERM it, wait for it and its children, KILL what is left; forget it
    local pid=$1 p any deadline tree
    tree="$pid $(descendants "$pid" | tr '\n' ' ')"
    if alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$((SECONDS + 10))
        while ((SECONDS < deadline)); do
            any=0
            for p in $tree; do alive "$p" && any=1; done
            ((any)) || break
            sleep 0.1
        done
        for p in $tree; do
            if alive "$p"; then log "killing $p (${STARTED[$pid]:-child of $pid}) with SIGKILL"; kill -KILL "$p" 2>/dev/null || true; fi
        done
    fi
    wait "$pid" 2>/dev/null || true
    unset 'STARTED[$pid]'
}
launch() { # name logfile cmd... -> LAUNCHED_PID
    local name=$1 logf=$2; shift 2
    "$@" >"$logf" 2>&1 </dev/null &
    LAUNCHED_PID=$!
    STARTED[$LAUNCHED_PID]=$name
}
cleanup() {
    local rc=$? pid k
    trap - EXIT INT TERM
    for pid in "${!STARTED[@]}"; do stop_pid "$pid"; done
    for k in "${!SYSCTL_ORIG[@]}"; do
        sysctl -q -w "$k=${SYSCTL_ORIG[$k]}" >/dev/null 2>&1 || echo "run.sh: could not restore $k=${SYSCTL_ORIG[$k]}" >&2
    done
    if ((rc != 0 || KEEP_WORK)); then
        echo "run.sh: work dir kept: $WORK" >&2
    else
        rm -rf -- "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- limits and sysctls
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
[[ $NOFILE == unlimited ]] && NOFILE=1048576
if ((NOFILE < 200000)); then
    NOTES+=("\`ulimit -n\` could only be raised to $NOFILE (hard limit; raising it needs CAP_SYS_RESOURCE).")
fi
# A proxy needs two descriptors per relayed connection.
max_idle=$(( (NOFILE - 500) / 2 / 1000 * 1000 ))
if ((IDLE_CONNS > max_idle)); then
    NOTES+=("Idle test capped at $max_idle connections (asked for $IDLE_CONNS): a proxy needs 2 descriptors per connection and \`ulimit -n\` is $NOFILE.")
    IDLE_CONNS=$max_idle
fi
((IDLE_CONNS > 0)) || die "ulimit -n $NOFILE is too low for the idle test"

set_sysctl() { # key value reason
    local key=$1 want=$2 file=/proc/sys/${1//.//} cur
    cur=$(tr -s '\t ' ' ' <"$file" 2>/dev/null) || { NOTES+=("sysctl $key: not readable, left alone."); return 0; }
    [[ $cur == "$want" ]] && return 0
    if sysctl -q -w "$key=$want" >/dev/null 2>&1; then
        SYSCTL_ORIG[$key]=$cur
        NOTES+=("sysctl \`$key\` set to \`$want\` for the run (was \`$cur\`; restored at exit) — $3.")
    else
        NOTES+=("sysctl \`$key\` is not writable here; left at \`$cur\`.")
    fi
}
tw=$(cat /proc/sys/net/ipv4/tcp_tw_reuse 2>/dev/null || echo 0)
if [[ $tw == 0 ]]; then
    set_sysctl net.ipv4.tcp_tw_reuse 1 "so the connection-rate runs can reuse TIME_WAIT ports"
else
    NOTES+=("sysctl \`net.ipv4.tcp_tw_reuse\` is \`$tw\` (TIME_WAIT reuse already on for loopback); left alone.")
fi
read -r lo hi </proc/sys/net/ipv4/ip_local_port_range
if ((PORT_BASE + 99 < 20000 && (lo > 20000 || hi < 65000))); then
    set_sysctl net.ipv4.ip_local_port_range "20000 65000" "more ephemeral ports for the connection-rate runs (the bench's own ports stay below it)"
fi
read -r lo hi </proc/sys/net/ipv4/ip_local_port_range
if ((PORT_BASE + 99 >= lo && PORT_BASE <= hi)); then
    NOTES+=("The bench ports ($PORT_BASE-$((PORT_BASE + 99))) overlap the ephemeral range ($lo-$hi); a bind could fail if a client happens to hold one.")
fi

# ---------------------------------------------------------------- ports
# TIME_WAIT leftovers of an earlier run do not stop a listener from binding (SO_REUSEADDR).
port_in_use() { [[ -n $(ss -Htan exclude time-wait "( sport = :$1 )" 2>/dev/null) ]]; }
ALL_PORTS=("$NGINX_PORT" "$IPERF_PORT")
for k in "${KEYS[@]}"; do [[ $k == direct ]] || ALL_PORTS+=("${FRONT_HTTP[$k]}" "${FRONT_IPERF[$k]}"); done
for p in "${ALL_PORTS[@]}"; do
    port_in_use "$p" && die "port $p is in use (try --port-base)"
done

wait_listen() { # pid deadline_s port...: wait until every port listens; fail if pid dies
    local pid=$1 deadline=$((SECONDS + $2)) port
    shift 2
    for port in "$@"; do
        until [[ -n $(ss -Hltn "( sport = :$port )") ]]; do
            alive "$pid" || return 1
            ((SECONDS < deadline)) || return 1
            sleep 0.1
        done
    done
}
wait_closed() { # deadline_s port...: wait until no listener on the ports
    local deadline=$((SECONDS + $1)) port
    shift
    for port in "$@"; do
        until [[ -z $(ss -Hltn "( sport = :$port )") ]]; do
            ((SECONDS < deadline)) || { warn "port $port still listening after $1 s"; return 0; }
            sleep 0.1
        done
    done
}
wait_quiet() { # port...: wait until no non-TIME_WAIT connection uses any of the ports
    local filter="" p deadline=$((SECONDS + 60)) n
    for p in "$@"; do filter+="${filter:+ or }sport = :$p or dport = :$p"; done
    while :; do
        n=$(ss -Htn state connected exclude time-wait "( $filter )" | wc -l)
        ((n == 0)) && return 0
        if ((SECONDS >= deadline)); then
            warn "$n connections still open on ports $* after 60 s; continuing"
            return 0
        fi
        sleep 0.2
    done
}

# ---------------------------------------------------------------- configs
BODY=$(printf 'x%.0s' $(seq 1023))'\n'   # 1023 x + newline = 1 KiB
BODY_BYTES=1024
# Generous connection limits, but within the descriptor limit (HAProxy refuses to start
# when maxconn needs more descriptors than `ulimit -n` allows: ~2 per connection).
HAPROXY_MAXCONN=$(( (NOFILE - 200) / 2 < 50000 ? (NOFILE - 200) / 2 : 50000 ))
NGINX_MAXCONN=$(( NOFILE < 50000 ? NOFILE : 50000 ))
((HAPROXY_MAXCONN >= 50000)) || NOTES+=("HAProxy \`maxconn\` lowered to $HAPROXY_MAXCONN and nginx \`worker_connections\` to $NGINX_MAXCONN to fit \`ulimit -n\` $NOFILE.")
render() { # template out [KEY=VALUE...]
    local tpl=$BENCH_DIR/templates/$1 out=$2 kv args=()
    shift 2
    for kv in "$@"; do
        local val=${kv#*=}
        val=${val//\\/\\\\}; val=${val//&/\\&}; val=${val//|/\\|}   # escape for sed
        args+=(-e "s|@${kv%%=*}@|${val}|g")
    done
    sed "${args[@]}" "$tpl" >"$out"
    if grep -q '@[A-Z_]*@' "$out"; then die "unsubstituted placeholder in $out"; fi
}
common_vars() { # key dir
    echo "DIR=$2" "FRONT_HTTP=${FRONT_HTTP[$1]:-0}" "FRONT_IPERF=${FRONT_IPERF[$1]:-0}" \
        "NGINX_PORT=$NGINX_PORT" "IPERF_PORT=$IPERF_PORT" "NOFILE=$NOFILE"
}

start_proxy() { # round key -> PROXY_PID
    local r=$1 key=$2 dir=$WORK/r$1-$2
    mkdir -p "$dir"
    # shellcheck disable=SC2046
    case $key in
        haproxy)
            local extra=""
            ((HAPROXY_SPLICE)) && extra="    option splice-auto"
            render haproxy.cfg.in "$dir/haproxy.cfg" $(common_vars "$key" "$dir") \
                "MAXCONN=$HAPROXY_MAXCONN" "HAPROXY_EXTRA_DEFAULTS=$extra"
            haproxy -c -q -f "$dir/haproxy.cfg" >"$dir/check.log" 2>&1 \
                || { cat "$dir/check.log" >&2; die "haproxy config check failed"; }
            launch "haproxy" "$dir/proxy.log" taskset -c 1 haproxy -db -f "$dir/haproxy.cfg" ;;
        nginx)
            local mod="$STREAM_MODULE"
            render nginx-stream.conf.in "$dir/nginx.conf" $(common_vars "$key" "$dir") \
                "MAXCONN=$NGINX_MAXCONN" "STREAM_MODULE=$mod"
            [[ -n $mod ]] || sed -i '/^load_module/d' "$dir/nginx.conf"
            nginx -t -q -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf" >"$dir/check.log" 2>&1 \
                || { cat "$dir/check.log" >&2; die "nginx stream config check failed"; }
            launch "nginx stream" "$dir/proxy.log" taskset -c 1 \
                nginx -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf" -g 'daemon off;' ;;
        weir*)
            local zc="# zero_copy: left at its default"
            case ${WEIR_MODE[$key]} in
                splice) zc="zero_copy = true" ;;
                copy) zc="zero_copy = false" ;;
            esac
            render weir.toml.in "$dir/weir.toml" $(common_vars "$key" "$dir") "ZERO_COPY_LINE=$zc"
            local bin=$WEIR
            [[ ${WEIR_MODE[$key]} == nometrics ]] && bin=$WEIR_NOMETRICS
            launch "$key" "$dir/proxy.log" taskset -c 1 "$bin" run --config "$dir/weir.toml" ;;
    esac
    PROXY_PID=$LAUNCHED_PID
    if ! wait_listen "$PROXY_PID" 20 "${FRONT_HTTP[$key]}" "${FRONT_IPERF[$key]}"; then
        tail -n 30 "$dir/proxy.log" "$dir/error.log" 2>/dev/null >&2 || true
        die "${LABEL[$key]} did not start listening on ${FRONT_HTTP[$key]}/${FRONT_IPERF[$key]} within 20 s"
    fi
}

start_backends() {
    local dir=$WORK/backend
    mkdir -p "$dir/tmp"
    # shellcheck disable=SC2046
    render nginx-backend.conf.in "$dir/nginx.conf" $(common_vars direct "$dir") \
        "MAXCONN=$NGINX_MAXCONN" "BODY=$BODY"
    nginx -t -q -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf" >"$dir/check.log" 2>&1 \
        || { cat "$dir/check.log" >&2; die "backend nginx config check failed"; }
    launch "backend nginx" "$dir/out.log" taskset -c 0 \
        nginx -p "$dir/" -e "$dir/error.log" -c "$dir/nginx.conf" -g 'daemon off;'
    BACKEND_PID=$LAUNCHED_PID
    wait_listen "$BACKEND_PID" 20 "$NGINX_PORT" || { cat "$dir/out.log" "$dir/error.log" >&2; die "backend nginx did not start"; }
    start_iperf_server
}
start_iperf_server() {
    launch "iperf3 server" "$WORK/iperf3-server.log" taskset -c 0 iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT"
    IPERF_PID=$LAUNCHED_PID
    wait_listen "$IPERF_PID" 20 "$IPERF_PORT" || { cat "$WORK/iperf3-server.log" >&2; die "iperf3 server did not start"; }
}
restart_iperf_server() {
    stop_pid "$IPERF_PID"
    wait_closed 10 "$IPERF_PORT"
    start_iperf_server
}

# ---------------------------------------------------------------- measurements
record() { # round key metric value
    local v=${4:-null}
    [[ $v =~ ^-?[0-9]+(\.[0-9]+)?$ ]] || v=null
    printf '{"round":%d,"proxy":"%s","metric":"%s","value":%s}\n' "$1" "$2" "$3" "$v" >>"$RAW"
}
LOAD_TIMEOUT() { echo $((DURATION + 30)); }

CLK_TCK=$(getconf CLK_TCK)
CUR_PID=""   # the proxy under test in this turn ("" for direct)
cpu_ticks() { # -> user+system clock ticks of CUR_PID and its descendants, or "null"
    [[ -n $CUR_PID ]] || { echo null; return; }
    local total=0 p f
    for p in "$CUR_PID" $(descendants "$CUR_PID"); do
        f=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null) || continue
        read -r -a fs <<<"$f"
        # after the command name: state is field 3 of stat, utime 14 and stime 15
        total=$((total + fs[11] + fs[12]))
    done
    echo "$total"
}
record_cpu() { # round key prefix ticks_before ticks_after work_units  (units: GB or requests)
    local r=$1 key=$2 prefix=$3 b=$4 a=$5 units=$6 vals
    if [[ $b == null || $a == null ]]; then
        record "$r" "$key" "${prefix}_cpu_pct" null
        return
    fi
    vals=$(python3 -c "
import sys
b, a, tck, dur, units = int('$b'), int('$a'), int('$CLK_TCK'), float('$DURATION'), '$units'
cpu = (a - b) / tck
pct = 100 * cpu / dur
try:
    u = float(units)
    per = cpu / u if u > 0 else None
except ValueError:
    per = None
print(round(pct, 1), 'null' if per is None else per)
")
    local pct per
    read -r pct per <<<"$vals"
    record "$r" "$key" "${prefix}_cpu_pct" "$pct"
    echo "$per"
}

run_iperf() { # round key port streams
    local r=$1 key=$2 port=$3 n=$4 f=$WORK/r$1-$2-iperf-P$4.json v
    log "  iperf3 -P $n (${DURATION}s)"
    local t0 t1 gb per
    t0=$(cpu_ticks)
    timeout -k 5 "$(LOAD_TIMEOUT)" taskset -c 0 \
        iperf3 -c 127.0.0.1 -p "$port" -t "$DURATION" -P "$n" -J --connect-timeout 3000 >"$f" 2>"$f.err" \
        || { warn "iperf3 -P $n through ${LABEL[$key]} failed (exit $?) in round $r"; restart_iperf_server; }
    t1=$(cpu_ticks)
    v=$(python3 "$BENCH_DIR/report.py" iperf "$f" 2>>"$f.err")
    gb=$(python3 -c "print(float('$v') * $DURATION / 8)" 2>/dev/null || echo null)
    per=$(record_cpu "$r" "$key" "tput_p${n}" "$t0" "$t1" "$gb")
    log "    -> $v Gbit/s (proxy CPU ${per:-?} s/GB)"
    record "$r" "$key" "tput_p${n}_gbps" "$v"
    record "$r" "$key" "tput_p${n}_cpu_s_per_gb" "$per"
}

run_wrk() { # round key port close|ka
    local r=$1 key=$2 port=$3 mode=$4 f=$WORK/r$1-$2-wrk-$4.txt rps p50 p99 errs
    local -a hdr=()
    local what="keep-alive"
    [[ $mode == conn ]] && hdr=(-H 'Connection: close') && what="Connection: close"
    log "  wrk -c$WRK_CONNS, $what (${DURATION}s)"
    local t0 t1 reqs per
    t0=$(cpu_ticks)
    timeout -k 5 "$(LOAD_TIMEOUT)" taskset -c 0 \
        wrk -t1 -c"$WRK_CONNS" -d"${DURATION}s" --timeout 5s --latency \
        -s "$BENCH_DIR/wrk_report.lua" "${hdr[@]}" "http://127.0.0.1:$port/" >"$f" 2>&1 \
        || warn "wrk ($mode) through ${LABEL[$key]} failed (exit $?) in round $r"
    t1=$(cpu_ticks)
    read -r rps p50 p99 errs < <(python3 "$BENCH_DIR/report.py" wrk "$f" 2>>"$f.err")
    reqs=$(python3 -c "print(float('$rps') * $DURATION)" 2>/dev/null || echo null)
    per=$(record_cpu "$r" "$key" "$mode" "$t0" "$t1" "$reqs")
    [[ $per == null || -z $per ]] || per=$(python3 -c "print(round($per * 1e6, 2))")
    record "$r" "$key" "${mode}_cpu_us" "$per"
    log "    -> $rps req/s, p50 $p50 ms, p99 $p99 ms, $errs errors (proxy CPU ${per:-?} µs/request)"
    record "$r" "$key" "${mode}_rps" "$rps"
    record "$r" "$key" "${mode}_p50_ms" "$p50"
    record "$r" "$key" "${mode}_p99_ms" "$p99"
    record "$r" "$key" "${mode}_errors" "$errs"
    if [[ $errs != null && $errs != 0 ]]; then
        NOTES+=("wrk reported $errs errors for ${LABEL[$key]} ($mode) in round $r: $(grep -o 'errors_[a-z]*=[1-9][0-9]*' "$f" | tr '\n' ' ')")
    fi
}

run_idle() { # round key port pid
    local r=$1 key=$2 port=$3 pid=$4 f=$WORK/r$1-$2-idle.json vals
    log "  idle test: $IDLE_CONNS connections"
    timeout -k 5 300 taskset -c 0 python3 "$BENCH_DIR/idle_conns.py" --connect "127.0.0.1:$port" \
        --backend-port "$NGINX_PORT" --pid "$pid" --count "$IDLE_CONNS" --deadline 60 \
        >"$f" 2>"$f.err" || warn "idle test through ${LABEL[$key]} failed (exit $?) in round $r"
    sed 's/^/  /' "$f.err" >&2
    vals=$(python3 - "$f" <<'EOF'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception:
    print("null " * 6); sys.exit()
b = d["bytes_per_conn"]
print(round(b) if b is not None else "null", d["opened"], d["backend_reached"],
      d["rss_before_kib"], d["rss_after_kib"], d["closed_by_proxy"], int(d["drained"]))
EOF
)
    local bpc opened reached before after closed drained
    read -r bpc opened reached before after closed drained <<<"$vals"
    log "    -> $bpc bytes/connection (opened $opened, backend saw $reached, RSS $before -> $after KiB)"
    record "$r" "$key" idle_bytes_per_conn "$bpc"
    record "$r" "$key" idle_opened "$opened"
    record "$r" "$key" idle_reached "$reached"
    record "$r" "$key" idle_rss_before_kib "$before"
    record "$r" "$key" idle_rss_after_kib "$after"
    if [[ $opened != null && $reached != null ]] && ((reached < opened)); then
        NOTES+=("Idle test, ${LABEL[$key]}, round $r: only $reached of $opened connections reached the backend.")
    fi
    if [[ $closed != null && $closed != 0 ]]; then
        NOTES+=("Idle test, ${LABEL[$key]}, round $r: the proxy closed $closed of the idle connections.")
    fi
    [[ $drained == 0 ]] && NOTES+=("Idle test, ${LABEL[$key]}, round $r: backend connections did not drain within 60 s.")
    return 0
}

run_turn() { # round key
    local r=$1 key=$2 pid="" fh=${FRONT_HTTP[$2]} fi=${FRONT_IPERF[$2]}
    local ports=("$fh" "$fi" "$NGINX_PORT" "$IPERF_PORT")
    log "round $r/$ROUNDS: ${LABEL[$key]}"
    wait_quiet "${ports[@]}"
    if [[ $key != direct ]]; then
        start_proxy "$r" "$key"
        pid=$PROXY_PID
        CUR_PID=$pid
        run_idle "$r" "$key" "$fh" "$pid"
        wait_quiet "${ports[@]}"
    else
        CUR_PID=""
        for m in idle_bytes_per_conn idle_opened idle_reached; do record "$r" "$key" "$m" null; done
    fi
    run_iperf "$r" "$key" "$fi" 1;   wait_quiet "${ports[@]}"
    run_iperf "$r" "$key" "$fi" 8;   wait_quiet "${ports[@]}"
    run_wrk "$r" "$key" "$fh" conn;  wait_quiet "${ports[@]}"
    run_wrk "$r" "$key" "$fh" ka;    wait_quiet "${ports[@]}"
    if [[ -n $pid ]]; then
        alive "$pid" || warn "${LABEL[$key]} exited during round $r (see its log)"
        stop_pid "$pid"
        wait_closed 10 "$fh" "$fi"
    fi
}

# ---------------------------------------------------------------- metadata
first_line() { "$@" 2>&1 | head -n 1 || true; }
{
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "nproc=$(nproc)"
    echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo unknown)"
    echo "mem=$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
    echo "kernel=$(uname -sr)"
    # The version and the git revision, not the binary's path (the report may be published).
    ((WEIR_USED)) && echo "weir=$(first_line "$WEIR" --version) (git $(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown))"
    echo "haproxy=$(first_line haproxy -v)"
    echo "nginx=$(first_line nginx -v)"
    echo "iperf3=$(first_line iperf3 -v)"
    echo "wrk=$(first_line wrk -v)"
    echo "python3=$(first_line python3 --version)"
    echo "duration=$DURATION"
    echo "rounds=$ROUNDS"
    echo "wrk_conns=$WRK_CONNS"
    echo "idle_conns=$IDLE_CONNS"
    echo "body_bytes=$BODY_BYTES"
    echo "proxies=$(IFS=,; echo "${KEYS[*]}")"
    labels=()
    for k in "${KEYS[@]}"; do labels+=("${LABEL[$k]}"); done
    echo "labels=$(IFS=,; echo "${labels[*]}")"
    echo "desc_haproxy=\`mode tcp\`, \`nbthread 1\`, maxconn $HAPROXY_MAXCONN, timeouts connect 2s / client 1h / server 1h, $( ((HAPROXY_SPLICE)) && echo '`option splice-auto`' || echo 'no splice (HAProxy default)')"
    echo "desc_nginx=\`stream\` module, \`worker_processes 1\`, \`worker_connections $NGINX_MAXCONN\`, proxy_connect_timeout 2s, proxy_timeout 1h"
    for k in "${KEYS[@]}"; do
        case ${WEIR_MODE[$k]:-} in
            default) echo "desc_$k=\`worker_threads = 1\`, access log off, \`zero_copy\` at its default" ;;
            splice) echo "desc_$k=\`worker_threads = 1\`, access log off, \`zero_copy = true\`" ;;
            copy) echo "desc_$k=\`worker_threads = 1\`, access log off, \`zero_copy = false\`" ;;
            nometrics) echo "desc_$k=as weir, but built with \`--no-default-features\` (the \`metrics\` feature off: counters and histograms compiled out)" ;;
        esac
    done
    echo "desc_direct=load generators straight to the backends: the ceiling of this machine's load generators"
} >"$META"

# ---------------------------------------------------------------- run
log "work dir $WORK; proxies: ${KEYS[*]}; ${ROUNDS} round(s) of ${DURATION}s runs; idle test $IDLE_CONNS conns; ulimit -n $NOFILE"
cd "$WORK"
start_backends
for ((round = 1; round <= ROUNDS; round++)); do
    for key in "${KEYS[@]}"; do
        run_turn "$round" "$key"
    done
done

for n in "${NOTES[@]}"; do echo "note=$n" >>"$META"; done
if [[ -z $OUT ]]; then
    OUT=$BENCH_DIR/results/$(date -u +%Y-%m-%d).md
    [[ -e $OUT ]] && OUT=$BENCH_DIR/results/$(date -u +%Y-%m-%d-%H%M%S).md
fi
mkdir -p "$(dirname -- "$OUT")"
python3 "$BENCH_DIR/report.py" render --raw "$RAW" --meta "$META" --out "$OUT"
cp "$RAW" "${OUT%.md}.raw.jsonl"
log "report written to $OUT (raw numbers: ${OUT%.md}.raw.jsonl)"
