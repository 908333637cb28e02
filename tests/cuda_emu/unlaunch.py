"""Rewrites CUDA kernel launches, K<<<grid, block, smem, stream>>>(args);, into calls of the
emulator, emu_launch(grid, block, smem, stream, [_ka = std::make_tuple(args)]() {
std::apply(K, _ka); });, arguments evaluated at the launch as in CUDA, so that g++ compiles
kernels/*.cu against tests/cuda_emu/include. Each one-line __shared__ declaration is followed
by emu_poison_shared() of every variable it declares: a block's shared memory starts as NaN
bytes, as a GPU's holds whatever was there (the emulation's statics would otherwise hold zeros
or the previous block's values). Usage: python3 unlaunch.py FILE.cu > FILE.cc"""
import re
import sys

src = open(sys.argv[1]).read()


def declared(decl):
    """the names a declaration "T a[N], b;" (after __shared__ and __align__(...)) declares"""
    decl = re.sub(r"__align__\s*\([^)]*\)", "", decl).strip().rstrip(";")
    parts, depth, cur = [], 0, ""
    for ch in decl:
        depth += ch in "[("
        depth -= ch in "])"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    names = []
    for part in parts:
        part = part.split("[")[0].strip()
        names.append(re.findall(r"[A-Za-z_][A-Za-z_0-9]*", part)[-1])
    return names


def poison(m):
    line = m.group(0)
    code = line.split("/*")[0].split("//")[0]
    body = code.split("__shared__", 1)[1]
    calls = " ".join("emu_poison_shared(&%s, sizeof %s);" % (n, n) for n in declared(body))
    return code.rstrip() + " " + calls + (" /*" + line.split("/*", 1)[1] if "/*" in line else "")


src = re.sub(r"^[ \t]*__shared__[^\n;]*;[^\n]*$", poison, src, flags=re.M)
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
