#!/usr/bin/python3
"""Writes the reference fixtures of the C tests under tests/fixtures/.

Regenerate (from the repository root, with Debian's python3-torch 1.13):

    /usr/bin/python3 scripts/make-fixtures.py            # writes tests/fixtures/
    /usr/bin/python3 scripts/make-fixtures.py --out DIR  # elsewhere
    /usr/bin/python3 scripts/make-fixtures.py --check    # regenerate in a temp
                                                         # dir, compare bytes

Needs only torch (any version >= 1.13) and the standard library; the
safetensors files are written by hand (scripts/dsref.py: write_safetensors).
The output is deterministic: fixed seeds, one CPU thread, float64 math.  With
another torch version the float32-rounded numbers may differ in the last bit.

Precision choice: the models are float32 models, and the initial parameters
and inputs are drawn in float32 and stored as F32 (exactly).  All reference
values (logits, loss, gradients, the 10-step optimizer trajectories) are then
computed with the model in float64 and rounded to float32 when stored, so the
stored values are the exact answers rounded once, not one float32 run's
rounding noise.  Exceptions: `out.loss_f64` (F64 [1]) keeps the float64 loss,
and the tokens/labels are I32.  The metadata key `tolerance_hint` gives, for
each optimizer prefix, the largest |float32 run - float64 reference| seen over
its parameters and losses (the same steps run with the model in float32 by
torch), i.e. how close a correct float32 engine can be expected to get.
Beware the key third of every attention qkv.bias (rows dim..2*dim-1): its
gradient is analytically zero (softmax is unchanged by a constant added to
all keys), so grad.* there is ~1e-20 and under Adam a float32 engine's
rounding noise there becomes updates of up to lr per step: the gpt_tiny adamw
run differs by ~2e-4 there, ~1e-6 elsewhere (`param_max_abs_excl_k_bias`).
Tests should compare those rows loosely (or skip them) for adam* prefixes.
More generally Adam divides by sqrt(v): where a gradient element is tiny its
update is ~lr whatever its size, so float32 noise grows over the 10 steps;
on another gpt_tiny batch torch's own float32 run was 1e-4 off the float64
trajectory in attn.qkv.weight.  Suggested tolerances: forward/grad ~1e-5
relative, SGD trajectories ~1e-5, Adam trajectories atol ~1e-3 for gpt_tiny
(~1e-5 for the MLPs), losses ~1e-5.

Files (each next to its network file NAME.json):
  gpt_tiny: tokens vocab 64, seq_len 16, dim 32, 4 heads, 2 blocks (fc 128,
            gelu tanh), ln_f, tied lm_head; B=3.  Init normal(0, 0.02) for
            weights, then normal(0, 0.1) noise added to every bias and to
            layernorm weight (around 1) and bias.
  mlp:      features 12 -> fc1 32 -> relu -> fc2 5, cross_entropy, B=6.
  mlp_mse:  features 8 -> fc1 16 -> gelu (erf) -> fc2 4, mse, B=5.
            (MLP init: normal(0, 0.3) weights, normal(0, 0.1) biases.)

Tensors in each file:
  param.<name>           initial parameters (F32), flat-buffer order
  input.tokens, input.targets   I32 [B, T] (token nets; targets = next token)
  input.x                F32 [B, dim] (feature nets)
  input.labels           I32 [B]      (feature nets with cross_entropy)
  input.y                F32 [B, out] (feature nets with mse)
  out.logits             F32 [B, T, V] or [B, out]
  out.loss               F32 [1];  out.loss_f64  F64 [1]
  grad.<name>            F32 gradient of out.loss for every parameter
  for each optimizer prefix P (10 steps, each on the same batch):
  P.losses               F32 [10] loss before each update
  P.grad_norms           F32 [10] global L2 grad norm before each update
                         (before clipping)
  P.<name>               F32 every parameter after the 10 updates
Prefixes: adamw (AdamW lr 1e-2, betas (0.9, 0.999), eps 1e-8, wd 0.1),
adam_l2 (Adam, L2 wd 0.1: DeepSpeed Adam with adam_w_mode false), sgd (lr 0.1,
momentum 0.9, dampening 0, wd 0.01), sgd_nesterov (lr 0.1, momentum 0.9,
nesterov, wd 0), adamw_clip (adamw with gradient clipping 0.05 before every
step: coef = 0.05 / (norm + 1e-6), applied when < 1).

Metadata (all strings): net (the network JSON), batch_size, steps, seed,
torch_version, reference_dtype, init, for each prefix P: P (torch optimizer
and hyperparameters, JSON) and P.ds_config (the equivalent ds_config.json
fragment, JSON), tolerance_hint (JSON), param_names (JSON list, flat order).
"""

import argparse
import copy
import filecmp
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import dsref  # noqa: E402

STEPS = 10

GPT_TINY = {
    "input": {"type": "tokens", "vocab_size": 64, "seq_len": 16},
    "layers": [
        {"type": "embedding", "name": "wte", "dim": 32},
        {"type": "position_embedding", "name": "wpe"},
        {"type": "repeat", "name": "h", "count": 2, "layers": [
            {"type": "residual", "layers": [
                {"type": "layernorm", "name": "ln_1"},
                {"type": "attention", "name": "attn", "heads": 4, "causal": True}]},
            {"type": "residual", "layers": [
                {"type": "layernorm", "name": "ln_2"},
                {"type": "linear", "name": "fc", "out": 128},
                {"type": "gelu", "approximate": "tanh"},
                {"type": "linear", "name": "proj", "out": 32}]}]},
        {"type": "layernorm", "name": "ln_f"},
        {"type": "linear", "name": "lm_head", "out": 64, "bias": False, "tied_to": "wte"}],
    "loss": {"type": "cross_entropy"},
}

MLP = {
    "input": {"type": "features", "dim": 12},
    "layers": [
        {"type": "linear", "name": "fc1", "out": 32},
        {"type": "relu"},
        {"type": "linear", "name": "fc2", "out": 5}],
    "loss": {"type": "cross_entropy"},
}

MLP_MSE = {
    "input": {"type": "features", "dim": 8},
    "layers": [
        {"type": "linear", "name": "fc1", "out": 16},
        {"type": "gelu"},
        {"type": "linear", "name": "fc2", "out": 4}],
    "loss": {"type": "mse"},
}

# prefix -> ds_config fragment (the torch optimizer is built from it by
# dsref.optimizer_from_ds_config, and checked against the torch settings below)
OPTIMIZERS = [
    ("adamw", {"optimizer": {"type": "AdamW", "params": {
        "lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.1}}},
     ("AdamW", {"lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.1})),
    ("adam_l2", {"optimizer": {"type": "Adam", "params": {
        "lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.1,
        "adam_w_mode": False}}},
     ("Adam", {"lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.1})),
    ("sgd", {"optimizer": {"type": "SGD", "params": {
        "lr": 0.1, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.01,
        "nesterov": False}}},
     ("SGD", {"lr": 0.1, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.01,
              "nesterov": False})),
    ("sgd_nesterov", {"optimizer": {"type": "SGD", "params": {
        "lr": 0.1, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.0,
        "nesterov": True}}},
     ("SGD", {"lr": 0.1, "momentum": 0.9, "dampening": 0.0, "weight_decay": 0.0,
              "nesterov": True})),
    ("adamw_clip", {"optimizer": {"type": "AdamW", "params": {
        "lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.1}},
        "gradient_clipping": 0.05},
     ("AdamW", {"lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.1,
                "gradient_clipping": 0.05})),
]


def f32(t):
    return t.detach().to(torch.float32).contiguous()


def check_optimizer(opt, torch_name, hp):
    """The optimizer built from the ds_config must be the torch one we say."""
    assert type(opt).__name__ == torch_name, (type(opt).__name__, torch_name)
    g = opt.param_groups[0]
    for k, v in hp.items():
        if k == "gradient_clipping":
            continue
        got = list(g[k]) if isinstance(g[k], tuple) else g[k]
        assert got == v, (torch_name, k, got, v)


def run_steps(model, ds_cfg, torch_name, hp, x, target):
    """STEPS updates on the same batch; returns (losses, grad_norms, params)."""
    params = [p for _, p in model.named_parameters()]
    opt, clip = dsref.optimizer_from_ds_config(ds_cfg, params)
    check_optimizer(opt, torch_name, hp)
    losses, norms = [], []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = model.loss(model(x), target)
        loss.backward()
        norm = dsref.clip_grad_norm(params, clip) if clip > 0 else \
            dsref.clip_grad_norm(params, float("inf"))
        losses.append(loss.item())
        norms.append(norm)
        opt.step()
    return losses, norms, [(n, p.detach().clone()) for n, p in model.named_parameters()]


def make(name, net, batch, seed, out_dir, init_std, noise):
    g = torch.Generator()
    g.manual_seed(seed)
    model = dsref.build_model(net, attention_impl="manual")
    dsref.init_params(model, std=init_std, noise=noise, generator=g)
    names = [n for n, _ in model.named_parameters()]
    assert [(n, tuple(p.shape)) for n, p in model.named_parameters()] == dsref.param_specs(net)

    tensors = []
    for n, p in model.named_parameters():
        tensors.append(("param." + n, f32(p)))

    inp = net["input"]
    if inp["type"] == "tokens":
        T, V = inp["seq_len"], inp["vocab_size"]
        seq = torch.randint(0, V, (batch, T + 1), generator=g)
        x, target = seq[:, :T].contiguous(), seq[:, 1:].contiguous()
        tensors += [("input.tokens", x.to(torch.int32)), ("input.targets", target.to(torch.int32))]
    else:
        x = torch.randn(batch, inp["dim"], generator=g, dtype=torch.float32)
        tensors.append(("input.x", x))
        if net["loss"]["type"] == "cross_entropy":
            target = torch.randint(0, model.out_dim, (batch,), generator=g)
            tensors.append(("input.labels", target.to(torch.int32)))
        else:
            target = torch.randn(batch, model.out_dim, generator=g, dtype=torch.float32)
            tensors.append(("input.y", target))

    def as64(t):
        return t.double() if t.is_floating_point() else t

    # Reference forward/backward in float64.
    m64 = copy.deepcopy(model).double()
    out = m64(as64(x))
    loss = m64.loss(out, as64(target))
    loss.backward()
    tensors.append(("out.logits", f32(out)))
    tensors.append(("out.loss", f32(loss.reshape(1))))
    tensors.append(("out.loss_f64", loss.detach().reshape(1).clone()))
    for n, p in m64.named_parameters():
        tensors.append(("grad." + n, f32(p.grad)))

    meta = {
        "net": json.dumps(net, separators=(",", ":")),
        "batch_size": str(batch),
        "steps": str(STEPS),
        "seed": str(seed),
        "torch_version": torch.__version__,
        "reference_dtype": "float64 (stored rounded to float32)",
        "init": json.dumps({"weights": "normal(0, %g)" % init_std,
                            "noise": "normal(0, %g) added to biases and layernorm params" % noise}),
        "param_names": json.dumps(names),
    }
    hint = {}
    for prefix, ds_cfg, (torch_name, hp) in OPTIMIZERS:
        losses, norms, params = run_steps(copy.deepcopy(model).double(), ds_cfg, torch_name, hp,
                                          as64(x), as64(target))
        tensors.append((prefix + ".losses", f32(torch.tensor(losses, dtype=torch.float64))))
        tensors.append((prefix + ".grad_norms", f32(torch.tensor(norms, dtype=torch.float64))))
        for n, p in params:
            tensors.append((prefix + "." + n, f32(p)))
        meta[prefix] = json.dumps(dict(hp, optimizer=torch_name, steps=STEPS))
        meta[prefix + ".ds_config"] = json.dumps(ds_cfg)
        # The same run in float32: how far a float32 engine may be off.
        l32, n32, p32 = run_steps(copy.deepcopy(model), ds_cfg, torch_name, hp, x, target)
        diffs = [(n, (a - b.float()).abs()) for (n, a), (_, b) in zip(p32, params)]
        dp = max(d.max().item() for _, d in diffs)
        dl = max(abs(a - b) for a, b in zip(l32, losses))
        hint[prefix] = {"param_max_abs": float("%.3g" % dp), "loss_max_abs": float("%.3g" % dl)}
        kb = [(n, d) for n, d in diffs if n.endswith(".qkv.bias")]
        if kb:
            # The k third of qkv.bias has an analytically zero gradient
            # (softmax ignores a constant added to every key); Adam turns the
            # rounding noise there into updates of up to lr per step.
            dk = [torch.cat([d[:d.numel() // 3], d[2 * d.numel() // 3:]]) if n.endswith(".qkv.bias")
                  else d for n, d in diffs]
            hint[prefix]["param_max_abs_excl_k_bias"] = float(
                "%.3g" % max(d.max().item() for d in dk))
    # float32 forward/backward vs the reference
    m32 = copy.deepcopy(model)
    out32 = m32(x)
    l32 = m32.loss(out32, target)
    l32.backward()
    hint["forward"] = {"logits_max_abs": float("%.3g" % (out32.double() - out).abs().max().item()),
                       "loss_abs": float("%.3g" % abs(l32.item() - loss.item())),
                       "grad_max_abs": float("%.3g" % max(
                           (a.grad.double() - b.grad).abs().max().item()
                           for a, b in zip(m32.parameters(), m64.parameters())))}
    meta["tolerance_hint"] = json.dumps(hint)

    path = os.path.join(out_dir, name + ".safetensors")
    dsref.write_safetensors(path, tensors, meta)
    with open(os.path.join(out_dir, name + ".json"), "w") as f:
        json.dump(net, f, indent=1)
        f.write("\n")

    # Read back and check.
    back, bmeta = dsref.read_safetensors(path)
    assert list(back) == [n for n, _ in tensors]
    for n, t in tensors:
        assert back[n].dtype == t.dtype and torch.equal(back[n], t), n
    assert bmeta == meta
    return path, loss.item(), hint


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--out", default=os.path.join(root, "tests", "fixtures"))
    ap.add_argument("--check", action="store_true",
                    help="regenerate into a temporary folder and compare with --out")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)
    out_dir = args.out
    if args.check:
        out_dir = tempfile.mkdtemp(prefix="ds-fixtures-")
    os.makedirs(out_dir, exist_ok=True)

    jobs = [
        ("gpt_tiny", GPT_TINY, 3, 1234, 0.02, 0.1),
        ("mlp", MLP, 6, 1235, 0.3, 0.1),
        ("mlp_mse", MLP_MSE, 5, 1236, 0.3, 0.1),
    ]
    bad = 0
    for name, net, batch, seed, std, noise in jobs:
        path, loss, hint = make(name, net, batch, seed, out_dir, std, noise)
        print("%-26s %8d bytes  loss %.6f  f32-vs-f64 %s"
              % (os.path.relpath(path), os.path.getsize(path), loss, json.dumps(hint)))
        if args.check:
            for ext in (".safetensors", ".json"):
                a = os.path.join(out_dir, name + ext)
                b = os.path.join(args.out, name + ext)
                same = os.path.exists(b) and filecmp.cmp(a, b, shallow=False)
                print("  %s: %s" % (os.path.relpath(b), "same" if same else "DIFFERS"))
                bad += not same
    if args.check:
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
