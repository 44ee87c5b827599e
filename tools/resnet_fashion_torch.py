#!/usr/bin/env python3
"""The PyTorch peer of `gpurt train --model resnet20 --data fashion-mnist`.

The same CIFAR ResNet (He et al. 2016: 3x3 stem, three stages of basic
blocks at 16/32/64 channels, 1x1 projection + batch norm where the shape
changes, global average pooling, one linear layer), with torchvision's
module names, trained the way the gpurt command line below trains it:
SGD with momentum 0.9 and L2 weight decay, a cosine learning rate per step,
random crops from a zero-padded image and horizontal flips, the last 10%
of the training split held out for validation, inputs normalised by the
training set's mean and standard deviation.

Run with the peers venv (../shared/peers/setup.sh):

    /tmp/peers-venv/bin/python tools/resnet_fashion_torch.py --epochs 12
    /tmp/peers-venv/bin/python tools/resnet_fashion_torch.py --epochs 1 --max-batches 60
        (a timing sample: images per second over 60 batches)
    /tmp/peers-venv/bin/python tools/resnet_fashion_torch.py --load RUN
        (evaluate a gpurt run's weights in PyTorch, with the run's input
        normalisation: every tensor must load by its name and shape, and
        the accuracy must be the one `gpurt eval --run RUN` prints)
    /tmp/peers-venv/bin/python tools/resnet_fashion_torch.py --epochs 1 --save W.safetensors
        (write the trained state_dict as safetensors, num_batches_tracked
        included, to load into gpurt)

Prints one line per epoch and a JSON summary as the last line.
"""
import argparse
import gzip
import json
import math
import os
import struct
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def read_idx(path):
    with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as f:
        data = f.read()
    magic, count = struct.unpack(">II", data[:8])
    if magic == 2051:
        rows, cols = struct.unpack(">II", data[8:16])
        return np.frombuffer(data, np.uint8, offset=16).reshape(count, 1, rows, cols)
    return np.frombuffer(data, np.uint8, offset=8).astype(np.int64)


def find(folder, stem):
    for suffix in (".gz", ""):
        p = os.path.join(folder, stem + suffix)
        if os.path.exists(p):
            return p
    raise SystemExit(f"{folder}: no {stem}[.gz]")


def load_split(folder, prefix):
    x = read_idx(find(folder, f"{prefix}-images-idx3-ubyte"))
    y = read_idx(find(folder, f"{prefix}-labels-idx1-ubyte"))
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y)


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(out + skip)


class ResNet(nn.Module):
    def __init__(self, depth, classes=10, channels=1):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin = 16
        for stage, width in enumerate((16, 32, 64), start=1):
            blocks = []
            for b in range(n):
                blocks.append(Block(cin, width, 2 if stage > 1 and b == 0 else 1))
                cin = width
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean(dim=(2, 3)))


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    out = {}
    kinds = {"F32": np.float32, "F16": np.float16, "BF16": None}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        raw = data[8 + n + a : 8 + n + b]
        if meta["dtype"] == "I64":
            out[name] = torch.from_numpy(np.frombuffer(raw, np.int64).reshape(meta["shape"]).copy())
            continue
        if meta["dtype"] == "BF16":
            u = np.frombuffer(raw, np.uint16).astype(np.uint32) << 16
            arr = u.view(np.float32)
        else:
            arr = np.frombuffer(raw, kinds[meta["dtype"]]).astype(np.float32)
        out[name] = torch.from_numpy(arr.reshape(meta["shape"]).copy())
    return out


def write_safetensors(path, state):
    header, blobs, off = {}, [], 0
    for name, t in state.items():
        t = t.detach().contiguous()
        kind = {torch.float32: "F32", torch.int64: "I64"}[t.dtype]
        raw = t.numpy().tobytes()
        header[name] = {"dtype": kind, "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def augment(x, pad, flip, gen, fill):
    """Random crops from the image padded with `fill` (a black pixel after
    normalisation, as gpurt and torchvision pad before normalising), then
    horizontal flips."""
    if pad:
        n, _, h, w = x.shape
        padded = F.pad(x, (pad, pad, pad, pad), value=fill)
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]
        x = padded[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]
    if flip:
        mask = torch.rand(x.shape[0], generator=gen) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


def evaluate(model, x, y, batch=500):
    model.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out = model(x[i : i + batch])
            loss += F.cross_entropy(out, y[i : i + batch], reduction="sum").item()
            correct += (out.argmax(1) == y[i : i + batch]).sum().item()
    return loss / len(x), 100.0 * correct / len(x)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--crop-pad", type=int, default=2)
    ap.add_argument("--no-flip", action="store_true")
    ap.add_argument("--val-split", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--max-batches", type=int, default=0, help="stop each epoch after this many batches (timing)")
    ap.add_argument("--load", help="evaluate a gpurt run folder's weights instead of training")
    ap.add_argument("--save", help="write the trained state_dict here (safetensors)")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    x, y = load_split(a.data, "train")
    xt, yt = load_split(a.data, "t10k")
    n_val = int(round(len(x) * a.val_split))
    xtr, ytr, xv, yv = x[: len(x) - n_val], y[: len(x) - n_val], x[len(x) - n_val :], y[len(x) - n_val :]
    mean, std = xtr.mean() / 255.0, xtr.std() / 255.0
    norm = lambda t: (t / 255.0 - mean) / std
    xtr, xv, xt = norm(xtr), norm(xv), norm(xt)
    model = ResNet(a.depth).to(memory_format=torch.contiguous_format)

    if a.load:
        ck = json.load(open(os.path.join(a.load, "checkpoint.json")))
        xt, _ = load_split(a.data, "t10k")
        xt = (xt / 255.0 - ck["mean"][0]) / ck["std"][0]
        files = os.path.join(a.load, ck["files"])
        best = os.path.join(files, "best.safetensors")
        state = read_safetensors(best if os.path.exists(best) else os.path.join(a.load, "model.safetensors"))
        missing = model.load_state_dict(state, strict=False)
        extra = [k for k in missing.unexpected_keys if not k.endswith("num_batches_tracked")]
        if missing.missing_keys and any(not k.endswith("num_batches_tracked") for k in missing.missing_keys) or extra:
            raise SystemExit(f"{a.load}: missing {missing.missing_keys}, unexpected {extra}")
        loss, acc = evaluate(model, xt, yt)
        print(json.dumps({"weights": a.load, "test_loss": round(loss, 4), "test_acc": round(acc, 2)}))
        return

    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, weight_decay=a.weight_decay)
    steps_per_epoch = math.ceil(len(xtr) / a.batch)
    if a.max_batches:
        steps_per_epoch = min(steps_per_epoch, a.max_batches)
    total = steps_per_epoch * a.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / total, 1.0))))
    print(f"resnet{a.depth} ({params} parameters) torch {torch.__version__}, {a.threads} threads, "
          f"{len(xtr)} train / {len(xv)} val / {len(xt)} test")
    epochs = []
    for epoch in range(1, a.epochs + 1):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        t0, seen, run_loss, run_ok = time.perf_counter(), 0, 0.0, 0
        for step in range(steps_per_epoch):
            idx = perm[step * a.batch : (step + 1) * a.batch]
            xb = augment(xtr[idx], a.crop_pad, not a.no_flip, gen, float(norm(torch.tensor(0.0))))
            yb = ytr[idx]
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(idx)
            run_loss += loss.item() * len(idx)
            run_ok += (out.argmax(1) == yb).sum().item()
        train_s = time.perf_counter() - t0
        vloss, vacc = evaluate(model, xv, yv) if len(xv) else (float("nan"), float("nan"))
        epochs.append({"epoch": epoch, "train_s": round(train_s, 2), "img_per_s": round(seen / train_s, 1),
                       "loss": round(run_loss / seen, 4), "val_acc": round(vacc, 2)})
        print(f"epoch {epoch}/{a.epochs}: loss {run_loss / seen:.4f} acc {100 * run_ok / seen:.2f}% | "
              f"val loss {vloss:.4f} acc {vacc:.2f}% | {train_s:.1f} s, {seen / train_s:.0f} img/s", flush=True)
    tloss, tacc = evaluate(model, xt, yt)
    print(f"test: loss {tloss:.4f} accuracy {tacc:.2f}%")
    if a.save:
        write_safetensors(a.save, model.state_dict())
    print(json.dumps({"model": f"resnet{a.depth}", "threads": a.threads, "epochs": epochs,
                      "test_loss": round(tloss, 4), "test_acc": round(tacc, 2)}))


if __name__ == "__main__":
    main()
