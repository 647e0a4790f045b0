#!/usr/bin/env bash
# Builds the Debian package of weir: the release binary (built with
# profile-guided optimisation by scripts/build-pgo.sh), manual pages and shell
# completions generated from the command line, then cargo-deb (installed from
# crates.io when missing). The package lands in target/debian/.
#
# Usage: scripts/package-deb.sh [--no-build] [--no-pgo] [--dev] [--output DIR]
#   --no-build  package target/release/weir as it is
#   --no-pgo    build with a plain `cargo build --release` (no benchmark tools
#               needed; about a tenth more CPU per HTTP request)
#   --dev       package the dev-profile build (target/debug/weir; the tests do)
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
pgo=1
profile=release
output=target/debian/
while [[ $# -gt 0 ]]; do
    case "$1" in
    --no-build) build=0 ;;
    --no-pgo) pgo=0 ;;
    --dev) build=0; profile=dev ;;
    --output) output="$2"; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

if [[ $build == 1 && $pgo == 1 ]]; then
    scripts/build-pgo.sh
    profile=pgo
elif [[ $build == 1 ]]; then
    cargo build --release -p weir
fi
case $profile in
dev) bin=target/debug/weir ;;
*) bin=target/$profile/weir ;;
esac
out=target/package
rm -rf "$out"
mkdir -p "$out/completions"
"$bin" man --dir "$out/man"
gzip -9n "$out"/man/*.1
"$bin" completions bash > "$out/completions/weir.bash"
"$bin" completions zsh > "$out/completions/_weir"
"$bin" completions fish > "$out/completions/weir.fish"

rm -f "$output"/weir_*.deb
if ! command -v cargo-deb >/dev/null 2>&1; then
    cargo install cargo-deb --locked --quiet
fi
# The prebuilt files of target/package are not cargo's: say nothing of them.
cargo-deb --no-build --strip --profile "$profile" -p weir --output "$output" 2>&1 |
    grep -v -e "^warning: Only source paths" -e "dev profile is not supported" \
        -e "To enable debug symbols" || true
test -n "$(ls "$output"/weir_*.deb 2>/dev/null)"
