"""PyTorch half of the ds-train throughput benchmark (scripts/bench-train.sh).

Sub-commands (each prints one JSON object on stdout, or writes it to --out):

  train   --net NET.json --config DS.json --data FILE --steps N --warmup W
          --threads T
      Trains the network in eager PyTorch on the CPU, the same step as
      ds-train: forward, cross-entropy, backward, clip_grad_norm_ to the
      config's gradient_clipping, optimizer step (torch.optim.AdamW with the
      config's hyperparameters, torch's default implementation), zero_grad.
      No torch.compile: eager mode is the reference.  Attention uses
      F.scaled_dot_product_attention where torch has it (2.x).
      Data: the bytes of FILE are the tokens; sample j is bytes
      [j*T, j*T+T] (inputs the first T, targets shifted by one), step s
      takes samples s*B .. s*B+B-1 (wrapping), B = the config's
      train_micro_batch_size_per_gpu.
      Reports per-step ms and loss, median tokens/s over the steps after the
      warm-up, the peak RSS of the process (getrusage ru_maxrss).

  matmul  --size N --reps R --threads T
      Times an N x N x N fp32 matmul (torch.mm), returns the median GFLOP/s.

  ds-log  --log FILE --warmup W --tokens-per-step K
      Summarises a ds-train --log-json file the same way.

  report  --results FILE...
      Prints the final table from the JSON results of the others.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _emit(obj, out):
    s = json.dumps(obj)
    if out:
        with open(out, "w") as f:
            f.write(s + "\n")
    else:
        print(s)


def _peak_rss_kb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _stat_busy_s():
    """Seconds of CPU time used by everything on the machine (all CPUs),
    from /proc/stat; None where there is no /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = v[0] + v[1] + v[2] + sum(v[5:8])  # user nice system irq softirq steal
    return busy / float(os.sysconf("SC_CLK_TCK"))


def _own_cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def other_cpu_pct(busy0, own0, t0):
    """Share of the machine's CPUs (percent) used by OTHER processes since
    (busy0, own0, t0): a check that nothing else ran during the timing."""
    busy1 = _stat_busy_s()
    if busy0 is None or busy1 is None:
        return None
    wall = time.perf_counter() - t0
    other = (busy1 - busy0) - (_own_cpu_s() - own0)
    return max(0.0, 100.0 * other / (wall * (os.cpu_count() or 1)))


def cmd_train(a):
    import torch
    import dsref

    torch.set_num_threads(a.threads)
    net = dsref.load_net(a.net)
    with open(a.config) as f:
        cfg = json.load(f)
    B = int(cfg.get("train_micro_batch_size_per_gpu", 8))
    gas = int(cfg.get("gradient_accumulation_steps", 1))
    seed = int(cfg.get("seed", 1234))
    if net["input"]["type"] != "tokens":
        raise SystemExit("bench_torch train: only tokens nets are supported")
    T = int(net["input"]["seq_len"])
    V = int(net["input"]["vocab_size"])
    if V < 256:
        raise SystemExit("byte data needs vocab_size >= 256")

    torch.manual_seed(seed)
    model = dsref.build_model(net, attention_impl=a.attention)
    dsref.init_params(model, seed=seed)
    model.train()
    params = list(model.parameters())
    opt, clip = dsref.optimizer_from_ds_config(cfg, params)

    with open(a.data, "rb") as f:
        raw = f.read()
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
    nsamples = (len(raw) - 1) // T
    if nsamples < 1:
        raise SystemExit("data file too small")
    idx = torch.arange(T + 1)

    def batch(step):
        starts = torch.tensor([((step * B + i) % nsamples) * T for i in range(B)])
        w = data[starts[:, None] + idx[None, :]]
        return w[:, :T], w[:, 1:]

    ms, losses, norms = [], [], []
    t_all = time.perf_counter()
    for step in range(a.steps):
        t0 = time.perf_counter()
        if step == a.warmup:
            mon = (_stat_busy_s(), _own_cpu_s(), t0)
        tot = 0.0
        for micro in range(gas):
            x, y = batch(step * gas + micro)
            loss = model.loss(model(x), y)
            (loss / gas if gas > 1 else loss).backward()
            tot += loss.item() / gas
        if clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, clip).item()
        else:
            norm = float("nan")
        opt.step()
        opt.zero_grad(set_to_none=True)
        ms.append((time.perf_counter() - t0) * 1000.0)
        losses.append(tot)
        norms.append(norm)
    wall = time.perf_counter() - t_all
    other = other_cpu_pct(*mon) if a.steps > a.warmup else None
    tokens = B * gas * T
    meas = ms[a.warmup:] or ms
    med_ms = statistics.median(meas)
    _emit({
        "kind": "torch", "torch_version": torch.__version__, "python": sys.executable,
        "threads": a.threads, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "attention": sorted({m.impl for m in model.modules() if isinstance(m, dsref.Attention)}),
        "batch": B, "seq_len": T, "tokens_per_step": tokens, "steps": a.steps,
        "warmup": a.warmup, "ms": ms, "losses": losses, "grad_norms": norms,
        "median_ms": med_ms, "tokens_per_s": tokens / (med_ms / 1000.0),
        "wall_s": wall, "peak_rss_kb": _peak_rss_kb(), "other_cpu_pct": other,
    }, a.out)


def cmd_matmul(a):
    import torch

    torch.set_num_threads(a.threads)
    n = a.size
    g = torch.Generator()
    g.manual_seed(0)
    x = torch.randn(n, n, generator=g)
    y = torch.randn(n, n, generator=g)
    z = torch.empty(n, n)
    torch.mm(x, y, out=z)  # warm-up
    ts = []
    mon = (_stat_busy_s(), _own_cpu_s(), time.perf_counter())
    for _ in range(a.reps):
        t0 = time.perf_counter()
        torch.mm(x, y, out=z)
        ts.append(time.perf_counter() - t0)
    med = statistics.median(ts)
    _emit({"kind": "matmul", "size": n, "threads": a.threads, "reps": a.reps,
           "torch_version": torch.__version__,
           "median_s": med, "gflops": 2.0 * n ** 3 / med / 1e9,
           "best_gflops": 2.0 * n ** 3 / min(ts) / 1e9,
           "other_cpu_pct": other_cpu_pct(*mon)}, a.out)


def cmd_ds_log(a):
    recs = []
    with open(a.log) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    recs.append(json.loads(line))
                except ValueError:
                    pass
    if not recs:
        raise SystemExit("no JSON records in %s" % a.log)
    meas = recs[a.warmup:] or recs
    tps = [float(r["tokens_per_s"]) for r in meas if "tokens_per_s" in r]
    ms = [float(r["ms"]) for r in meas if "ms" in r]
    if not tps and ms and a.tokens_per_step:
        tps = [a.tokens_per_step / (m / 1000.0) for m in ms]
    out = {"kind": "ds", "steps": len(recs), "warmup": a.warmup,
           "ms": [r.get("ms") for r in recs], "losses": [r.get("loss") for r in recs],
           "grad_norms": [r.get("grad_norm") for r in recs],
           "median_ms": statistics.median(ms) if ms else None,
           "tokens_per_s": statistics.median(tps) if tps else None}
    if a.extra:
        out.update(json.loads(a.extra))
    _emit(out, a.out)


def _fmt(v, spec):
    return format(v, spec) if isinstance(v, (int, float)) else "-"


def cmd_report(a):
    import dsref

    net = dsref.load_net(a.net)
    fpt = dsref.flops_per_token(net)
    n_mm, attn = dsref.matmul_params(net)
    res = []
    for p in a.results:
        try:
            with open(p) as f:
                res.append(json.load(f))
        except (OSError, ValueError):
            pass
    mm = [r for r in res if r["kind"] == "matmul"]
    ds = [r for r in res if r["kind"] == "ds"]
    th = [r for r in res if r["kind"] == "torch"]
    peak = max((r["gflops"] for r in mm), default=None)

    print()
    print("== ds-train vs PyTorch: %s, micro batch %s, seq %s ==" % (
        os.path.basename(a.net), (th or [{}])[0].get("batch", "?"), net["input"].get("seq_len")))
    print("FLOPs/token (training) = 6*N_matmul + 6*attn = 6*%d + 6*%d = %.2f MFLOP"
          % (n_mm, attn, fpt / 1e6))
    print("  N_matmul: weights used in matmuls (qkv, attn.proj, fc, proj, lm_head incl. tied);"
          " attn: sum over layers of 2*seq_len*dim (QK^T and AV, full T x T)")
    for r in mm:
        oth = r.get("other_cpu_pct")
        print("fp32 matmul %dx%dx%d, %d thread(s): %.1f GFLOP/s (median of %d, best %.1f)%s"
              % (r["size"], r["size"], r["size"], r["threads"], r["gflops"], r["reps"],
                 r["best_gflops"], "  [other processes used %.0f%% of the CPUs]" % oth
                 if isinstance(oth, (int, float)) and oth > 10 else ""))
    if a.torch_note:
        print(a.torch_note)
    print()
    hdr = "%-56s %7s %9s %9s %8s %6s %8s %6s  %s" % (
        "run", "threads", "tokens/s", "ms/step", "GFLOP/s", "%peak", "RSS MiB", "other", "loss")
    print(hdr)
    print("-" * len(hdr))

    def row(label, r):
        tps = r.get("tokens_per_s")
        gf = tps * fpt / 1e9 if tps else None
        pct = 100.0 * gf / peak if (gf and peak) else None
        rss = r.get("peak_rss_kb")
        losses = [l for l in r.get("losses") or [] if l is not None]
        loss = "%.3f>%.3f" % (losses[0], losses[-1]) if losses else "-"
        oth = r.get("other_cpu_pct")
        if isinstance(oth, (int, float)) and oth > 10:
            noisy.append(label)
        print("%-56s %7s %9s %9s %8s %6s %8s %6s  %s" % (
            label[:56], r.get("threads", "?"), _fmt(tps, ".0f"), _fmt(r.get("median_ms"), ".1f"),
            _fmt(gf, ".1f"), _fmt(pct, ".0f"), _fmt(rss / 1024.0 if rss else None, ".0f"),
            _fmt(oth, ".0f") + ("%" if isinstance(oth, (int, float)) else ""), loss))
        return tps

    noisy = []
    rounds = sorted({r.get("round", 1) for r in ds + th})
    per_round = []  # (round, ds tokens/s, best torch result of the round)
    for rd in rounds:
        ds_tps, best = None, None
        for r in (x for x in ds if x.get("round", 1) == rd):
            ds_tps = row("round %d: ds-train x%s" % (rd, r.get("threads", "?")), r)
        for r in (x for x in th if x.get("round", 1) == rd):
            label = "round %d: torch %s x%d%s" % (rd, r["torch_version"], r["threads"],
                                                ", OMP_WAIT_POLICY=" + r["omp_wait_policy"]
                                                if r["omp_wait_policy"] else "")
            tps = row(label, r)
            if tps and (best is None or tps > best["tokens_per_s"]):
                best = r
        per_round.append((rd, ds_tps, best))
    print()
    import statistics
    ratios = [d / b["tokens_per_s"] for _, d, b in per_round if d and b]
    ds_all = [d for _, d, _ in per_round if d]
    best_all = [b["tokens_per_s"] for _, _, b in per_round if b]
    best = max((b for _, _, b in per_round if b), key=lambda b: b["tokens_per_s"], default=None)
    ds_tps = statistics.median(ds_all) if ds_all else None
    for rd, d, b in per_round:
        if b:
            print("round %d: PyTorch's best setting %d thread(s)%s %.0f tokens/s%s"
                  % (rd, b["threads"], ", OMP_WAIT_POLICY=" + b["omp_wait_policy"] if b["omp_wait_policy"] else "",
                     b["tokens_per_s"], "; ds/torch %.2fx" % (d / b["tokens_per_s"]) if d else ""))
    if ds_all:
        print("ds-train: median over %d round(s) %.0f tokens/s" % (len(ds_all), ds_tps))
    if best_all:
        print("PyTorch reference (each round's best setting): median over %d round(s) %.0f tokens/s"
              % (len(best_all), statistics.median(best_all)))
    if ratios:
        print("ratio ds/torch (tokens/s): %.2fx, the median of %d round(s)' ratios (range %.2f-%.2fx)"
              % (statistics.median(ratios), len(ratios), min(ratios), max(ratios)))
    elif not ds:
        print("ds-train: not run (%s)" % (a.ds_note or "no result"))
    print("tokens/s = median over the steps after %s warm-up steps; %%peak = GFLOP/s over the"
          " best fp32 matmul GFLOP/s;\nRSS = peak resident set; other = CPU share used by other"
          " processes meanwhile; loss = first>last step" % (a.warmup,))
    if noisy:
        print("WARNING: other processes were busy during: %s -- rerun on an idle machine"
              % ", ".join(noisy))
    if a.summary:
        with open(a.summary, "w") as f:
            json.dump({"flops_per_token": fpt, "matmul": mm, "ds": ds, "torch": th,
                       "best_torch": best and {k: best[k] for k in ("threads", "omp_wait_policy",
                                                                     "tokens_per_s")},
                       "ds_tokens_per_s_median": ds_tps,
                       "torch_best_tokens_per_s_median": statistics.median(best_all) if best_all else None,
                       "ratios_ds_torch": ratios,
                       "ratio_ds_torch": statistics.median(ratios) if ratios else None}, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description="PyTorch side of bench-train.sh")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--net", required=True)
    t.add_argument("--config", required=True)
    t.add_argument("--data", required=True)
    t.add_argument("--steps", type=int, default=30)
    t.add_argument("--warmup", type=int, default=5)
    t.add_argument("--threads", type=int, default=os.cpu_count())
    t.add_argument("--attention", default="auto", choices=["auto", "manual", "sdpa"])
    t.add_argument("--out")
    m = sub.add_parser("matmul")
    m.add_argument("--size", type=int, default=2048)
    m.add_argument("--reps", type=int, default=7)
    m.add_argument("--threads", type=int, default=os.cpu_count())
    m.add_argument("--out")
    d = sub.add_parser("ds-log")
    d.add_argument("--log", required=True)
    d.add_argument("--warmup", type=int, default=5)
    d.add_argument("--tokens-per-step", type=int, default=0)
    d.add_argument("--extra", help="JSON object merged into the result")
    d.add_argument("--out")
    r = sub.add_parser("report")
    r.add_argument("--net", required=True)
    r.add_argument("--warmup", type=int, default=5)
    r.add_argument("--torch-note", default="")
    r.add_argument("--ds-note", default="")
    r.add_argument("--summary")
    r.add_argument("results", nargs="*")
    a = ap.parse_args()
    {"train": cmd_train, "matmul": cmd_matmul, "ds-log": cmd_ds_log,
     "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    main()
