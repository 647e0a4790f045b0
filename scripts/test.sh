#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs the tools the tests use as real
# peers, then checks formatting, lints every target, and runs every test
# (unit, property, real-socket integration) and the doctests.
set -euo pipefail
cd "$(dirname "$0")/.."
# nginx, haproxy, dnsmasq and sysctl live in /usr/sbin, off a user's PATH.
export PATH="$PATH:/usr/sbin:/sbin"

# Real peers used by the integration tests: nginx and HAProxy as real backends
# (HTTP, PROXY protocol), nghttpd as an HTTP/2 backend (h2c and TLS), h2load as
# a client of many concurrent HTTP/2 streams, curl as
# a real client (HTTP/1.1 and h2c), and Prometheus (prometheus,
# promtool) scraping weir and checking the metrics and the alert rules; the
# upgrade test runs in a network namespace of its own (unshare and nsenter from
# util-linux, ip from iproute2, sysctl from procps); dnsmasq as a DNS backend and
# dig as its client for the UDP listeners; chromium, headless, for the status
# page; systemd for systemd-analyze and systemd-socket-activate; dpkg-dev
# (dpkg-shlibdeps) and man-db for the Debian package test. Installed only when
# missing, with one apt-get update.
packages=()
command -v nginx >/dev/null 2>&1 || packages+=(nginx)
command -v haproxy >/dev/null 2>&1 || packages+=(haproxy)
command -v curl >/dev/null 2>&1 || packages+=(curl)
command -v nghttpd >/dev/null 2>&1 || packages+=(nghttp2-server)
command -v h2load >/dev/null 2>&1 || packages+=(nghttp2-client)
command -v promtool >/dev/null 2>&1 || packages+=(prometheus)
command -v python3 >/dev/null 2>&1 || packages+=(python3 python3-pip)
command -v openssl >/dev/null 2>&1 || packages+=(openssl)
command -v nsenter >/dev/null 2>&1 || packages+=(util-linux)
command -v ip >/dev/null 2>&1 || packages+=(iproute2)
command -v sysctl >/dev/null 2>&1 || packages+=(procps)
command -v prlimit >/dev/null 2>&1 || packages+=(util-linux)
command -v dnsmasq >/dev/null 2>&1 || packages+=(dnsmasq-base)
command -v dig >/dev/null 2>&1 || packages+=(bind9-dnsutils)
command -v chromium >/dev/null 2>&1 || packages+=(chromium)
command -v systemd-analyze >/dev/null 2>&1 || packages+=(systemd)
command -v dpkg-shlibdeps >/dev/null 2>&1 || packages+=(dpkg-dev)
command -v man >/dev/null 2>&1 || packages+=(man-db)
if ((${#packages[@]})); then
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing ${packages[*]}: install them or run as root" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}"
fi

# Python peers of the tests from PyPI, for the python3 on PATH: gRPC and
# WebSocket clients and servers and an OTLP trace receiver
# (tests/it/peers.py), a MaxMind-format database writer for the firewall's
# country rules, and for the admin API and status page (tests/it/admin_peers.py)
# an OpenAPI and JSON Schema validator and Playwright, which drives Debian's
# chromium (it downloads no browser of its own). A Debian python3 refuses pip
# installs outside a virtual environment (PEP 668) unless told otherwise.
python3 -c 'import grpc, websockets, mmdb_writer, opentelemetry.proto
import jsonschema, openapi_spec_validator, playwright' 2>/dev/null \
    || PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --disable-pip-version-check \
        grpcio websockets mmdb-writer opentelemetry-proto jsonschema openapi-spec-validator \
        playwright

# cargo-deb builds the Debian package the package test installs.
command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked --quiet

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Doctests first, so the run ends with the summary of the main test run.
cargo test --workspace --locked --doc
if cargo nextest --version >/dev/null 2>&1; then
    # Where the tests mark the ports they hand out (crates/weir/tests/it/cli.rs).
    WEIR_TEST_PORTS_DIR=$(mktemp -d)
    export WEIR_TEST_PORTS_DIR
    trap 'rm -rf "$WEIR_TEST_PORTS_DIR"' EXIT
    cargo nextest run --workspace --locked --no-fail-fast
else
    cargo test --workspace --locked --no-fail-fast --lib --bins --tests
fi

# A smoke run of every fuzz target (fuzz/), a minute each, with inputs long
# enough for a 16 KiB ClientHello. cargo-fuzz needs a nightly toolchain, and
# none can be fetched where this runs: without one installed, say so and skip.
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --quiet
    for target in $(cd fuzz && cargo +nightly fuzz list); do
        echo "fuzz smoke run: $target (60 s)"
        (cd fuzz && cargo +nightly fuzz run "$target" -- \
            -max_total_time=60 -max_len=20000)
    done
else
    echo "fuzz smoke run skipped: no nightly toolchain is installed (cargo-fuzz needs one)"
fi
