#!/usr/bin/env python3
"""Where convsweep trains convs through the FFT on the CPU (worker/src/model/fftconv.rs).

For each layer shape of ResNet-20-16 (and larger kernels) it prints, for a forward and backward
pass at batch 128: the error of float32 outputs and gradients against a float64 reference, for
oneDNN's direct conv and for the FFT algorithm that convsweep uses (the same operations, in
Python), and the time of each. The thresholds in fftconv.rs (k >= 9, stride 1, no groups, at
least 8 input channels) come from this table.

    PYTHONPATH=.deps/py python3 bench/fft_conv_probe.py THREADS
"""
import sys
import time

import torch
import torch.nn.functional as F


def kernel_spectrum(w, nh, nw, pad):
    o, c, kh, kw = w.shape
    s = torch.fft.rfft2(F.pad(w, (0, nw - kw, 0, nh - kh)).roll((-pad, -pad), (2, 3)))
    s = s.permute(2, 3, 1, 0).reshape(nh * (nw // 2 + 1), c, o)
    re, im = s.real, -s.imag
    block = torch.stack([torch.stack([re, im], -1), torch.stack([-im, re], -1)], 2)
    return block.reshape(nh * (nw // 2 + 1), 2 * c, 2 * o)


def fft_conv(x, w, pad):
    b, c, h, wd = x.shape
    o, _, k, _ = w.shape
    nh, nw = h + 2 * pad, wd + 2 * pad
    spectrum = torch.fft.rfft2(x, s=(nh, nw)).permute(2, 3, 0, 1).contiguous()
    y = torch.bmm(torch.view_as_real(spectrum).reshape(nh * (nw // 2 + 1), b, 2 * c), kernel_spectrum(w, nh, nw, pad))
    y = torch.view_as_complex(y.reshape(nh, nw // 2 + 1, b, o, 2)).permute(2, 3, 0, 1)
    return torch.fft.irfft2(y, s=(nh, nw))[:, :, : nh - k + 1, : nw - k + 1].contiguous()


def direct(x, w, pad):
    return F.conv2d(x, w, padding=pad)


def pass_(f, x, w, g):
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_()
    y = f(x, w, w.shape[-1] // 2)
    y.backward(g.to(y.dtype))
    return [t.double() for t in (y, x.grad, w.grad)]


def timed(f, x, w, g, frozen, n=3):
    times = []
    for _ in range(n):
        xx = x.detach().requires_grad_()
        ww = w.detach().requires_grad_(not frozen)
        start = time.perf_counter()
        f(xx, ww, w.shape[-1] // 2).backward(g)
        times.append(time.perf_counter() - start)
    return sorted(times)[n // 2] * 1000


def main():
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    torch.manual_seed(0)
    print("c_in c_out side k | rel. error vs float64 (out, grad in, grad w): direct ; fft | ms learned direct/fft | ms frozen direct/fft")
    for c_in, c_out, side, k in [(3, 16, 32, 9), (8, 8, 32, 9), (16, 16, 32, 7), (16, 16, 32, 9), (32, 32, 16, 9),
                                 (64, 64, 8, 9), (16, 16, 32, 11), (32, 32, 16, 15), (64, 64, 8, 15)]:
        x = torch.randn(128, c_in, side, side, dtype=torch.float64)
        w = torch.randn(c_out, c_in, k, k, dtype=torch.float64) / (c_in * k * k) ** 0.5
        g = torch.randn(128, c_out, side, side, dtype=torch.float64)
        ref = pass_(direct, x, w, g)
        errors = []
        for f in (direct, fft_conv):
            got = pass_(f, x.float(), w.float(), g)
            errors.append(" ".join(f"{((a - r).norm() / r.norm()).item():.0e}" for a, r in zip(got, ref)))
        x32, w32, g32 = x.float(), w.float(), g.float()
        learned = [timed(f, x32, w32, g32, False) for f in (direct, fft_conv)]
        frozen = [timed(f, x32, w32, g32, True) for f in (direct, fft_conv)]
        print(f"{c_in:4} {c_out:5} {side:4} {k:2} | {errors[0]} ; {errors[1]} | "
              f"{learned[0]:5.0f} / {learned[1]:4.0f} | {frozen[0]:5.0f} / {frozen[1]:4.0f}")


if __name__ == "__main__":
    main()
