#!/usr/bin/env python3
"""Why convsweep does not train channels-last on the CPU (see docs/BENCHMARKS.md).

Compares float32 gradients of bench/pytorch_reference.py's ResNet-8-W with a float64 reference,
in the default (NCHW) layout and channels-last:

    PYTHONPATH=.deps/py python3 bench/channels_last_probe.py WIDTH K EXPANSION THREADS
    PYTHONPATH=.deps/py python3 bench/channels_last_probe.py 16 9 0 2   # E = 0: no LC-blocks

With WIDTH 4 and THREADS 1, PyTorch 2.11 aborts inside oneDNN's channels-last 1x1
backward-weights kernel ("malloc assertion failure in _int_malloc").
"""
import sys, copy, torch, importlib.util
import os
spec = importlib.util.spec_from_file_location("ref", os.path.join(os.path.dirname(__file__), "pytorch_reference.py")); ref = importlib.util.module_from_spec(spec); spec.loader.exec_module(ref)
import torch.nn.functional as F
w, k, e, th = int(sys.argv[1]), int(sys.argv[2]), (None if sys.argv[3] == "0" else int(sys.argv[3])), int(sys.argv[4])
torch.set_num_threads(th); torch.manual_seed(0)
base = ref.ResNet(depth=8, width=w, k=k, expansion=e).train()
x = torch.rand(32, 3, 32, 32); y = torch.randint(0, 10, (32,))
def grads(m, x):
    F.cross_entropy(m(x), y).backward()
    return [p.grad.double() for p in m.parameters()]
g64 = grads(copy.deepcopy(base).double(), x.double())
g32 = grads(copy.deepcopy(base), x)
gcl = grads(copy.deepcopy(base).to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last))
def err(g):  # relative Frobenius error over all parameters
    num = sum(((a - b) ** 2).sum() for a, b in zip(g, g64)); den = sum((b ** 2).sum() for b in g64)
    return (num / den).sqrt().item()
print(f"w={w} k={k} E={e} th={th}: nchw {err(g32):.1e}  channels_last {err(gcl):.1e}")
