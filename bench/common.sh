# Helpers shared by bench/http.sh and bench/udp.sh, sourced after they set
# STARTED (an associative array of the processes they started), BENCH_DIR and
# RAW. Processes are ended by PID only, with their descendants.
alive() { local st; st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1; [[ -n $st && $st != Z ]]; }
descendants() { local p; for p in $(pgrep -P "$1" 2>/dev/null || true); do echo "$p"; descendants "$p"; done; }
stop_pid() {
    local pid=$1 p deadline tree
    tree="$pid $(descendants "$pid" | tr '\n' ' ')"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 10))
    for p in $tree; do
        while alive "$p" && ((SECONDS < deadline)); do sleep 0.1; done
        alive "$p" && kill -KILL "$p" 2>/dev/null || true
    done
    wait "$pid" 2>/dev/null || true
    unset 'STARTED[$pid]'
}
launch() { # name logfile cmd... -> LAUNCHED_PID
    local name=$1 logf=$2; shift 2
    "$@" >"$logf" 2>&1 </dev/null &
    LAUNCHED_PID=$!
    STARTED[$LAUNCHED_PID]=$name
}
render() { # template out KEY=VALUE...
    local tpl=$BENCH_DIR/templates/$1 out=$2 kv args=()
    shift 2
    for kv in "$@"; do
        local val=${kv#*=}
        val=${val//\\/\\\\}; val=${val//&/\\&}; val=${val//|/\\|}
        args+=(-e "s|@${kv%%=*}@|${val}|g")
    done
    sed "${args[@]}" "$tpl" >"$out"
    if grep -q '@[A-Z_0-9]*@' "$out"; then die "unsubstituted placeholder in $out"; fi
}
record() { # round key metric value
    local v=${4:-null}
    [[ $v =~ ^-?[0-9]+(\.[0-9]+)?$ ]] || v=null
    printf '{"round":%d,"proxy":"%s","metric":"%s","value":%s}\n' "$1" "$2" "$3" "$v" >>"$RAW"
}
cpu_ticks() { # pid [sys]: clock ticks of pid and its descendants, user+system or with "sys" system only
    local total=0 p f fs
    for p in "$1" $(descendants "$1"); do
        f=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null) || continue
        read -r -a fs <<<"$f"
        if [[ ${2:-} == sys ]]; then
            total=$((total + fs[12]))
        else
            total=$((total + fs[11] + fs[12]))
        fi
    done
    echo "$total"
}
