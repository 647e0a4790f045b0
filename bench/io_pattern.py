#!/usr/bin/env python3
"""How a proxy orders its socket I/O, from `perf script` output.

Reads on stdin what `perf script` prints for a recording of the proxy's
process with `-e raw_syscalls:sys_enter -e sched:sched_wakeup` (see
bench/README.md, "The order of a proxy's I/O") and prints, per request and per
turn of the event loop (one `epoll_wait` to the next):

- sends and receives on the client side and on the backend side;
- the wake-ups the proxy's sends cause, by the command woken (on loopback the
  sender runs the receiver's side of a segment, wake-up included);
- how the sends and receives are grouped: the mean length of a run of
  consecutive calls of one kind (backend sends, client sends, ...).

The client side is told from the backend side by bytes sent: the `--clients`
descriptors that were sent the most bytes (responses) are the client's. A
request is one send to the backend (HTTP/1.1 backends, small requests).
"""

import argparse
import collections
import re
import sys

SENDTO, RECVFROM = 44, 45
EPOLL = {232, 281}  # epoll_wait, epoll_pwait (x86-64)

LINE = re.compile(r"\]\s+\d+\.\d+:\s+(\S+):\s+(.*)")
SYSCALL = re.compile(r"NR (\d+) \(([0-9a-f]+), [0-9a-f]+, ([0-9a-f]+)")
WOKEN = re.compile(r"comm=(\S+)")


def parse(lines):
    """Events in order: ("sys", nr, fd, len) or ("wake", command)."""
    for line in lines:
        m = LINE.search(line)
        if not m:
            continue
        kind, rest = m.groups()
        if kind == "raw_syscalls:sys_enter":
            s = SYSCALL.match(rest)
            if s:
                yield ("sys", int(s.group(1)), int(s.group(2), 16), int(s.group(3), 16))
        elif kind == "sched:sched_wakeup":
            w = WOKEN.search(rest)
            if w:
                # Per-CPU kernel threads carry their CPU: one name for all.
                yield ("wake", w.group(1).split("/")[0])


def summarize(events, clients):
    events = list(events)
    sent = collections.Counter()
    for e in events:
        if e[0] == "sys" and e[1] == SENDTO:
            sent[e[2]] += e[3]
    client_fds = {fd for fd, _ in sent.most_common(clients)}

    def label(e):
        if e[0] == "wake":
            return "wake " + e[1]
        nr, fd = e[1], e[2]
        side = "client" if fd in client_fds else "backend"
        if nr == SENDTO:
            return side + " send"
        if nr == RECVFROM:
            return side + " receive"
        if nr in EPOLL:
            return "epoll_wait"
        return None

    counts = collections.Counter()
    runs = collections.defaultdict(list)
    last, run = None, 0
    for e in events:
        what = label(e)
        if what is None:
            continue
        counts[what] += 1
        if what.startswith("wake"):
            continue  # a wake-up happens inside a send: it does not end a run
        if what == last:
            run += 1
        else:
            if last is not None:
                runs[last].append(run)
            last, run = what, 1
    if last is not None:
        runs[last].append(run)
    return counts, runs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=10,
                    help="client connections of the load (default 10, h2load -c10)")
    args = ap.parse_args()
    counts, runs = summarize(parse(sys.stdin), args.clients)
    requests = counts["backend send"]
    turns = counts["epoll_wait"]
    if not requests:
        sys.exit("io_pattern.py: no send to a backend in the input")
    print(f"requests (sends to the backend): {requests}; turns (epoll_wait): {turns}")
    print(f"{'':24} {'per request':>12} {'per turn':>10} {'mean run':>9}")
    for what in sorted(counts):
        per_turn = f"{counts[what] / turns:10.2f}" if turns else f"{'—':>10}"
        mean_run = (f"{sum(runs[what]) / len(runs[what]):9.1f}" if runs[what] else f"{'':>9}")
        print(f"{what:24} {counts[what] / requests:12.4f} {per_turn} {mean_run}")


if __name__ == "__main__":
    main()
