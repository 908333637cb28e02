"""Rewrites CUDA kernel launches, K<<<grid, block, smem, stream>>>(args);, into calls of the
emulator, emu_launch(grid, block, smem, stream, [_ka = std::make_tuple(args)]() {
std::apply(K, _ka); });, arguments evaluated at the launch as in CUDA, so that g++ compiles
kernels/*.cu against tests/cuda_emu/include. Usage: python3 unlaunch.py FILE.cu > FILE.cc"""
import re
import sys

src = open(sys.argv[1]).read()
out, pos = [], 0
head = re.compile(r"([A-Za-z_][A-Za-z_0-9]*(?:<[^<>;]*>)?)\s*<<<")
while True:
    m = head.search(src, pos)
    if not m:
        out.append(src[pos:])
        break
    out.append(src[pos:m.start()])
    end_cfg = src.index(">>>", m.end())
    cfg = src[m.end():end_cfg]
    i = src.index("(", end_cfg)
    depth, j = 0, i
    while True:
        c = src[j]
        depth += c == "("
        depth -= c == ")"
        j += 1
        if depth == 0:
            break
    args = src[i + 1:j - 1]
    # the arguments are evaluated now, as a launch does (the body may run later: a deferred
    # stream), and the kernel is called with them when the emulated stream runs it
    out.append("emu_launch(%s, [_ka = std::make_tuple(%s)]() { std::apply(%s, _ka); })"
               % (cfg, args, m.group(1)))
    pos = j
sys.stdout.write("".join(out))
