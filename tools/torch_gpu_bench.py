#!/usr/bin/env python3
"""PyTorch side of tools/gpu-check.sh: the shapes of gpurt's cuda bench
(tests/cuda/bench.rs `benches`), timed on the same GPU with cuBLAS and
cuDNN in fp32 (TF32 off on both, so the comparison is like for like).

Each case runs `iters` calls back to back between two CUDA events, five
times; the median of the per-call means is printed as

    TORCH <key> <ms>

with tab separators (gpu-check.sh joins these with gpurt's BENCH lines).
Data stays on the GPU, as in gpurt's timings.
"""

import argparse
import statistics
import sys

import torch
import torch.nn.functional as F


def timed(fn, iters, repeats=5, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    means = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        means.append(start.elapsed_time(end) / iters)
    return statistics.median(means)


def adam(params):
    try:
        return torch.optim.Adam(params, lr=1e-3, fused=True)
    except (TypeError, RuntimeError):
        return torch.optim.Adam(params, lr=1e-3, foreach=True)


def cases(dev):
    g = torch.Generator(device=dev).manual_seed(0)

    def rand(*shape):
        return torch.rand(*shape, device=dev, generator=g) * 2 - 1

    a, b = rand(4096, 4096), rand(4096, 4096)
    yield "sgemm_4096", lambda: torch.mm(a, b)

    x, w = rand(64, 32, 32, 32), rand(64, 32, 3, 3)
    yield "conv_fwd", lambda: F.conv2d(x, w, padding=1)

    xg = x.clone().requires_grad_(True)
    wg = w.clone().requires_grad_(True)
    y = F.conv2d(xg, wg, padding=1)
    dy = rand(*y.shape)
    yield "conv_bwd", lambda: torch.autograd.grad(y, (xg, wg), dy, retain_graph=True)

    s = rand(4096, 4096)
    yield "softmax_4096", lambda: torch.softmax(s, dim=-1)

    p = torch.nn.Parameter(rand(10_000_000))
    p.grad = rand(10_000_000)
    opt = adam([p])
    yield "adam_10m", opt.step

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(64, 64, 3), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(64 * 4 * 4, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10),
    ).to(dev)
    mopt = adam(model.parameters())
    bx = rand(64, 3, 32, 32)
    by = torch.randint(0, 10, (64,), device=dev, generator=g)

    def step():
        mopt.zero_grad(set_to_none=True)
        F.cross_entropy(model(bx), by).backward()
        mopt.step()

    yield "cnn_train_b64", step


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=20)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("torch_gpu_bench: PyTorch sees no CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")
    print(f"# torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN "
          f"{torch.backends.cudnn.version()}, {torch.cuda.get_device_name(dev)}")
    for key, fn in cases(dev):
        ms = timed(fn, a.iters)
        print(f"TORCH\t{key}\t{ms:.4f}", flush=True)


if __name__ == "__main__":
    main()
