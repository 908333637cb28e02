#!/usr/bin/env python3
"""Summarize oneDNN's verbose output: which implementation ran each matmul shape, how often, for
how long, at what rate.

    ONEDNN_VERBOSE=1 ds-train ... --device cpu 2>&1 | scripts/onednn-summary.py [--skip N]

Reads the `onednn_verbose,exec,...` lines (oneDNN 2.x and 3.x; other lines are ignored) and
prints one row per (implementation, operand types and layouts, shape): calls, total and mean
milliseconds, GFLOP/s (2 M N K per product, times the batch), sorted by total time, then the
totals per implementation. --skip N leaves out each row's first N calls (warm-up: the first
execution of a primitive also fills its caches). A product split between threads shows once per
thread's share (rows of the shape), and the threads' calls overlap in time: the rate is per call.
"""
import argparse
import collections
import re
import sys


def flops(desc):
    """2 M N K x batch from a matmul problem descriptor 'B..xMxK:B..xKxN:B..xMxN'."""
    parts = desc.split(":")
    if len(parts) != 3:
        return None
    try:
        a = [int(x) for x in parts[0].split("x")]
        b = [int(x) for x in parts[1].split("x")]
    except ValueError:
        return None
    if len(a) < 2 or len(b) < 2:
        return None
    m, k, n = a[-2], a[-1], b[-1]
    batch = 1
    for x, y in zip(a[:-2], b[:-2]):
        batch *= max(x, y)
    return 2.0 * m * n * k * batch


def short_md(md):
    """'src_bf16::blocked:ab:f0 wei_bf16::blocked:ba:f0 ...' -> 'src bf16 ab, wei bf16 ba, ...'"""
    out = []
    for t in md.split():
        m = re.match(r"(\w+?)_(\w+)::\w+:(\w+):", t)
        out.append("%s %s %s" % m.groups() if m else t)
    return ", ".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skip", type=int, default=0, help="leave out each row's first N calls")
    ap.add_argument("files", nargs="*", help="verbose logs (default: standard input)")
    args = ap.parse_args()
    rows = collections.OrderedDict()
    seen = collections.Counter()
    streams = [open(f, errors="replace") for f in args.files] or [sys.stdin]
    for fh in streams:
        for line in fh:
            if not line.startswith("onednn_verbose,") and not line.startswith("dnnl_verbose,"):
                continue
            f = line.rstrip("\n").split(",")
            # 2.x: verbose,exec,engine,primitive,impl,prop,mds,attrs,aux,desc,time
            # 3.x adds a timestamp after the marker on request and 'primitive' before exec
            if "exec" not in f:
                continue
            i = f.index("exec")
            if f[i - 1] == "primitive" or f[i + 1] in ("cpu", "gpu"):
                pass
            rest = f[i + 1:]
            if len(rest) < 9:
                continue
            engine, prim, impl, _prop, md, attrs, _aux, desc, t = rest[:9]
            try:
                ms = float(t)
            except ValueError:
                continue
            key = (prim, impl, short_md(md) + (" +" + attrs if attrs else ""), desc)
            seen[key] += 1
            if seen[key] <= args.skip:
                continue
            r = rows.setdefault(key, [0, 0.0])
            r[0] += 1
            r[1] += ms
    if not rows:
        print("onednn-summary: no oneDNN exec lines (was ONEDNN_VERBOSE=1 set?)")
        return 1
    total = sum(r[1] for r in rows.values())
    print("%-10s %-26s %-28s %6s %9s %8s %8s  %s" % ("primitive", "implementation", "shape", "calls", "total ms",
                                                     "mean ms", "GFLOP/s", "operands"))
    per_impl = collections.Counter()
    for (prim, impl, md, desc), (n, ms) in sorted(rows.items(), key=lambda kv: -kv[1][1]):
        fl = flops(desc) if prim == "matmul" else None
        rate = "%8.1f" % (fl * n / (ms * 1e6)) if fl and ms > 0 else "%8s" % "-"
        print("%-10s %-26s %-28s %6d %9.2f %8.4f %s  %s" % (prim, impl[:26], desc[:28], n, ms, ms / n, rate, md))
        per_impl[impl] += ms
    print("total %.2f ms in %d calls; by implementation: %s" % (
        total, sum(r[0] for r in rows.values()),
        ", ".join("%s %.1f%%" % (k, 100 * v / total) for k, v in per_impl.most_common())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
