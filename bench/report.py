#!/usr/bin/env python3
"""Helpers for bench/run.sh, bench/http.sh and bench/udp.sh: parse iperf3 / wrk /
h2load / dnsperf output and render the markdown report.

  report.py iperf FILE          -> receiver Gbit/s of an `iperf3 -J` run, or "null"
  report.py wrk FILE            -> "rps p50_ms p99_ms errors" from wrk_report.lua, or nulls
  report.py h2load FILE         -> "rps errors" of an h2load run, or nulls
  report.py dnsperf FILE        -> "qps completed lost avg_latency_ms" of a dnsperf run, or nulls
  report.py render [--suite l4|http|udp] --raw RAW --meta META [--out FILE]
"""
import argparse
import json
import re
import statistics
import sys

# (key, description, direction) in report order. direction: +1 higher is better, -1 lower.
METRICS = [
    ("tput_p1_gbps", "TCP throughput, iperf3 1 stream (Gbit/s)", +1),
    ("tput_p8_gbps", "TCP throughput, iperf3 8 streams (Gbit/s)", +1),
    ("conn_rps", "New connections: HTTP req/s, `Connection: close`", +1),
    ("conn_p50_ms", "New connections: latency p50 (ms)", -1),
    ("conn_p99_ms", "New connections: latency p99 (ms)", -1),
    ("ka_rps", "Keep-alive: HTTP req/s", +1),
    ("ka_p50_ms", "Keep-alive: latency p50 (ms)", -1),
    ("ka_p99_ms", "Keep-alive: latency p99 (ms)", -1),
    ("idle_bytes_per_conn", "Idle connection: proxy RSS per connection (bytes)", -1),
    # What the proxy itself spent: meaningful even when the load generators, not the
    # proxy, are the bottleneck (2-core machines).
    ("tput_p1_cpu_s_per_gb", "Proxy CPU per GB relayed, iperf3 1 stream (CPU-s/GB)", -1),
    ("tput_p8_cpu_s_per_gb", "Proxy CPU per GB relayed, iperf3 8 streams (CPU-s/GB)", -1),
    ("conn_cpu_us", "Proxy CPU per request, `Connection: close` (µs)", -1),
    ("ka_cpu_us", "Proxy CPU per request, keep-alive (µs)", -1),
]
# Recorded per round and shown in the raw table, but not compared.
EXTRA = [
    ("conn_errors", "New connections: wrk errors (connect+read+write+status+timeout)"),
    ("ka_errors", "Keep-alive: wrk errors"),
    ("idle_opened", "Idle: connections opened by the client"),
    ("idle_reached", "Idle: connections the backend saw established"),
    ("idle_rss_before_kib", "Idle: proxy RSS before (KiB)"),
    ("idle_rss_after_kib", "Idle: proxy RSS with the idle connections (KiB)"),
    ("tput_p1_cpu_pct", "iperf3 1 stream: proxy CPU use (% of one core)"),
    ("tput_p8_cpu_pct", "iperf3 8 streams: proxy CPU use (% of one core)"),
    ("conn_cpu_pct", "Connection: close: proxy CPU use (% of one core)"),
    ("ka_cpu_pct", "Keep-alive: proxy CPU use (% of one core)"),
]


# The HTTP suite (bench/http.sh).
HTTP_METRICS = [
    ("h1_rps", "HTTP/1.1 keep-alive: req/s", +1),
    ("h1_p50_ms", "HTTP/1.1 keep-alive: latency p50 (ms)", -1),
    ("h1_p99_ms", "HTTP/1.1 keep-alive: latency p99 (ms)", -1),
    ("h2c_rps", "h2c to an HTTP/1.1 backend: req/s", +1),
    ("tls_rps", "New TLS connection per request: req/s (full handshakes/s)", +1),
    ("tls_p99_ms", "New TLS connection per request: latency p99 (ms)", -1),
    ("h1_cpu_us", "Proxy CPU per request, HTTP/1.1 keep-alive (µs)", -1),
    ("h2c_cpu_us", "Proxy CPU per request, h2c (µs)", -1),
    ("tls_cpu_us", "Proxy CPU per TLS handshake + request (µs)", -1),
    ("h1_sys_us", "of which in the kernel, HTTP/1.1 keep-alive (µs)", -1),
    ("h2c_sys_us", "of which in the kernel, h2c (µs)", -1),
    ("tls_sys_us", "of which in the kernel, TLS handshake + request (µs)", -1),
    ("h1_pair_cpu_us", "Proxy CPU per request, HTTP/1.1, paired runs (µs)", -1),
    ("h2c_pair_cpu_us", "Proxy CPU per request, h2c, paired runs (µs)", -1),
    ("h1_instr", "User-space instructions per request, HTTP/1.1 (callgrind)", -1),
    ("h2c_instr", "User-space instructions per request, h2c (callgrind)", -1),
]
# The rest of a callgrind profile (bench/callgrind_summary.py), per request.
for _s, _name in (("h1", "HTTP/1.1"), ("h2c", "h2c")):
    HTTP_METRICS += [
        (f"{_s}_i1_misses", f"Simulated L1 instruction-cache misses per request, {_name} (callgrind)", -1),
        (f"{_s}_d1_misses", f"Simulated L1 data-cache misses per request, {_name} (callgrind)", -1),
        (f"{_s}_writes", f"Memory writes per request, {_name} (callgrind)", -1),
        (f"{_s}_mispredicts", f"Simulated mispredicted branches per request, {_name} (callgrind)", -1),
        (f"{_s}_locked", f"Atomic instructions per request in the proxy's own binary, {_name} (callgrind)", -1),
        (f"{_s}_clocks", f"Clock readings per request, {_name} (callgrind)", -1),
        (f"{_s}_hot_kib", f"Code run per request (KiB of 64-byte lines), {_name} (callgrind)", -1),
    ]
# Rows only a run asked for them has: callgrind's and the paired runs'.
OPTIONAL_KEYS = ("_pair_cpu_us", "_instr", "_i1_misses", "_d1_misses", "_writes", "_mispredicts", "_locked",
                  "_clocks", "_hot_kib")
HTTP_EXTRA = [
    ("h1_errors", "HTTP/1.1 keep-alive: wrk errors"),
    ("h2c_errors", "h2c: h2load failed or errored requests"),
    ("tls_errors", "TLS: wrk errors"),
]
HTTP_METHOD = [
    "- Everything on 127.0.0.1. The backend (one nginx HTTP server, `worker_processes 1`, "
    "fixed 1 KiB body, keep-alive) and the load generators run pinned to CPU 0; the proxy "
    "under test runs pinned to CPU 1, single-threaded, one at a time, each started fresh for "
    "each of its turns.",
    "- HTTP/1.1 keep-alive: `wrk -t1 -c50 -d{duration}s --latency`. h2c: `h2load -t1 -c10 "
    "-m10 -D {duration}` (HTTP/2 with prior knowledge to the proxy, HTTP/1.1 from the proxy "
    "to the backend). TLS: `wrk -t1 -c50 -d{duration}s -H 'Connection: close'` over https: "
    "every request is a new TCP connection and a full TLS handshake (ECDSA P-256 "
    "certificate, the same file for every proxy), HTTP/1.1 inside.",
    "- Proxy CPU: user + system time of the proxy's process tree during the run, divided by "
    "the requests served: what the proxy spent per request, whatever the load generator's "
    "limit. The rows *of which in the kernel* are the system-time part of it (sending, "
    "receiving, and on loopback the receiving peer's side of each segment and waking it).",
]


def cmd_h2load(path):
    rps, errors = None, 0
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("finished in"):
                    # "finished in 10.00s, 52900.00 req/s, 6.23MB/s"
                    rps = float(line.split(",")[1].split()[0])
                elif line.startswith("requests:"):
                    # "requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout"
                    parts = dict(
                        (p.split()[1], int(p.split()[0]))
                        for p in line[len("requests:"):].split(",")
                    )
                    errors = parts.get("failed", 0) + parts.get("errored", 0)
    except (OSError, ValueError, IndexError) as e:
        print(f"cannot parse {path}: {e!r}", file=sys.stderr)
    if rps is None:
        print("null null")
    else:
        print(round(rps, 1), errors)


def cmd_iperf(path):
    try:
        with open(path) as f:
            data = json.load(f)
        if data.get("error"):
            print(f"iperf3 error: {data['error']}", file=sys.stderr)
        print(round(data["end"]["sum_received"]["bits_per_second"] / 1e9, 3))
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"cannot parse {path}: {e!r}", file=sys.stderr)
        print("null")


def cmd_wrk(path):
    fields = {}
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("WRKRESULT "):
                    fields = dict(kv.split("=", 1) for kv in line.split()[1:])
    except OSError as e:
        print(f"cannot read {path}: {e!r}", file=sys.stderr)
    if not fields or float(fields["requests"]) == 0:
        print(f"no WRKRESULT line (or zero requests) in {path}", file=sys.stderr)
        print("null null null null")
        return
    errors = sum(int(fields[k]) for k in fields if k.startswith("errors_"))
    print(round(float(fields["rps"]), 1),
          round(float(fields["p50_us"]) / 1000, 3),
          round(float(fields["p99_us"]) / 1000, 3),
          errors)

# The UDP suite (bench/udp.sh): compared with nginx, as HAProxy has no UDP.
UDP_METRICS = [
    ("dns_qps", "DNS queries/s through the proxy (dnsperf)", +1),
    ("dns_lat_ms", "Average query latency (ms)", -1),
    ("dns_cpu_us", "Proxy CPU per query (µs)", -1),
    ("dns_qps_per_core", "Queries per proxy CPU-second (queries/s per core)", +1),
]
UDP_EXTRA = [
    ("dns_completed", "Queries answered"),
    ("dns_lost", "Queries lost (no answer within 2 s)"),
]
UDP_METHOD = [
    "- Everything on 127.0.0.1. The backend (one dnsmasq answering two names from a hosts "
    "file) and dnsperf run pinned to CPU 0; the proxy under test runs pinned to CPU 1, "
    "single-threaded, one at a time, each started fresh for each of its turns.",
    "- Load: `dnsperf -c 16 -q 200 -t 2 -l {duration}` (16 client sockets, up to 200 "
    "queries outstanding, a query unanswered for 2 s counted lost), A queries for the two "
    "names in turn. Both proxies end a flow (a session) once each datagram it carried got "
    "its answer (weir `responses = 1`, nginx `proxy_responses 1`): with queries outstanding "
    "on every client socket a flow lives while its socket keeps asking, and a new one (a "
    "new socket towards dnsmasq) starts when a socket asks again after its answers.",
    "- Proxy CPU: user + system time of the proxy's process tree during the run, divided by "
    "the queries answered; its inverse is the queries a proxy serves per CPU-second, the "
    "queries per second per core it would reach were it the bottleneck (on this 2-core "
    "machine dnsmasq and dnsperf share the other core, and may be).",
]


def cmd_dnsperf(path):
    try:
        with open(path) as f:
            text = f.read()
        qps = re.search(r"Queries per second:\s+([0-9.]+)", text).group(1)
        completed = re.search(r"Queries completed:\s+([0-9]+)", text).group(1)
        lost = re.search(r"Queries lost:\s+([0-9]+)", text).group(1)
        lat = float(re.search(r"Average Latency \(s\):\s+([0-9.]+)", text).group(1)) * 1000
        print(qps, completed, lost, round(lat, 3))
    except (OSError, AttributeError, ValueError):
        print("null null null null")


def fmt(key, v):
    if v is None:
        return "—"
    if key.endswith("_gbps"):
        return f"{v:.2f}"
    if key.endswith("_ms"):
        return f"{v:.3f}"
    if key.endswith("_rps"):
        return f"{v:,.0f}"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}"
    return f"{int(v):,}"


def cmd_render(raw_path, meta_path, out_path, suite="l4"):
    metrics, extra = {
        "http": (HTTP_METRICS, HTTP_EXTRA),
        "udp": (UDP_METRICS, UDP_EXTRA),
    }.get(suite, (METRICS, EXTRA))
    meta, notes = {}, []
    with open(meta_path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or "=" not in line:
                continue
            k, v = line.split("=", 1)
            if k == "note":
                notes.append(v)
            else:
                meta[k] = v
    proxies = [p for p in meta["proxies"].split(",") if p]
    labels = dict(zip(proxies, meta["labels"].split(",")))
    rounds = int(meta["rounds"])

    raw = {}  # (proxy, metric) -> {round: value}
    with open(raw_path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                raw.setdefault((r["proxy"], r["metric"]), {})[r["round"]] = r["value"]

    out = []
    w = out.append
    title = {"http": "HTTP benchmark", "udp": "UDP (DNS) benchmark"}.get(
        suite, "side-by-side benchmark")
    w(f"# weir {title} — {meta['date']}")
    w("")
    w("## Machine")
    w("")
    w(f"- CPUs: {meta['nproc']} × {meta['cpu']}")
    w(f"- Memory: {meta['mem']}")
    w(f"- Kernel: {meta['kernel']}")
    w("")
    w("## Versions")
    w("")
    for k in ("weir", "haproxy", "nginx", "iperf3", "wrk", "h2load", "openssl", "python3",
              "dnsperf", "dnsmasq"):
        if k in meta:
            w(f"- {k}: `{meta[k]}`")
    w("")
    w("## Method")
    w("")
    if suite in ("http", "udp"):
        for line in HTTP_METHOD if suite == "http" else UDP_METHOD:
            w(line.format(duration=meta["duration"]))
        w("- Proxies: " + "; ".join(f"**{labels[p]}** — {meta.get('desc_' + p, '')}" for p in proxies))
        w(f"- {rounds} round(s), interleaved; the tables show the **median over rounds**.")
        if suite == "http" and int(meta.get("paired", "0") or 0) > 0:
            w(f"- Paired runs (`--paired {meta['paired']}`): every proxy up at once, each in turn "
              f"serving a {meta.get('pair_duration', '?')} s run of the same load, the order "
              "rotating from pair to pair; the rows marked *paired runs* show the median over "
              "the pairs.")
        rate = int(meta.get("h2c_rate", "0") or 0)
        if suite == "http" and rate > 0:
            w(f"- h2c at a fixed load (`--h2c-rate {rate}`): h2load sends {rate:,} requests per "
              f"second in all (`--rps {rate // 10}` on each of its 10 connections), whatever the "
              "proxy could serve: every proxy's CPU per request at the same load.")
    else:
        method_l4(w, meta, labels, proxies, rounds)
    base = "nginx" if suite == "udp" else "haproxy"
    results(w, raw, proxies, labels, rounds, metrics, extra, notes, base)
    text = "\n".join(out)
    if out_path:
        with open(out_path, "w") as f:
            f.write(text)
    print(text)


def method_l4(w, meta, labels, proxies, rounds):
    w(f"- Everything on 127.0.0.1. The backends (one nginx HTTP server, `worker_processes 1`, "
      f"fixed {meta['body_bytes']}-byte body, keep-alive; one `iperf3 -s`) and the load "
      f"generators run pinned to CPU 0 (`taskset -c 0`); the proxy under test runs pinned "
      f"to CPU 1 (`taskset -c 1`), single-threaded, one process at a time.")
    w("- Proxies: " + "; ".join(f"**{labels[p]}** — {meta.get('desc_' + p, '')}" for p in proxies))
    w(f"- Each proxy is started fresh for each of its turns. {rounds} round(s), interleaved "
      f"(each round runs every proxy once, in order); the tables show the **median over rounds**.")
    w(f"- Per turn, in order: idle-connection memory test, iperf3 `-P 1`, iperf3 `-P 8`, "
      f"wrk with `Connection: close`, wrk keep-alive. Each load run lasts {meta['duration']} s; "
      f"between runs the harness waits until no connection to the proxy or backends is left "
      f"(TIME_WAIT aside).")
    w(f"- Throughput: `iperf3 -c 127.0.0.1 -p FRONT -t {meta['duration']} -P 1|8 -J`, "
      f"receiver bits/s.")
    w(f"- New connections: `wrk -t1 -c{meta['wrk_conns']} -d{meta['duration']}s --latency "
      f"-H 'Connection: close'` — every request is a new client connection and a new backend "
      f"connection through the proxy. Keep-alive: the same without the header. "
      f"Latency percentiles from wrk's histogram (bench/wrk_report.lua).")
    w(f"- Idle memory: bench/idle_conns.py opens {meta['idle_conns']} connections to the proxy "
      f"and sends nothing, waits until the backend has them all established, then takes the "
      f"growth of VmRSS summed over the proxy's process tree (master + workers) divided by "
      f"the number of connections.")


def results(w, raw, proxies, labels, rounds, metrics, extra, notes, base_key="haproxy"):
    def median(p, m):
        vals = [v for v in raw.get((p, m), {}).values() if v is not None]
        return statistics.median(vals) if vals else None

    # Rows only a run asked for them has (--callgrind, --paired).
    metrics = [m for m in metrics
               if not m[0].endswith(OPTIONAL_KEYS)
               or any(median(p, m[0]) is not None for p in proxies)]
    w("")
    w(f"## Results (medians of {rounds} round(s))")
    w("")
    w("| Metric | Better | " + " | ".join(labels[p] for p in proxies) + " |")
    w("|---|---|" + "---:|" * len(proxies))
    def cell(p, key):
        vals = [v for v in raw.get((p, key), {}).values() if v is not None]
        m = median(p, key)
        if m is None or len(vals) < 2 or m == 0:
            return fmt(key, m)
        return f"{fmt(key, m)} ±{(max(vals) - min(vals)) / 2 / abs(m) * 100:.0f}%"

    for key, desc, d in metrics:
        w(f"| {desc} | {'higher' if d > 0 else 'lower'} | "
          + " | ".join(cell(p, key) for p in proxies) + " |")
    if rounds > 1:
        w("")
        w("±: half the spread (max − min) over the rounds, relative to the median.")
    w("")
    base_label = labels.get(base_key, base_key)
    w(f"## Ratios to {base_label}")
    w("")
    if base_key not in proxies:
        w(f"{base_label} was not run, so there are no ratios.")
    else:
        others = [p for p in proxies if p != base_key]
        w(f"Each cell is *proxy ÷ {base_label}* of the medians above. For **higher is better** "
          f"rows, a ratio above 1.00 beats {base_label}; for **lower is better** rows (latency, "
          f"memory, CPU), a ratio below 1.00 beats {base_label}.")
        w("")
        w("| Metric | Better | " + " | ".join(f"{labels[p]} ÷ {base_label}" for p in others) + " |")
        w("|---|---|" + "---:|" * len(others))
        for key, desc, d in metrics:
            base = median(base_key, key)
            cells = []
            for p in others:
                v = median(p, key)
                if v is None or base is None or base == 0:
                    cells.append("—")
                else:
                    r = v / base
                    better = (r > 1.0) if d > 0 else (r < 1.0)
                    cells.append(f"**{r:.2f}×**" if better and abs(r - 1) >= 0.05 else f"{r:.2f}×")
            w(f"| {desc} | {'higher ↑' if d > 0 else 'lower ↓'} | " + " | ".join(cells) + " |")
        w("")
        w(f"Bold: at least 5% better than {base_label}.")
    w("")
    w("## Per-round raw numbers")
    w("")
    w("| Metric | Proxy | " + " | ".join(f"round {i}" for i in range(1, rounds + 1)) + " |")
    w("|---|---|" + "---:|" * rounds)
    for key, desc, *_ in metrics + extra:
        for p in proxies:
            vals = raw.get((p, key), {})
            w(f"| {desc} | {labels[p]} | "
              + " | ".join(fmt(key, vals.get(i)) for i in range(1, rounds + 1)) + " |")
    w("")
    if notes:
        w("## Notes")
        w("")
        for n in notes:
            w(f"- {n}")
        w("")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("iperf").add_argument("file")
    sub.add_parser("wrk").add_argument("file")
    sub.add_parser("h2load").add_argument("file")
    sub.add_parser("dnsperf").add_argument("file")
    r = sub.add_parser("render")
    r.add_argument("--suite", choices=["l4", "http", "udp"], default="l4")
    r.add_argument("--raw", required=True)
    r.add_argument("--meta", required=True)
    r.add_argument("--out")
    a = ap.parse_args()
    if a.cmd == "iperf":
        cmd_iperf(a.file)
    elif a.cmd == "wrk":
        cmd_wrk(a.file)
    elif a.cmd == "h2load":
        cmd_h2load(a.file)
    elif a.cmd == "dnsperf":
        cmd_dnsperf(a.file)
    else:
        cmd_render(a.raw, a.meta, a.out, a.suite)


if __name__ == "__main__":
    main()
