#!/usr/bin/env python3
"""Helpers for bench/run.sh: parse iperf3 / wrk output and render the markdown report.

  report.py iperf FILE          -> receiver Gbit/s of an `iperf3 -J` run, or "null"
  report.py wrk FILE            -> "rps p50_ms p99_ms errors" from wrk_report.lua, or nulls
  report.py render --raw RAW --meta META [--out FILE]
"""
import argparse
import json
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


def cmd_render(raw_path, meta_path, out_path):
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

    def median(p, m):
        vals = [v for v in raw.get((p, m), {}).values() if v is not None]
        return statistics.median(vals) if vals else None

    out = []
    w = out.append
    w(f"# weir side-by-side benchmark — {meta['date']}")
    w("")
    w("## Machine")
    w("")
    w(f"- CPUs: {meta['nproc']} × {meta['cpu']}")
    w(f"- Memory: {meta['mem']}")
    w(f"- Kernel: {meta['kernel']}")
    w("")
    w("## Versions")
    w("")
    for k in ("weir", "haproxy", "nginx", "iperf3", "wrk", "python3"):
        if k in meta:
            w(f"- {k}: `{meta[k]}`")
    w("")
    w("## Method")
    w("")
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

    for key, desc, d in METRICS:
        w(f"| {desc} | {'higher' if d > 0 else 'lower'} | "
          + " | ".join(cell(p, key) for p in proxies) + " |")
    if rounds > 1:
        w("")
        w("±: half the spread (max − min) over the rounds, relative to the median.")
    w("")
    w("## Ratios to HAProxy")
    w("")
    if "haproxy" not in proxies:
        w("HAProxy was not run, so there are no ratios.")
    else:
        others = [p for p in proxies if p != "haproxy"]
        w("Each cell is *proxy ÷ HAProxy* of the medians above. For **higher is better** rows, "
          "a ratio above 1.00 beats HAProxy; for **lower is better** rows (latency, memory), a "
          "ratio below 1.00 beats HAProxy.")
        w("")
        w("| Metric | Better | " + " | ".join(f"{labels[p]} ÷ HAProxy" for p in others) + " |")
        w("|---|---|" + "---:|" * len(others))
        for key, desc, d in METRICS:
            base = median("haproxy", key)
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
        w("Bold: at least 5% better than HAProxy.")
    w("")
    w("## Per-round raw numbers")
    w("")
    w("| Metric | Proxy | " + " | ".join(f"round {i}" for i in range(1, rounds + 1)) + " |")
    w("|---|---|" + "---:|" * rounds)
    for key, desc, *_ in METRICS + EXTRA:
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
    text = "\n".join(out)
    if out_path:
        with open(out_path, "w") as f:
            f.write(text)
    print(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("iperf").add_argument("file")
    sub.add_parser("wrk").add_argument("file")
    r = sub.add_parser("render")
    r.add_argument("--raw", required=True)
    r.add_argument("--meta", required=True)
    r.add_argument("--out")
    a = ap.parse_args()
    if a.cmd == "iperf":
        cmd_iperf(a.file)
    elif a.cmd == "wrk":
        cmd_wrk(a.file)
    else:
        cmd_render(a.raw, a.meta, a.out)


if __name__ == "__main__":
    main()
