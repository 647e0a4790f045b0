#!/usr/bin/env python3
"""Memory of weir under a flood of unfinished TLS handshakes.

Starts weir with one listener that routes on SNI (so it peeks at each
ClientHello), opens N connections that each send a record header announcing a
16 KiB ClientHello and then 1,000 bytes of it, and never the rest. Prints the
VmRSS of weir before, while the N handshakes are pending, and after
`handshake_timeout` (3 s) has cut them and the clients have closed. Every wait
has a deadline; weir is ended by its PID.

    bench/handshake_flood.py [--weir target/release/weir] [-n 2000] [--port-base 17300]
"""
import argparse
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time

CONFIG = """
[admin]
http = "127.0.0.1:{admin}"
[log]
access_log = false
[[listeners]]
name = "tls"
bind = "127.0.0.1:{front}"
handshake_timeout = "3s"
max_connections = 100000
[[listeners.routes]]
name = "r"
pool = "p"
match = {{ sni = ["a.example"] }}
[[pools]]
name = "p"
[[pools.backends]]
name = "a"
address = "127.0.0.1:{backend}"
"""

# Handshake record (0x16, TLS 1.0 record version), length 0x4000; a ClientHello
# (type 1) of length 0x3ffc; then the start of its body.
PARTIAL_HELLO = bytes([0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x3F, 0xFC, 0x03, 0x03]) + bytes(1000)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def wait_for_port(port, deadline):
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"weir did not listen on {port}")


def main():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weir", default=os.path.join(repo, "target/release/weir"))
    p.add_argument("-n", type=int, default=2000, help="pending handshakes (default 2000)")
    p.add_argument("--port-base", type=int, default=17300)
    args = p.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.n + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.n + 1000), hard))
    admin, front, backend = args.port_base, args.port_base + 1, args.port_base + 2
    with tempfile.TemporaryDirectory() as work:
        config = os.path.join(work, "weir.toml")
        with open(config, "w") as f:
            f.write(CONFIG.format(admin=admin, front=front, backend=backend))
        log = open(os.path.join(work, "weir.log"), "w")
        weir = subprocess.Popen([args.weir, "run", "--config", config], stdout=log, stderr=log)
        try:
            wait_for_port(front, time.monotonic() + 10)
            time.sleep(0.5)
            before = rss_kib(weir.pid)
            clients = []
            for _ in range(args.n):
                s = socket.create_connection(("127.0.0.1", front), timeout=5)
                s.sendall(PARTIAL_HELLO)
                clients.append(s)
            time.sleep(1.0)
            during = rss_kib(weir.pid)
            time.sleep(3.5)  # past handshake_timeout: weir has cut them all
            for s in clients:
                s.close()
            time.sleep(1.0)
            after = rss_kib(weir.pid)
        finally:
            weir.send_signal(signal.SIGTERM)
            try:
                weir.wait(timeout=10)
            except subprocess.TimeoutExpired:
                weir.kill()
                weir.wait()
    per = (during - before) * 1024 / args.n
    print(f"VmRSS before {before} KiB, with {args.n} pending handshakes {during} KiB "
          f"({per:.0f} B each), after {after} KiB")


if __name__ == "__main__":
    main()
