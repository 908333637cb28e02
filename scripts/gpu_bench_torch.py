"""PyTorch reference for scripts/gpu-check.sh: trains a ds network (dsref.build_model) in eager
PyTorch on the GPU with the same step as ds-train -- forward, cross-entropy, backward,
clip_grad_norm_ to the config's gradient_clipping, the optimizer step (torch's AdamW with the
config's hyperparameters, its default implementation), zero_grad -- with TF32 matmuls allowed
(torch.backends.cuda.matmul.allow_tf32, as ds's DS_CUDA_TF32=1 default). No torch.compile.
With --dtype bf16 the forward pass and the loss run under torch.autocast(bfloat16): PyTorch's
usual mixed precision (fp32 parameters, gradients and optimizer state; bf16 matmuls and
attention), the PyTorch counterpart of a ds-train run with "bf16": {"enabled": true}.

  python3 gpu_bench_torch.py --net NET.json --config DS.json --data FILE [--steps 20]
      [--warmup 5] [--attention manual|sdpa] [--tf32 1|0] [--dtype fp32|bf16] [--device cuda]
      [--out FILE]

Data: the bytes of FILE are the tokens; sample j is bytes [j*T, j*T+T] (inputs the first T,
targets shifted by one), step s takes samples s*B .. s*B+B-1 (wrapping). Prints one JSON
object (also to --out): per-step ms and loss, the median tokens/s after the warm-up, the peak
GPU memory. With --device cpu it runs anywhere (a check of the script, not a benchmark)."""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--net", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--attention", default="sdpa", choices=["manual", "sdpa"])
    ap.add_argument("--tf32", type=int, default=1)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--micro-batch", type=int, default=0, help="override the config's")
    ap.add_argument("--out")
    a = ap.parse_args()

    import torch
    import dsref

    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("gpu_bench_torch: torch sees no CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = bool(a.tf32)
    torch.backends.cudnn.allow_tf32 = bool(a.tf32)
    net = dsref.load_net(a.net)
    with open(a.config) as f:
        cfg = json.load(f)
    B = a.micro_batch or int(cfg.get("train_micro_batch_size_per_gpu", 8))
    seed = int(cfg.get("seed", 1234))
    T = int(net["input"]["seq_len"])
    torch.manual_seed(seed)
    model = dsref.build_model(net, attention_impl=a.attention)
    dsref.init_params(model, seed=seed)
    model.to(dev)
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
        w = data[starts[:, None] + idx[None, :]].to(dev, non_blocking=True)
        return w[:, :T], w[:, 1:]

    def sync():
        if cuda:
            torch.cuda.synchronize()

    ms, losses = [], []
    sync()
    for step in range(a.steps):
        t0 = time.perf_counter()
        x, y = batch(step)
        if a.dtype == "bf16":
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
                loss = model.loss(model(x), y)
        else:
            loss = model.loss(model(x), y)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        lv = loss.item()  # synchronizes, as ds-train's loss does
        sync()
        ms.append((time.perf_counter() - t0) * 1000.0)
        losses.append(lv)
        print("step %d: loss %.4f, %.1f ms" % (step + 1, lv, ms[-1]), file=sys.stderr)
    meas = ms[a.warmup:] or ms
    med = statistics.median(meas)
    res = {
        "kind": "torch", "torch_version": torch.__version__, "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if cuda else "cpu",
        "attention": a.attention, "tf32": a.tf32, "dtype": a.dtype, "batch": B, "seq_len": T,
        "tokens_per_step": B * T, "steps": a.steps, "warmup": a.warmup, "ms": ms, "losses": losses,
        "median_ms": med, "tokens_per_s": B * T / (med / 1000.0),
        "peak_mem_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if cuda else None,
    }
    s = json.dumps(res)
    if a.out:
        with open(a.out, "w") as f:
            f.write(s + "\n")
    print(s)


if __name__ == "__main__":
    main()
