#!/usr/bin/env bash
# Builds the release binary of weir with profile-guided optimisation (PGO):
#   1. an instrumented build (cargo profile `pgo-train`, target/pgo-train/weir);
#   2. that binary serves the quick runs of the benchmarks on loopback: L4 relay
#      (bench/run.sh), HTTP/1.1, h2c and TLS termination (bench/http.sh) and UDP
#      (bench/udp.sh, when its tools are installed), so the profile covers every
#      data path and not just one;
#   3. the profiles are merged and the optimised build reads them (cargo profile
#      `pgo`, target/pgo/weir).
# The compiler then lays out hot code together and inlines along the paths that
# run, which cuts weir's CPU per HTTP request by about a tenth (docs/benchmarks.md).
# The package (scripts/package-deb.sh) is built this way.
#
# Needs what the benchmarks need (haproxy nginx wrk nghttp2-client iperf3
# openssl; dnsmasq-base dnsperf bind9-dnsutils for UDP) and llvm-profdata of the
# compiler's own LLVM (rustup's llvm-tools component, added when missing, or
# LLVM_PROFDATA). Takes two release builds, about 14 minutes on 2 cores.
#
# Usage: scripts/build-pgo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

profdata=${LLVM_PROFDATA:-}
if [[ -z $profdata ]]; then
    sysroot=$(rustc --print sysroot)
    host=$(rustc -vV | sed -n 's/^host: //p')
    profdata=$sysroot/lib/rustlib/$host/bin/llvm-profdata
    if [[ ! -x $profdata ]]; then
        rustup component add llvm-tools
    fi
fi
[[ -x $profdata ]] || { echo "llvm-profdata not found at $profdata" >&2; exit 1; }

root=$PWD
data=$root/target/pgo-data
rm -rf "$data"
mkdir -p "$data/raw" "$data/reports"

echo "== instrumented build" >&2
RUSTFLAGS="-Cprofile-generate=$data/raw" cargo build --locked --profile pgo-train -p weir
trainee=$root/target/pgo-train/weir
# The build's own scripts and macros were instrumented too: only weir's runs count.
rm -f "$data"/raw/*

echo "== training runs" >&2
bench/run.sh --proxies weir --quick --idle-conns 1000 --weir "$trainee" \
    --out "$data/reports/l4.md" >"$data/reports/l4.log" 2>&1
bench/http.sh --proxies weir --quick --weir "$trainee" \
    --out "$data/reports/http.md" >"$data/reports/http.log" 2>&1
if command -v dnsperf >/dev/null && command -v dnsmasq >/dev/null; then
    bench/udp.sh --proxies weir --quick --weir "$trainee" \
        --out "$data/reports/udp.md" >"$data/reports/udp.log" 2>&1
else
    echo "dnsperf or dnsmasq missing: the profile leaves out UDP" >&2
fi
shopt -s nullglob
raw=("$data"/raw/*.profraw)
((${#raw[@]})) || { echo "the training runs left no profile in $data/raw" >&2; exit 1; }
"$profdata" merge -o "$data/merged.profdata" "${raw[@]}"
# Named by its content: cargo rebuilds when the flags change, not when a file
# they name does, and a new profile must mean a new build.
profile=$data/weir-$(sha256sum "$data/merged.profdata" | cut -c1-16).profdata
mv "$data/merged.profdata" "$profile"

echo "== optimised build" >&2
RUSTFLAGS="-Cprofile-use=$profile" cargo build --locked --profile pgo -p weir
echo "$root/target/pgo/weir"
