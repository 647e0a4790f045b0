#!/usr/bin/env python3
"""Per-request figures from one callgrind profile of a proxy (bench/http.sh --callgrind).

    callgrind_summary.py PROFILE REQUESTS BINARY

The profile is callgrind's, taken with --cache-sim=yes --branch-sim=yes
--dump-instr=yes over REQUESTS requests. Prints `key value` lines, each per request:

  instr       user-space instructions
  i1_misses   misses of the simulated first-level instruction cache
  d1_misses   misses of the simulated first-level data cache (reads and writes)
  writes      data writes
  mispredicts mispredicted branches (conditional and indirect)
  locked      atomic instructions (`lock` prefix, `xchg` with memory) run in BINARY's
              own code; shared libraries are not disassembled
  clocks      calls to clock_gettime
  hot_kib     code run at least once per request on average, in KiB of 64-byte lines

Simulated caches and branch predictors are callgrind's models, not the machine's: the
figures compare two proxies measured the same way, they do not predict time.
"""

import re
import subprocess
import sys


def locked_addresses(binary):
    """Addresses of the atomic instructions in `binary` (as callgrind names them)."""
    out = set()
    dump = subprocess.run(["objdump", "-d", "--no-show-raw-insn", binary],
                          capture_output=True, text=True, check=True).stdout
    for line in dump.splitlines():
        m = re.match(r"\s*([0-9a-f]+):\s+(\S+)(.*)", line)
        if not m:
            continue
        op, rest = m.group(2), m.group(3)
        if op == "lock" or (op.startswith("xchg") and "(" in rest):
            out.add(int(m.group(1), 16))
    return out


def position(token, prev):
    """An instruction address column: absolute (0x...), relative (+n, -n) or same (*)."""
    if token.startswith("0x"):
        return int(token, 16)
    if token[0] in "+-":
        return prev + int(token)
    return prev


def summarize(profile, requests, binary):
    locked = locked_addresses(binary)
    events, totals = [], None
    names = {}
    caller = callee = None
    addr = 0
    in_call = False
    lines = {}
    n_locked = 0
    clocks = 0
    npos = 1
    with open(profile, encoding="utf-8", errors="replace") as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not line:
                continue
            head = line[0]
            if head.isalpha():
                key, _, value = line.partition("=")
                if line.startswith("positions:"):
                    npos = len(line.split()) - 1
                elif line.startswith("events:"):
                    events = line.split()[1:]
                elif line.startswith(("summary:", "totals:")):
                    totals = [int(x) for x in line.split()[1:]]
                elif key in ("fn", "cfn"):
                    m = re.match(r"\((\d+)\)(?: (.*))?", value)
                    name = value
                    if m:
                        if m.group(2):
                            names[m.group(1)] = m.group(2)
                        name = names.get(m.group(1), "")
                    if key == "fn":
                        caller = name
                    else:
                        callee = name
                elif key == "calls":
                    in_call = True
                    count = int(value.split()[0])
                    if "clock_gettime" in callee and "clock_gettime" not in caller:
                        clocks += count
                continue
            if head not in "0123456789+-*":
                continue
            cols = line.split()
            addr = position(cols[0], addr)
            if in_call:
                # The inclusive cost of a call: already counted where it ran.
                in_call = False
                continue
            # Columns: the positions (instruction address first), then the events.
            ir = int(cols[npos]) if len(cols) > npos else 0
            lines[addr >> 6] = lines.get(addr >> 6, 0) + ir
            if addr in locked:
                n_locked += ir
    if not events or totals is None:
        raise SystemExit(f"{profile}: not a callgrind profile")
    total = dict(zip(events, totals))
    needed = ("Ir", "I1mr", "D1mr", "D1mw", "Dw", "Bcm", "Bim")
    missing = [e for e in needed if e not in total]
    if missing:
        raise SystemExit(f"{profile}: no {', '.join(missing)}: run callgrind with "
                         "--cache-sim=yes --branch-sim=yes --dump-instr=yes")
    per = lambda v: round(v / requests)
    hot = sum(1 for ir in lines.values() if ir >= requests)
    return {
        "instr": per(total["Ir"]),
        "i1_misses": per(total["I1mr"]),
        "d1_misses": per(total["D1mr"] + total["D1mw"]),
        "writes": per(total["Dw"]),
        "mispredicts": per(total["Bcm"] + total["Bim"]),
        "locked": per(n_locked),
        "clocks": round(clocks / requests, 2),
        "hot_kib": round(hot * 64 / 1024),
    }


def main():
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    profile, requests, binary = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if requests <= 0:
        raise SystemExit("REQUESTS must be positive")
    for key, value in summarize(profile, requests, binary).items():
        print(key, value)


if __name__ == "__main__":
    main()
