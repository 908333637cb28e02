"""dsref: a PyTorch reference of the ds network format.

The ds network file (JSON) describes a model layer by layer; ds-train and libds
implement it in C.  This module builds the *same* model as a torch.nn.Module so
that its outputs, gradients and optimizer trajectories can be used as ground
truth (scripts/make-fixtures.py) and as the PyTorch side of the throughput
benchmark (scripts/bench_torch.py).

Works with Debian's python3-torch 1.13 and with current torch 2.x.  Needs only
torch and the standard library (no numpy, no safetensors package).

Semantics (the same as the C engine's):

* Parameter names are the layer path plus ``.weight`` / ``.bias``.  A
  ``repeat`` named ``h`` with count N names its children ``h.<i>.<child>``; a
  ``residual`` has no name and adds no path component.  A repeat with
  ``"checkpoint": true`` runs each iteration through
  ``torch.utils.checkpoint.checkpoint`` when training (same values,
  recomputed in backward).  ``model.state_dict()``
  and ``model.named_parameters()`` use exactly these names, in the order of
  first appearance when walking the layers (weight before bias); see
  ``param_specs(net)`` for the same list computed from the JSON alone.
* Shapes are PyTorch's: Linear weight [out, in] (+ bias [out] unless
  ``"bias": false``); embedding [vocab, dim]; position_embedding
  [seq_len, dim]; layernorm weight/bias [dim] (eps 1e-5).
* attention owns ``qkv`` (Linear dim -> 3*dim, rows q then k then v; head h
  uses rows h*hd..(h+1)*hd of each, hd = dim/heads) and ``proj`` (Linear
  dim -> dim); scores are scaled by 1/sqrt(hd), causal mask if ``"causal"``,
  softmax, concatenation of the heads, then proj.  No dropout inside.
* A linear with ``"tied_to": "wte"`` owns no weight: it uses the weight of the
  layer at that path ([vocab, dim]) as its weight (logits = x @ W.T).
* ``residual`` is x + f(x); ``gelu`` is exact (erf) unless
  ``"approximate": "tanh"``; ``dropout`` has ``p``; ``relu``.
* Losses: ``cross_entropy`` (mean over all positions for token inputs, over
  samples for feature inputs; the target is a class index) and ``mse`` (mean
  over all elements, like torch.nn.MSELoss).

Optimizers follow DeepSpeed's config semantics, which equal torch's:
AdamW -> torch.optim.AdamW; Adam -> AdamW unless ``"adam_w_mode": false``
(then torch.optim.Adam, i.e. L2 weight decay); SGD -> torch.optim.SGD.
Gradient clipping: global L2 norm over all gradients,
coef = max_norm / (norm + 1e-6), applied when coef < 1 (``clip_grad_norm``).
"""

import json
import math
import struct
import sys
from array import array

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

__all__ = [
    "load_net", "build_model", "DsNet", "param_specs", "loss_fn",
    "init_params", "clip_grad_norm", "make_optimizer", "optimizer_from_ds_config",
    "flops_per_token", "matmul_params", "write_safetensors", "read_safetensors",
]

LN_EPS = 1e-5


def load_net(path):
    """Reads a network JSON file and returns it as a dict."""
    with open(path) as f:
        return json.load(f)


# --------------------------------------------------------------------------
# Layers that need a module of their own.

class PositionEmbedding(nn.Module):
    """Adds weight[t] ([seq_len, dim]) at position t."""

    def __init__(self, seq_len, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(seq_len, dim))

    def forward(self, x):
        T = x.shape[-2]
        return x + self.weight[:T]


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv Linear and an output proj.

    impl: "manual" (explicit softmax(QK^T/sqrt(hd)) V, any dtype, any torch),
    "sdpa" (torch.nn.functional.scaled_dot_product_attention, torch >= 2.0),
    or "auto" (sdpa when available, else manual).
    """

    def __init__(self, dim, heads, causal, impl="auto"):
        super().__init__()
        if dim % heads:
            raise ValueError("attention: dim %d not divisible by heads %d" % (dim, heads))
        self.dim, self.heads, self.causal = dim, heads, bool(causal)
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)
        if impl == "auto":
            impl = "sdpa" if hasattr(F, "scaled_dot_product_attention") else "manual"
        if impl not in ("manual", "sdpa"):
            raise ValueError("attention impl must be auto, manual or sdpa")
        self.impl = impl

    def forward(self, x):
        if x.dim() != 3:
            raise ValueError("attention needs a [B, T, dim] input")
        B, T, D = x.shape
        H = self.heads
        hd = D // H
        q, k, v = self.qkv(x).split(D, dim=-1)
        q = q.reshape(B, T, H, hd).transpose(1, 2)  # [B, H, T, hd]
        k = k.reshape(B, T, H, hd).transpose(1, 2)
        v = v.reshape(B, T, H, hd).transpose(1, 2)
        if self.impl == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
            if self.causal:
                mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
                att = att.masked_fill(mask, float("-inf"))
            att = torch.softmax(att, dim=-1)
            y = att @ v
        y = y.transpose(1, 2).reshape(B, T, D)
        return self.proj(y)


class TiedLinear(nn.Module):
    """A linear layer whose weight is another layer's (e.g. the token
    embedding).  It owns only its optional bias."""

    def __init__(self, tied_to, out, bias):
        super().__init__()
        self.tied_to = tied_to
        self.out = out
        if bias:
            self.bias = nn.Parameter(torch.empty(out))
        else:
            self.register_parameter("bias", None)

    def forward(self, x, root):
        w = root.get_submodule(self.tied_to).weight
        return F.linear(x, w, self.bias)


class Block(nn.Module):
    """A list of layers run in order.  Parametric layers are registered as
    children under their own name, so their parameters get the right path;
    residual sub-lists register their layers in the same Block (a residual adds
    no path component) and run as x + f(x)."""

    def __init__(self):
        super().__init__()
        self.plan = []  # [(kind, payload)]


# --------------------------------------------------------------------------
# Building.

class _Shape:
    def __init__(self, net):
        inp = net["input"]
        self.kind = inp["type"]
        if self.kind == "tokens":
            self.vocab = int(inp["vocab_size"])
            self.seq_len = int(inp["seq_len"])
            self.width = None  # token ids until an embedding
        elif self.kind == "features":
            self.seq_len = None
            self.width = int(inp["dim"])
        else:
            raise ValueError("unknown input type %r" % self.kind)


def _need_width(shape, layer):
    if shape.width is None:
        raise ValueError("layer %r needs float activations (put an embedding first)" % layer.get("type"))
    return shape.width


def _name(layer, path):
    if "name" not in layer:
        raise ValueError("layer of type %r needs a name" % layer["type"])
    n = str(layer["name"])
    if not n or "." in n:
        raise ValueError("bad layer name %r" % n)
    return n


def _build(layers, block, shape, path, names, opts):
    """Registers the layers' modules in `block` and returns the plan for them."""
    plan = []
    for layer in layers:
        t = layer["type"]
        if t == "embedding":
            if shape.kind != "tokens" or shape.width is not None:
                raise ValueError("embedding must be the first layer of a tokens net")
            n = _name(layer, path)
            dim = int(layer["dim"])
            mod = nn.Embedding(shape.vocab, dim)
            plan.append(("mod", _add(block, n, mod, names, path)))
            shape.width = dim
        elif t == "position_embedding":
            if shape.kind != "tokens":
                raise ValueError("position_embedding needs a tokens input")
            n = _name(layer, path)
            mod = PositionEmbedding(shape.seq_len, _need_width(shape, layer))
            plan.append(("mod", _add(block, n, mod, names, path)))
        elif t == "linear":
            n = _name(layer, path)
            inw = _need_width(shape, layer)
            out = int(layer["out"])
            bias = bool(layer.get("bias", True))
            if layer.get("tied_to"):
                mod = TiedLinear(str(layer["tied_to"]), out, bias)
                plan.append(("tied", _add(block, n, mod, names, path)))
                opts["tied"].append((path + n, mod.tied_to, (out, inw)))
            else:
                mod = nn.Linear(inw, out, bias=bias)
                plan.append(("mod", _add(block, n, mod, names, path)))
            shape.width = out
        elif t == "layernorm":
            n = _name(layer, path)
            mod = nn.LayerNorm(_need_width(shape, layer), eps=LN_EPS)
            plan.append(("mod", _add(block, n, mod, names, path)))
        elif t == "attention":
            if shape.kind != "tokens":
                raise ValueError("attention needs a tokens input")
            n = _name(layer, path)
            mod = Attention(_need_width(shape, layer), int(layer["heads"]),
                            layer.get("causal", False), opts["attention_impl"])
            plan.append(("mod", _add(block, n, mod, names, path)))
        elif t == "relu":
            _need_width(shape, layer)
            plan.append(("fn", F.relu))
        elif t == "gelu":
            _need_width(shape, layer)
            approx = layer.get("approximate", "none") or "none"
            if approx not in ("none", "tanh"):
                raise ValueError("gelu approximate must be 'tanh' or absent")
            plan.append(("gelu", approx))
        elif t == "dropout":
            _need_width(shape, layer)
            p = float(layer.get("p", 0.0))
            mod = nn.Dropout(p)
            # Dropout has no parameters; keep it out of the module tree so the
            # names of the others stay as they are.
            plan.append(("dropout", mod))
        elif t == "residual":
            w = _need_width(shape, layer)
            sub = _build(layer["layers"], block, shape, path, names, opts)
            if shape.width != w:
                raise ValueError("residual changes the width %d -> %s" % (w, shape.width))
            plan.append(("residual", sub))
        elif t == "repeat":
            n = _name(layer, path)
            count = int(layer["count"])
            blocks = nn.ModuleList()
            _add(block, n, blocks, names, path)
            for i in range(count):
                b = Block()
                sub_path = "%s%s.%d." % (path, n, i)
                b.plan = _build(layer["layers"], b, shape, sub_path, set(), opts)
                blocks.append(b)
            plan.append(("repeat", (n, bool(layer.get("checkpoint", False)))))
        else:
            raise ValueError("unknown layer type %r" % t)
    return plan


def _add(block, name, mod, names, path):
    if name in names:
        raise ValueError("duplicate layer name %r under %r" % (name, path))
    names.add(name)
    block.add_module(name, mod)
    return name


def _run(plan, block, x, root):
    for kind, p in plan:
        if kind == "mod":
            x = getattr(block, p)(x)
        elif kind == "tied":
            x = getattr(block, p)(x, root)
        elif kind == "fn":
            x = p(x)
        elif kind == "gelu":
            x = F.gelu(x) if p == "none" else F.gelu(x, approximate=p)
        elif kind == "dropout":
            p.train(root.training)
            x = p(x)
        elif kind == "residual":
            x = x + _run(p, block, x, root)
        elif kind == "repeat":
            name, ckpt = p
            for b in getattr(block, name):
                if ckpt and root.training and torch.is_grad_enabled():
                    # ds-net(5) "checkpoint": each iteration recomputed in backward
                    # (the RNG state is restored, so dropout draws the same masks)
                    x = torch.utils.checkpoint.checkpoint(
                        lambda y, b=b: _run(b.plan, b, y, root), x, use_reentrant=False)
                else:
                    x = _run(b.plan, b, x, root)
    return x


class DsNet(Block):
    """The model of a ds network file.  forward(x) takes token ids [B, T]
    (int64) or features [B, dim] and returns logits / outputs ([B, T, out] or
    [B, out])."""

    def __init__(self, net, attention_impl="auto"):
        super().__init__()
        self.net = net
        self.input_kind = net["input"]["type"]
        shape = _Shape(net)
        opts = {"attention_impl": attention_impl, "tied": []}
        self.plan = _build(net["layers"], self, shape, "", set(), opts)
        self.out_dim = shape.width
        for path, target, wshape in opts["tied"]:
            try:
                tgt = self.get_submodule(target)
            except AttributeError:
                raise ValueError("%s: tied_to %r is no layer" % (path, target))
            if not isinstance(getattr(tgt, "weight", None), nn.Parameter):
                raise ValueError("%s: tied_to %r has no weight" % (path, target))
            if tuple(tgt.weight.shape) != wshape:
                raise ValueError("%s: tied weight %r has shape %s, need %s"
                                 % (path, target, tuple(tgt.weight.shape), wshape))
        self.loss_type = net.get("loss", {}).get("type", "cross_entropy")

    def forward(self, x):
        if self.input_kind == "tokens":
            x = x.long()
        return _run(self.plan, self, x, self)

    def loss(self, out, target):
        return loss_fn(self.loss_type, out, target)


def build_model(net, attention_impl="auto"):
    """Returns a DsNet for `net` (a dict, or a path to a JSON file).
    Parameters are uninitialised-by-design torch defaults: call
    init_params() for the GPT-style init."""
    if isinstance(net, str):
        net = load_net(net)
    return DsNet(net, attention_impl=attention_impl)


def loss_fn(loss_type, out, target):
    """cross_entropy: out [B, T, V] with int targets [B, T] (mean over all
    positions) or out [B, C] with int labels [B]; mse: mean over all elements."""
    if loss_type == "cross_entropy":
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1).long())
    if loss_type == "mse":
        return F.mse_loss(out, target.to(out.dtype))
    raise ValueError("unknown loss %r" % loss_type)


# --------------------------------------------------------------------------
# Parameters from the JSON alone.

def param_specs(net):
    """[(name, shape)] of every parameter, in flat-buffer order, computed from
    the network JSON without torch modules (must equal named_parameters())."""
    shape = _Shape(net)
    out = []

    def walk(layers, path):
        for layer in layers:
            t = layer["type"]
            n = path + str(layer.get("name", ""))
            if t == "embedding":
                shape.width = int(layer["dim"])
                out.append((n + ".weight", (shape.vocab, shape.width)))
            elif t == "position_embedding":
                out.append((n + ".weight", (shape.seq_len, shape.width)))
            elif t == "linear":
                o = int(layer["out"])
                if not layer.get("tied_to"):
                    out.append((n + ".weight", (o, shape.width)))
                if layer.get("bias", True):
                    out.append((n + ".bias", (o,)))
                shape.width = o
            elif t == "layernorm":
                out.append((n + ".weight", (shape.width,)))
                out.append((n + ".bias", (shape.width,)))
            elif t == "attention":
                d = shape.width
                out.extend([(n + ".qkv.weight", (3 * d, d)), (n + ".qkv.bias", (3 * d,)),
                            (n + ".proj.weight", (d, d)), (n + ".proj.bias", (d,))])
            elif t == "residual":
                walk(layer["layers"], path)
            elif t == "repeat":
                for i in range(int(layer["count"])):
                    walk(layer["layers"], "%s.%d." % (n, i))
    walk(net["layers"], "")
    return out


def matmul_params(net):
    """Per-token multiply-accumulates of the weight matmuls in one forward pass
    (= number of weights used in a matmul, counting a tied head's weight once
    more for its use as the output projection; embeddings are lookups and
    count 0), and the attention score/value MACs per token for a full T x T
    attention matrix.  Returns (n_matmul, attn_macs_per_token)."""
    shape = _Shape(net)
    acc = {"n": 0, "attn": 0}

    def walk(layers):
        for layer in layers:
            t = layer["type"]
            if t == "embedding":
                shape.width = int(layer["dim"])
            elif t == "linear":
                o = int(layer["out"])
                acc["n"] += o * shape.width
                shape.width = o
            elif t == "attention":
                d = shape.width
                acc["n"] += 4 * d * d
                # QK^T: T*d MACs per query token, A@V: T*d MACs per token.
                acc["attn"] += 2 * shape.seq_len * d
            elif t == "residual":
                walk(layer["layers"])
            elif t == "repeat":
                for _ in range(int(layer["count"])):
                    walk(layer["layers"])
    walk(net["layers"])
    return acc["n"], acc["attn"]


def flops_per_token(net):
    """Training FLOPs per token (per sample for a features net):
    6 * N_matmul + 6 * attn_macs, where N_matmul counts every weight that
    takes part in a matmul (qkv, attn proj, fc, proj, lm_head incl. a tied
    one; not embeddings/position embeddings/biases/layernorm) and attn_macs
    = sum over attention layers of 2 * T * dim (QK^T and A@V over the full
    T x T matrix, as in the PaLM MFU formula: 6N + 12*L*T*dim).  Forward = 2
    FLOPs per MAC, backward = 2x forward.  Elementwise work (layernorm,
    softmax, gelu, adam) is not counted.  For a causal model, half of the
    attention term is masked out; we count it all, as the PaLM formula does."""
    n, attn = matmul_params(net)
    return 6 * n + 6 * attn


# --------------------------------------------------------------------------
# Init, clipping, optimizers.

def init_params(model, seed=None, std=0.02, noise=0.0, generator=None):
    """GPT-style init: normal(0, std) for linear/embedding/position weights,
    zero biases, ones/zeros for layernorm.  With noise > 0, normal(0, noise)
    is then added to every bias and to layernorm weight/bias (so that their
    gradients are non-trivial).  Deterministic for a given seed: parameters
    are drawn in flat-buffer order from one CPU generator."""
    g = generator
    if g is None:
        g = torch.Generator()
        g.manual_seed(0 if seed is None else seed)
    norms = set()
    for mname, m in model.named_modules():
        if isinstance(m, nn.LayerNorm):
            norms.add(mname)
    with torch.no_grad():
        for name, p in model.named_parameters():
            owner, _, kind = name.rpartition(".")
            if owner in norms:
                p.fill_(1.0 if kind == "weight" else 0.0)
                is_noisy = True
            elif kind == "bias":
                p.zero_()
                is_noisy = True
            else:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * std)
                is_noisy = False
            if noise and is_noisy:
                p.add_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * noise)
    return model


def clip_grad_norm(params, max_norm):
    """Global L2 norm over all gradients; scales them by
    coef = max_norm / (norm + 1e-6) when coef < 1.  Returns the norm (before
    clipping) as a float."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norm = torch.sqrt(sum((g.detach().double() ** 2).sum() for g in grads)).item()
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        for g in grads:
            g.mul_(coef)
    return norm


def make_optimizer(kind, params, **hp):
    """kind: 'adamw' | 'adam' (L2) | 'sgd'; hp as torch's."""
    kind = kind.lower()
    if kind == "adamw":
        return torch.optim.AdamW(params, **hp)
    if kind == "adam":
        return torch.optim.Adam(params, **hp)
    if kind == "sgd":
        return torch.optim.SGD(params, **hp)
    raise ValueError("unknown optimizer %r" % kind)


def optimizer_from_ds_config(config, params, **extra):
    """The torch optimizer equal to a DeepSpeed ds_config's "optimizer"
    section.  Returns (optimizer, gradient_clipping or 0.0)."""
    sec = config.get("optimizer", {"type": "AdamW", "params": {}})
    t = sec.get("type", "AdamW").lower()
    p = dict(sec.get("params", {}))
    hp = {}
    if "lr" in p:
        hp["lr"] = float(p["lr"])
    if t in ("adam", "adamw"):
        w_mode = (t == "adamw") or bool(p.get("adam_w_mode", True))
        for k in ("betas",):
            if k in p:
                hp[k] = tuple(float(v) for v in p[k])
        for k in ("eps", "weight_decay"):
            if k in p:
                hp[k] = float(p[k])
        if t == "adamw" and "weight_decay" not in hp:
            hp["weight_decay"] = 0.01  # torch's default
        kind = "adamw" if w_mode else "adam"
    elif t == "sgd":
        for k in ("momentum", "dampening", "weight_decay"):
            if k in p:
                hp[k] = float(p[k])
        if "nesterov" in p:
            hp["nesterov"] = bool(p["nesterov"])
        kind = "sgd"
    else:
        raise ValueError("unsupported optimizer type %r" % sec.get("type"))
    hp.update(extra)
    return make_optimizer(kind, params, **hp), float(config.get("gradient_clipping", 0.0) or 0.0)


# --------------------------------------------------------------------------
# safetensors, by hand (no safetensors / numpy package needed).

_DT = {
    torch.float32: ("F32", "f", 4),
    torch.float64: ("F64", "d", 8),
    torch.int32: ("I32", "i", 4),
    torch.int64: ("I64", "q", 8),
}
_DT_BY_NAME = {v[0]: (k, v[1], v[2]) for k, v in _DT.items()}


def _tensor_bytes(t):
    code = _DT[t.dtype][1]
    a = array(code, t.detach().cpu().contiguous().reshape(-1).tolist())
    if sys.byteorder != "little":
        a.byteswap()
    return a.tobytes()


def write_safetensors(path, tensors, metadata=None):
    """tensors: list of (name, tensor) (or a dict) in the order to store;
    dtypes F32/F64/I32/I64.  metadata: dict of str -> str."""
    items = list(tensors.items()) if isinstance(tensors, dict) else list(tensors)
    header = {}
    blobs = []
    off = 0
    for name, t in items:
        if name in header:
            raise ValueError("duplicate tensor %r" % name)
        b = _tensor_bytes(t)
        header[name] = {"dtype": _DT[t.dtype][0], "shape": list(t.shape),
                        "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((-len(h)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    """Returns (dict name -> tensor in file order, metadata dict)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    base = 8 + n
    out = {}
    for name, info in header.items():
        dtype, code, size = _DT_BY_NAME[info["dtype"]]
        b, e = info["data_offsets"]
        a = array(code)
        a.frombytes(data[base + b:base + e])
        if sys.byteorder != "little":
            a.byteswap()
        out[name] = torch.tensor(a.tolist(), dtype=dtype).reshape(info["shape"])
    return out, meta
