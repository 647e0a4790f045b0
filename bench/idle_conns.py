#!/usr/bin/env python3
"""Idle-connection memory test for one proxy.

Opens N TCP connections to the proxy's frontend and sends nothing, waits until
the proxy has connected them through (the backend sees N more established
connections), then compares the RSS of the proxy's whole process tree with the
RSS before. Closes everything and waits for the backend count to drop again.
Prints one JSON object on stdout. Every wait has a deadline.
"""
import argparse
import json
import os
import select
import socket
import subprocess
import sys
import time


def log(msg):
    print(f"  [idle] {msg}", file=sys.stderr, flush=True)


def tree_pids(root):
    """root and all its descendants (from /proc/*/stat)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may contain spaces/parens: fields start after the last ')'.
        fields = stat[stat.rfind(")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def rss_kib(root):
    total, n = 0, 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        n += 1
                        break
        except OSError:
            pass
    return total, n


def settled_rss(root, max_wait=3.0):
    """Sample RSS until two consecutive samples agree within 0.5% (or max_wait)."""
    prev, _ = rss_kib(root)
    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline:
        time.sleep(0.25)
        cur, _ = rss_kib(root)
        if abs(cur - prev) <= max(8, prev * 0.005):
            return cur
        prev = cur
    return prev


def established(port):
    """Established TCP sockets whose local port is `port` (server side)."""
    out = subprocess.run(
        ["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
        check=True, capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if line.strip())


def wait_count(port, pred, deadline_s):
    deadline = time.monotonic() + deadline_s
    while True:
        n = established(port)
        if pred(n) or time.monotonic() >= deadline:
            return n
        time.sleep(0.25)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--connect", required=True, help="HOST:PORT of the proxy frontend")
    ap.add_argument("--backend-port", type=int, required=True,
                    help="port of the backend the proxy connects to (counted with ss)")
    ap.add_argument("--pid", type=int, required=True, help="proxy PID (its tree is summed)")
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--deadline", type=float, default=60.0,
                    help="seconds to wait for the backend count to rise / drop")
    args = ap.parse_args()
    host, port = args.connect.rsplit(":", 1)
    target = (host, int(port))

    base = established(args.backend_port)
    rss_before = settled_rss(args.pid)
    _, nprocs = rss_kib(args.pid)
    log(f"baseline: backend established={base}, proxy RSS={rss_before} KiB ({nprocs} processes)")

    socks, errors, first_error = [], 0, None
    t0 = time.monotonic()
    open_deadline = t0 + args.deadline
    while len(socks) < args.count and time.monotonic() < open_deadline:
        try:
            s = socket.create_connection(target, timeout=5)
            socks.append(s)
        except OSError as e:
            errors += 1
            first_error = first_error or repr(e)
            if errors > max(20, args.count // 100):
                break
    opened = len(socks)
    log(f"opened {opened} connections in {time.monotonic() - t0:.2f}s ({errors} errors)")

    reached = wait_count(args.backend_port, lambda n: n - base >= opened, args.deadline) - base
    log(f"backend sees {reached} new established connections")
    rss_after = settled_rss(args.pid)

    # Connections the proxy already closed show up as readable (EOF/RST).
    # (poll, not select: the descriptors are far above FD_SETSIZE.)
    poller = select.poll()
    for s in socks:
        poller.register(s, select.POLLIN | select.POLLHUP | select.POLLERR)
    closed_by_peer = len(poller.poll(0))

    for s in socks:
        s.close()
    left = wait_count(args.backend_port, lambda n: n <= base, args.deadline)
    log(f"closed; backend established now {left}")

    delta_kib = rss_after - rss_before
    print(json.dumps({
        "requested": args.count,
        "opened": opened,
        "connect_errors": errors,
        "first_error": first_error,
        "backend_reached": reached,
        "closed_by_proxy": closed_by_peer,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "processes": nprocs,
        "bytes_per_conn": (delta_kib * 1024 / opened) if opened else None,
        "drained": left <= base,
    }))


if __name__ == "__main__":
    main()
