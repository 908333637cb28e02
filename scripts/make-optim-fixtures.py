#!/usr/bin/python3
"""Writes the optimizer reference fixtures under tests/fixtures/optim/.

Regenerate (from the repository root, with Debian's python3-torch 1.13):

    /usr/bin/python3 scripts/make-optim-fixtures.py            # writes tests/fixtures/optim/
    /usr/bin/python3 scripts/make-optim-fixtures.py --out DIR  # elsewhere
    /usr/bin/python3 scripts/make-optim-fixtures.py --check    # regenerate in a temp
                                                               # dir, compare bytes

Needs only torch (any version >= 1.13) and the standard library.  The output
is deterministic: the initial values and gradients come from Python's
random.Random (fixed seeds; gauss() rounded to float32), torch runs on one
thread in float64.

One JSON file per case, all on the same three tensors a [7, 5], b [5] and
c [3, 4] (in this order, the flat-buffer order), K = 6 steps:

  case          the file's name without .json
  optimizer     the ds.json "optimizer" block ({"type": ..., "params": ...})
  lr            the learning rate to pass to every step (= params.lr)
  grad_scale    the step's grad_scale: the reference applies grads * grad_scale
                (1.0 everywhere except adamw_gscale, 0.5)
  steps         6
  tensors       [{"name", "shape"}] in flat-buffer order
  init          name -> initial values (float32, exact: 9 significant digits)
  grads         per step: name -> gradient (float32, exact).  The step
                magnitudes vary (x1, x0.3, x2, x0.05, x5, x1) and c has exact
                zeros: elements 0 and 5 at every step, element 7 at steps 2
                and 4 (1-based).
  expect        per step: name -> the parameters after that step, computed
                in float64 and printed with 9 significant digits (so the
                stored numbers are the float64 trajectory rounded once, not a
                float32 run's noise)
  lamb_coeffs   (Lamb only) per step [coeff_a, coeff_b, coeff_c]: the
                float64 trust ratios of that step
  tolerance_hint  max |float32 run - float64 reference| over every element of
                every step: how close a correct float32 implementation gets.
                Torch optimizers: torch.optim on float32 copies.  adam_nobias
                and Lamb: the float32 pure-Python implementation below, with
                the constants a C kernel uses (betas as float32, 1 - beta in
                float32).  lamb_clamp's c is ~50 in size, so its absolute
                hint is ~1e-5: compare relatively there.
  tolerance_hint_rel  the same, relative: max |f32 - f64| / max(1, |f64|)
  lamb_coeffs_tolerance_hint  (Lamb only) max relative |f32 - f64| of the
                coeffs.  ~7e-6 for lamb: 1 - 0.999f is 1.3e-5 off 0.001, so
                a float32 kernel's v is that far off and |u| ~6e-6 (the
                parameters hardly notice: the update is lr-sized).

References: torch.optim.AdamW / Adam / SGD / Adagrad on float64 copies for
adamw, adamw_gscale, adam_l2, sgd, sgd_nesterov and adagrad (the DeepSpeed
formulas of engine.md §4.1, §4.3, §4.4 equal torch's in exact arithmetic).
adam_nobias (FusedAdam with bias_correction false: c1 = c2 = 1, which torch
cannot do) and the Lamb cases (DeepSpeed FusedLamb, engine.md §4.2; torch has
no LAMB) use the float64 implementations in this file (ref_adam, ref_lamb,
vectorized torch float64).  They are checked two ways on every run:
  * ref_adam with bias_correction true is compared with torch.optim.AdamW
    and torch.optim.Adam (L2) in float64 (agreement ~1e-15);
  * an independent scalar float32 implementation in pure Python (no numpy,
    no torch: every operation rounded to float32 with struct, norms summed
    sequentially in float32; f32_adam, f32_lamb) must agree with the float64
    reference to ~1e-6 relative (parameters and Lamb coefficients); the
    script asserts this and prints the deviations.

Lamb cases: lamb (defaults min_coeff 0.01, max_coeff 10); lamb_clamp
(min_coeff 0.02, max_coeff 5: a starts tiny (std 1e-4), so its trust ratio
is clamped to min_coeff at every step; c starts huge (std 50), clamped to
max_coeff at every step; b starts at exactly zero, so at step 1 its weight
norm is 0 and its coeff is 1 by the "a norm is zero" rule, unclamped later;
the script asserts all of this); lamb_eps_inside (eps_inside_sqrt true,
eps 1e-3: denom = sqrt(v + eps)); lamb_nobias (bias_correction false:
step_size = lr).  Lamb's m and v are not bias-corrected;
step_size = lr sqrt(1 - b2^t) / (1 - b1^t).

adamw_eps (eps 1e-2, where the gradients' sqrt(v) is 0.05 to 5: eps added
after the bias-corrected sqrt(v), as torch, moves the updates far more than
the tolerance from eps inside the sqrt or before the correction) and sgd_wd
(SGD without momentum, weight decay 0.01) use torch.optim as the others.
"""

import argparse
import filecmp
import json
import math
import os
import random
import shutil
import struct
import sys
import tempfile

import torch

STEPS = 6
SHAPES = [("a", [7, 5]), ("b", [5]), ("c", [3, 4])]
STEP_MAG = [1.0, 0.3, 2.0, 0.05, 5.0, 1.0]
C_ZERO_ALWAYS = (0, 5)
C_ZERO_SOMETIMES = {7: (2, 4)}  # element -> 1-based steps where its gradient is 0

# name, ds.json optimizer block, grad_scale, init stds per tensor, seed
CASES = [
    ("adamw", {"type": "AdamW", "params": {
        "lr": 1e-2, "betas": [0.9, 0.99], "eps": 1e-8, "weight_decay": 0.1}},
     1.0, (1.0, 0.5, 1.0), 101),
    ("adamw_gscale", {"type": "AdamW", "params": {
        "lr": 1e-2, "betas": [0.9, 0.99], "eps": 1e-8, "weight_decay": 0.1}},
     0.5, (1.0, 0.5, 1.0), 102),
    ("adam_l2", {"type": "Adam", "params": {
        "lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.1,
        "adam_w_mode": False}},
     1.0, (1.0, 0.5, 1.0), 103),
    ("adam_nobias", {"type": "AdamW", "params": {
        "lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01,
        "bias_correction": False}},
     1.0, (1.0, 0.5, 1.0), 104),
    ("sgd", {"type": "SGD", "params": {
        "lr": 0.1, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01}},
     1.0, (1.0, 0.5, 1.0), 105),
    ("sgd_nesterov", {"type": "SGD", "params": {
        "lr": 0.05, "momentum": 0.9, "nesterov": True}},
     1.0, (1.0, 0.5, 1.0), 106),
    ("adagrad", {"type": "Adagrad", "params": {
        "lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.01,
        "initial_accumulator_value": 0.1, "eps": 1e-10}},
     1.0, (1.0, 0.5, 1.0), 107),
    ("lamb", {"type": "Lamb", "params": {
        "lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01}},
     1.0, (1.0, 0.5, 1.0), 108),
    ("lamb_clamp", {"type": "Lamb", "params": {
        "lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01,
        "min_coeff": 0.02, "max_coeff": 5.0}},
     1.0, (1e-4, 0.0, 50.0), 109),
    ("lamb_eps_inside", {"type": "Lamb", "params": {
        "lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-3, "weight_decay": 0.01,
        "eps_inside_sqrt": True}},
     1.0, (1.0, 0.5, 1.0), 110),
    ("adamw_eps", {"type": "AdamW", "params": {
        "lr": 1e-2, "betas": [0.9, 0.99], "eps": 1e-2, "weight_decay": 0.1}},
     1.0, (1.0, 0.5, 1.0), 111),
    ("sgd_wd", {"type": "SGD", "params": {
        "lr": 0.1, "weight_decay": 0.01}},
     1.0, (1.0, 0.5, 1.0), 112),
    ("lamb_nobias", {"type": "Lamb", "params": {
        "lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01,
        "bias_correction": False}},
     1.0, (1.0, 0.5, 1.0), 113),
]

FUSED_DEFAULTS = {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0,
                  "bias_correction": True, "adam_w_mode": True, "eps_inside_sqrt": False,
                  "min_coeff": 0.01, "max_coeff": 10.0}


def f32(x):
    """x rounded to the nearest float32 (as a Python float)."""
    return struct.unpack("f", struct.pack("f", x))[0]


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def make_data(seed, stds):
    rng = random.Random(seed)
    init = {}
    for (name, shape), std in zip(SHAPES, stds):
        init[name] = [f32(rng.gauss(0.0, 1.0) * std) + 0.0 for _ in range(numel(shape))]  # no -0.0
    grads = []
    for k in range(STEPS):
        g = {}
        for name, shape in SHAPES:
            vals = [f32(rng.gauss(0.0, 1.0) * STEP_MAG[k]) for _ in range(numel(shape))]
            if name == "c":
                for i in C_ZERO_ALWAYS:
                    vals[i] = 0.0
                for i, ks in C_ZERO_SOMETIMES.items():
                    if k + 1 in ks:
                        vals[i] = 0.0
            g[name] = vals
        grads.append(g)
    return init, grads


def hp(block):
    p = dict(FUSED_DEFAULTS)
    p.update(block["params"])
    return p


# ---- float64 references (torch tensors) -------------------------------------

def torch_optimizer(block, params):
    t, p = block["type"], block["params"]
    if t in ("Adam", "AdamW"):
        assert p.get("bias_correction", True)
        adam_w = t == "AdamW" or p.get("adam_w_mode", True)
        cls = torch.optim.AdamW if adam_w else torch.optim.Adam
        return cls(params, lr=p["lr"], betas=tuple(p["betas"]), eps=p["eps"],
                   weight_decay=p["weight_decay"])
    if t == "SGD":
        return torch.optim.SGD(params, lr=p["lr"], momentum=p.get("momentum", 0.0),
                               dampening=p.get("dampening", 0.0),
                               weight_decay=p.get("weight_decay", 0.0),
                               nesterov=p.get("nesterov", False))
    if t == "Adagrad":
        return torch.optim.Adagrad(params, lr=p["lr"], lr_decay=p["lr_decay"],
                                   weight_decay=p["weight_decay"],
                                   initial_accumulator_value=p["initial_accumulator_value"],
                                   eps=p["eps"])
    raise ValueError(t)


def run_torch(block, init, grads, gscale, dtype):
    params = [torch.tensor(init[n], dtype=dtype).reshape(s) for n, s in SHAPES]
    for p in params:
        p.requires_grad_(True)
    opt = torch_optimizer(block, params)
    out = []
    for g in grads:
        for p, (n, s) in zip(params, SHAPES):
            p.grad = torch.tensor(g[n], dtype=dtype).reshape(s) * gscale
        opt.step()
        out.append({n: p.detach().reshape(-1).tolist() for p, (n, _) in zip(params, SHAPES)})
    return out, None


def ref_adam(block, init, grads, gscale):
    """FusedAdam (engine.md §4.1) in float64."""
    h = hp(block)
    adam_w = block["type"] == "AdamW" or h["adam_w_mode"]
    b1, b2 = h["betas"]
    lr, eps, wd = h["lr"], h["eps"], h["weight_decay"]
    p = {n: torch.tensor(init[n], dtype=torch.float64) for n, _ in SHAPES}
    m = {n: torch.zeros_like(p[n]) for n in p}
    v = {n: torch.zeros_like(p[n]) for n in p}
    out = []
    for t, g in enumerate(grads, 1):
        c1, c2 = (1 - b1 ** t, 1 - b2 ** t) if h["bias_correction"] else (1.0, 1.0)
        for n, _ in SHAPES:
            gg = torch.tensor(g[n], dtype=torch.float64) * gscale
            if not adam_w:
                gg = gg + wd * p[n]
            m[n] = b1 * m[n] + (1 - b1) * gg
            v[n] = b2 * v[n] + (1 - b2) * gg * gg
            upd = (m[n] / c1) / (torch.sqrt(v[n] / c2) + eps)
            if adam_w:
                upd = upd + wd * p[n]
            p[n] = p[n] - lr * upd
        out.append({n: p[n].tolist() for n, _ in SHAPES})
    return out, None


def ref_lamb(block, init, grads, gscale):
    """FusedLamb (engine.md §4.2) in float64; also returns the per-step coeffs."""
    h = hp(block)
    b1, b2 = h["betas"]
    lr, eps, wd = h["lr"], h["eps"], h["weight_decay"]
    p = {n: torch.tensor(init[n], dtype=torch.float64) for n, _ in SHAPES}
    m = {n: torch.zeros_like(p[n]) for n in p}
    v = {n: torch.zeros_like(p[n]) for n in p}
    out, coeffs = [], []
    for t, g in enumerate(grads, 1):
        step_size = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) if h["bias_correction"] else lr
        cs = []
        for n, _ in SHAPES:
            gg = torch.tensor(g[n], dtype=torch.float64) * gscale
            m[n] = b1 * m[n] + (1 - b1) * gg
            v[n] = b2 * v[n] + (1 - b2) * gg * gg
            denom = torch.sqrt(v[n] + eps) if h["eps_inside_sqrt"] else torch.sqrt(v[n]) + eps
            u = m[n] / denom + wd * p[n]
            wn, un = torch.linalg.norm(p[n]).item(), torch.linalg.norm(u).item()
            c = min(max(wn / un, h["min_coeff"]), h["max_coeff"]) if wn != 0 and un != 0 else 1.0
            cs.append(c)
            p[n] = p[n] - step_size * c * u
        coeffs.append(cs)
        out.append({n: p[n].tolist() for n, _ in SHAPES})
    return out, coeffs


# ---- independent float32 implementations (pure Python, scalar) ---------------

def consts(h, exact):
    """beta1, beta2, 1 - beta1, 1 - beta2 as float32: from the float32 betas like a C kernel
    (1 - 0.999f is 1.3e-5 off 0.001: v, and so u, are ~6e-6 off), or rounded from float64."""
    b1, b2 = f32(h["betas"][0]), f32(h["betas"][1])
    if exact:
        return b1, b2, f32(1 - h["betas"][0]), f32(1 - h["betas"][1]), h["betas"]
    return b1, b2, f32(1 - b1), f32(1 - b2), (b1, b2)


def f32_adam(block, init, grads, gscale, exact=False):
    h = hp(block)
    adam_w = block["type"] == "AdamW" or h["adam_w_mode"]
    b1, b2, omb1, omb2, (pb1, pb2) = consts(h, exact)
    lr, eps, wd, gs = f32(h["lr"]), f32(h["eps"]), f32(h["weight_decay"]), f32(gscale)
    p = {n: list(init[n]) for n, _ in SHAPES}
    m = {n: [0.0] * len(p[n]) for n in p}
    v = {n: [0.0] * len(p[n]) for n in p}
    out = []
    for t, g in enumerate(grads, 1):
        if h["bias_correction"]:
            c1 = f32(1 - f32(pb1 ** t))
            c2 = f32(1 - f32(pb2 ** t))
        else:
            c1 = c2 = 1.0
        for n, _ in SHAPES:
            P, M, V, G = p[n], m[n], v[n], g[n]
            for i in range(len(P)):
                gg = f32(G[i] * gs)
                if not adam_w:
                    gg = f32(gg + f32(wd * P[i]))
                M[i] = f32(f32(b1 * M[i]) + f32(omb1 * gg))
                V[i] = f32(f32(b2 * V[i]) + f32(omb2 * f32(gg * gg)))
                upd = f32(f32(M[i] / c1) / f32(f32(math.sqrt(f32(V[i] / c2))) + eps))
                if adam_w:
                    upd = f32(upd + f32(wd * P[i]))
                P[i] = f32(P[i] - f32(lr * upd))
        out.append({n: list(p[n]) for n, _ in SHAPES})
    return out, None


def f32_lamb(block, init, grads, gscale, exact=False):
    h = hp(block)
    b1, b2, omb1, omb2, (pb1, pb2) = consts(h, exact)
    lr, eps, wd, gs = f32(h["lr"]), f32(h["eps"]), f32(h["weight_decay"]), f32(gscale)
    lo, hi = f32(h["min_coeff"]), f32(h["max_coeff"])
    p = {n: list(init[n]) for n, _ in SHAPES}
    m = {n: [0.0] * len(p[n]) for n in p}
    v = {n: [0.0] * len(p[n]) for n in p}
    out, coeffs = [], []
    for t, g in enumerate(grads, 1):
        if h["bias_correction"]:
            step_size = f32(f32(lr * f32(math.sqrt(f32(1 - f32(pb2 ** t))))) / f32(1 - f32(pb1 ** t)))
        else:
            step_size = lr
        cs = []
        for n, _ in SHAPES:
            P, M, V, G = p[n], m[n], v[n], g[n]
            u = [0.0] * len(P)
            ws = us = 0.0
            for i in range(len(P)):
                gg = f32(G[i] * gs)
                M[i] = f32(f32(b1 * M[i]) + f32(omb1 * gg))
                V[i] = f32(f32(b2 * V[i]) + f32(omb2 * f32(gg * gg)))
                if h["eps_inside_sqrt"]:
                    denom = f32(math.sqrt(f32(V[i] + eps)))
                else:
                    denom = f32(f32(math.sqrt(V[i])) + eps)
                u[i] = f32(f32(M[i] / denom) + f32(wd * P[i]))
                ws = f32(ws + f32(P[i] * P[i]))
                us = f32(us + f32(u[i] * u[i]))
            wn, un = f32(math.sqrt(ws)), f32(math.sqrt(us))
            c = min(max(f32(wn / un), lo), hi) if wn != 0 and un != 0 else 1.0
            cs.append(c)
            sc = f32(step_size * c)
            for i in range(len(P)):
                P[i] = f32(P[i] - f32(sc * u[i]))
        coeffs.append(cs)
        out.append({n: list(p[n]) for n, _ in SHAPES})
    return out, coeffs


# ---- comparison and output ----------------------------------------------------

def max_diff(x, y, rel=False):
    d = 0.0
    for sx, sy in zip(x, y):
        for n, _ in SHAPES:
            for a, b in zip(sx[n], sy[n]):
                e = abs(a - b)
                if rel:
                    e /= max(1.0, abs(b))
                d = max(d, e)
    return d


def num(x):
    """A float printed with 9 significant digits (exact for float32 values), as JSON."""
    x = float(x)
    assert math.isfinite(x), x
    return repr(float("%.9g" % x))


def dump(obj, ind=0):
    pad = " " * ind
    if isinstance(obj, float):
        return num(obj)
    if isinstance(obj, list) and obj and all(isinstance(e, float) for e in obj):
        return "[" + ", ".join(num(e) for e in obj) + "]"
    if isinstance(obj, list) and obj and all(isinstance(e, (dict, list)) for e in obj):
        return "[\n" + ",\n".join(pad + " " + dump(e, ind + 1) for e in obj) + "\n" + pad + "]"
    if isinstance(obj, dict) and obj.get("__inline__"):
        return json.dumps({k: v for k, v in obj.items() if k != "__inline__"})
    if isinstance(obj, dict):
        items = [pad + " " + json.dumps(k) + ": " + dump(v, ind + 1) for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    return json.dumps(obj)


def make(case, block, gscale, stds, seed, out_dir):
    init, grads = make_data(seed, stds)
    t = block["type"]
    lamb = t == "Lamb"
    own = lamb or not block["params"].get("bias_correction", True)
    if lamb:
        expect, coeffs = ref_lamb(block, init, grads, gscale)
        f32run, f32runc = f32_lamb(block, init, grads, gscale)
        f32x, f32coeffs = f32_lamb(block, init, grads, gscale, exact=True)
    elif own:
        expect, coeffs = ref_adam(block, init, grads, gscale)
        f32run, _ = f32_adam(block, init, grads, gscale)
        f32x, _ = f32_adam(block, init, grads, gscale, exact=True)
    else:
        expect, coeffs = run_torch(block, init, grads, gscale, torch.float64)
        f32run, _ = run_torch(block, init, grads, gscale, torch.float32)
    hint = max_diff(f32run, expect)
    rel = max_diff(f32run, expect, rel=True)
    assert rel < 2e-5, (case, "float32 run vs float64 reference", rel)
    notes = ["f32-vs-f64 abs %.2e rel %.2e" % (hint, rel)]

    if t in ("Adam", "AdamW") and not own:
        # our own float64 FusedAdam formulas against torch's, and the float32 scalar one
        mine, _ = ref_adam(block, init, grads, gscale)
        d = max_diff(mine, expect)
        assert d < 1e-13, (case, "ref_adam vs torch", d)
        f32x, _ = f32_adam(block, init, grads, gscale, exact=True)
        notes.append("ref_adam-vs-torch %.1e" % d)
    if own or t in ("Adam", "AdamW"):
        # the scalar float32 implementation (float64-exact constants) against the reference
        dx = max_diff(f32x, expect, rel=True)
        assert dx < 2e-6, (case, "scalar float32 vs float64 reference", dx)
        notes.append("scalar-f32-vs-ref rel %.1e" % dx)
    if lamb:
        dc = max(abs(a - b) / abs(b) for ca, cb in zip(f32coeffs, coeffs) for a, b in zip(ca, cb))
        assert dc < 2e-6, (case, "lamb coeffs float32 vs float64", dc)
        notes.append("coeff rel %.1e" % dc)
        h = hp(block)
        if case == "lamb_clamp":
            for k, (ca, cb, cc) in enumerate(coeffs):
                assert ca == h["min_coeff"], (k, ca)
                assert cc == h["max_coeff"], (k, cc)
                # b starts at zero: weight norm 0, coeff 1; then |p| ~ lr |u|: min_coeff
                assert cb == (1.0 if k == 0 else h["min_coeff"]), (k, cb)
        else:
            for cs in coeffs:
                for c in cs:
                    assert h["min_coeff"] < c < h["max_coeff"], (case, c)

    doc = {
        "case": case,
        "optimizer": dict(block, __inline__=True),
        "lr": float(block["params"]["lr"]),
        "grad_scale": float(gscale),
        "steps": STEPS,
        "tensors": [{"name": n, "shape": s, "__inline__": True} for n, s in SHAPES],
        "init": init,
        "grads": grads,
        "expect": expect,
    }
    if lamb:
        doc["lamb_coeffs"] = coeffs
        doc["lamb_coeffs_tolerance_hint"] = float("%.3g" % max(
            abs(a - b) / abs(b) for ca, cb in zip(f32runc, coeffs) for a, b in zip(ca, cb)))
    doc["tolerance_hint"] = float("%.3g" % hint)
    doc["tolerance_hint_rel"] = float("%.3g" % rel)
    text = dump(doc) + "\n"
    json.loads(text)  # valid JSON
    path = os.path.join(out_dir, case + ".json")
    with open(path, "w") as f:
        f.write(text)
    return path, notes


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--out", default=os.path.join(root, "tests", "fixtures", "optim"))
    ap.add_argument("--check", action="store_true",
                    help="regenerate into a temporary folder and compare with --out")
    args = ap.parse_args()

    torch.set_num_threads(1)
    out_dir = args.out
    if args.check:
        out_dir = tempfile.mkdtemp(prefix="ds-optim-fixtures-")
    os.makedirs(out_dir, exist_ok=True)

    bad = 0
    for case, block, gscale, stds, seed in CASES:
        path, notes = make(case, block, gscale, stds, seed, out_dir)
        shown = os.path.join(args.out, case + ".json") if args.check else path
        print("%-40s %7d bytes  %s" % (os.path.relpath(shown), os.path.getsize(path),
                                       "; ".join(notes)))
        if args.check:
            b = os.path.join(args.out, case + ".json")
            same = os.path.exists(b) and filecmp.cmp(path, b, shallow=False)
            print("  %s" % ("same" if same else "DIFFERS"))
            bad += not same
    if args.check:
        names = {c[0] + ".json" for c in CASES}
        extra = sorted(f for f in os.listdir(args.out) if f.endswith(".json") and f not in names) \
            if os.path.isdir(args.out) else []
        for f in extra:
            print("  %s: not written by this script" % f)
        shutil.rmtree(out_dir)
        return 1 if bad or extra else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
