#!/usr/bin/env bash
# Captures the TLS ClientHello of real clients into crates/wire/tests/hellos/,
# the test data of crates/wire/tests/hellos.rs. Each client connects to a
# listener on 127.0.0.1 that records the first bytes it receives and closes:
# no handshake completes, nothing leaves the machine.
#
# Clients: curl (OpenSSL), openssl s_client, gnutls-cli (GnuTLS), Python's ssl
# module, and headless Chromium (BoringSSL). Install them first, e.g.
#   apt-get install -y curl openssl gnutls-bin python3 chromium
# Re-run after a client's TLS stack changes; the test reads whatever is there.
set -euo pipefail
cd "$(dirname "$0")/.."
out=crates/wire/tests/hellos
mkdir -p "$out"
name=hello.test
work=$(mktemp -d)
trap 'kill "$recorder" 2>/dev/null || true; rm -rf "$work"' EXIT

# Records the first bytes (up to 16 KiB, until 300 ms of silence) of each
# connection into $work/N.bin, N counting from 1.
python3 - "$work" >"$work/port" <<'EOF' &
import socket, sys, os
work = sys.argv[1]
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(16)
print(s.getsockname()[1], flush=True)
n = 0
while True:
    c, _ = s.accept()
    n += 1
    c.settimeout(0.3)
    data = b""
    try:
        while len(data) < 16384:
            chunk = c.recv(16384)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        pass
    with open(os.path.join(work, f"{n}.bin"), "wb") as f:
        f.write(data)
    c.close()
EOF
recorder=$!
for _ in $(seq 50); do [ -s "$work/port" ] && break; sleep 0.1; done
port=$(cat "$work/port")
n=0
capture() { # file description...
    local file=$1
    n=$((n + 1))
    for _ in $(seq 50); do [ -s "$work/$n.bin" ] && break; sleep 0.1; done
    cp "$work/$n.bin" "$out/$file"
    echo "$file: $(stat -c %s "$out/$file") bytes"
}

curl -sk --max-time 3 --http2 --resolve "$name:$port:127.0.0.1" "https://$name:$port/" >/dev/null 2>&1 || true
capture curl-openssl.bin

openssl s_client -connect "127.0.0.1:$port" -servername "$name" -alpn postgresql,h2 \
    </dev/null >/dev/null 2>&1 || true
capture openssl-s_client.bin

timeout 5 gnutls-cli --insecure --port "$port" --sni-hostname "$name" \
    --alpn h2 --alpn http/1.1 127.0.0.1 </dev/null >/dev/null 2>&1 || true
capture gnutls-cli.bin

python3 - "$port" "$name" <<'EOF' || true
import socket, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["h2", "http/1.1"])
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=3)
try:
    ctx.wrap_socket(s, server_hostname=sys.argv[2])
except OSError:
    pass
EOF
capture python-ssl.bin

chromium=$(command -v chromium || command -v chromium-browser || true)
if [ -n "$chromium" ]; then
    profile=$(mktemp -d)
    timeout 15 "$chromium" --headless --no-sandbox --disable-gpu --disable-quic \
        --no-first-run --disable-background-networking --disable-component-update \
        --disable-sync --user-data-dir="$profile" \
        --host-resolver-rules="MAP $name 127.0.0.1:$port" \
        --dump-dom "https://$name/" >/dev/null 2>&1 || true
    rm -rf "$profile"
    capture chromium.bin
else
    echo "chromium not installed: its ClientHello is not captured" >&2
fi
