#!/usr/bin/env python3
"""PyTorch-eager reference for `convsweep-bench`.

Times the same training step as convsweep's trainer (forward in train mode, cross-entropy with
label smoothing 0.1, backward, SGD with Nesterov momentum 0.9 and weight decay 1e-2) for the
same models (ResNet-20-16, OpenLTH style, every spatial conv k x k, optional LC-blocks, frozen
spatial filters), on a fixed random batch, with the same thread count. Prints one JSON object
per case: {"name": ..., "images_per_sec": median over rounds, "rounds": [...]}.

    python3 bench/pytorch_reference.py --threads 2 --batch 128 --warmup 2 --steps 5 --rounds 3

With --serve it reads JSON commands on stdin instead, so that `convsweep-bench` can alternate
its own rounds with the reference's (machine load then affects both alike):
    {"prepare": NAME, "warmup": W}  -> {"ready": NAME}
    {"round": STEPS, "case": NAME}  -> {"images_per_sec": X}
Prepared cases stay ready, so rounds of different cases can alternate; without "case" a round
times the case prepared last.
"""
import sys
import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def spatial(c_in, c_out, k, stride, expansion):
    if expansion is None or k == 1:
        return nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False)
    mid = c_out * expansion
    return nn.Sequential(
        nn.Conv2d(c_in, mid, k, stride, k // 2, bias=False),
        nn.Conv2d(mid, c_out, 1, 1, 0, bias=False),
    )


class Block(nn.Module):
    def __init__(self, c_in, c_out, stride, k, expansion):
        super().__init__()
        self.conv1 = spatial(c_in, c_out, k, stride, expansion)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = spatial(c_out, c_out, k, 1, expansion)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


class ResNet(nn.Module):
    def __init__(self, depth=20, width=16, k=3, expansion=None, classes=10):
        super().__init__()
        n = (depth - 2) // 6
        self.register_buffer("mean", torch.tensor([0.49, 0.48, 0.45]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.25, 0.24, 0.26]).view(1, 3, 1, 1))
        self.conv1 = spatial(3, width, k, 1, expansion)
        self.bn1 = nn.BatchNorm2d(width)
        blocks, c_in = [], width
        for stage in range(3):
            c_out = width << stage
            for i in range(n):
                blocks.append(Block(c_in, c_out, 2 if stage > 0 and i == 0 else 1, k, expansion))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c_in, classes)

    def forward(self, x):
        x = (x - self.mean) / self.std
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.blocks(y)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


CASES = [
    ("resnet-20-16 k3 learned", 3, False, None),
    ("resnet-20-16 k3 frozen", 3, True, None),
    ("resnet-20-16 k9 learned", 9, False, None),
    ("resnet-20-16 k9 frozen", 9, True, None),
    ("resnet-lc-20-16x8 k3 learned", 3, False, 8),
    ("resnet-lc-20-16x8 k3 frozen", 3, True, 8),
]


def prepare(name, k, frozen, expansion, batch, device):
    torch.manual_seed(0)
    model = ResNet(k=k, expansion=expansion).to(device).train()
    if frozen:
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and m.kernel_size[0] * m.kernel_size[1] > 1:
                m.weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-2)
    x = torch.rand(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        opt.step()

    return step


def timed(step, steps, batch, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def run(name, k, frozen, expansion, args, device):
    step = prepare(name, k, frozen, expansion, args.batch, device)
    for _ in range(args.warmup):
        step()
    rounds = [timed(step, args.steps, args.batch, device) for _ in range(max(1, args.rounds))]
    median = sorted(rounds)[len(rounds) // 2]
    return {"name": name, "images_per_sec": median, "rounds": rounds}


def serve(args, device):
    cases = {c[0]: c for c in CASES}
    steps, last = {}, None
    for line in sys.stdin:
        cmd = json.loads(line)
        if "prepare" in cmd:
            name, k, frozen, expansion = cases[cmd["prepare"]]
            steps[name] = last = prepare(name, k, frozen, expansion, args.batch, device)
            for _ in range(cmd.get("warmup", 0)):
                last()
            print(json.dumps({"ready": name}), flush=True)
        elif "round" in cmd:
            step = steps[cmd["case"]] if "case" in cmd else last
            print(json.dumps({"images_per_sec": timed(step, cmd["round"], args.batch, device)}), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--only", action="append", help="run only these case names")
    p.add_argument("--serve", action="store_true", help="take commands on stdin (see above)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.serve:
        serve(args, device)
        return
    for name, k, frozen, expansion in CASES:
        if args.only and name not in args.only:
            continue
        print(json.dumps(run(name, k, frozen, expansion, args, device)), flush=True)


if __name__ == "__main__":
    main()
