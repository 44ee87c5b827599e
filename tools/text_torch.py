#!/usr/bin/env python3
"""The PyTorch peer of `gpurt train --data text:DIR` (fasttext / transformer).

Trains the same text classifiers gpurt trains, on the same documents, split
and tokenisation, so that test accuracy and CPU seconds per training epoch
can be compared side by side. Everything comes from a gpurt run folder:

    RUN/tokenizer.json  the run's WordPiece tokenizer (Hugging Face format)
    RUN/split.json      {"seed", "max_len", "classes", "train": [{"origin",
                        "label"}, ...], "test": [...]}

Each document is read from its origin (a .txt path, relative to the working
directory gpurt ran in, or absolute), a UTF-8 BOM stripped, decoded as UTF-8
(Latin-1 when invalid) and stripped; then encoded without special tokens and
truncated to max_len ids. Id 0 is [PAD]. Tokenisation happens once, before
training, and is not counted in the epoch times.

Models (PyTorch default initialisation, constant learning rate):
  fasttext     mean of 64-d token embeddings over the document's tokens
               (EmbeddingBag, an empty document gives zeros) -> Linear(64, C)
  transformer  token + learned position embeddings (128-d), 2 pre-norm
               encoder layers (4 heads, FFN 512, GELU, dropout 0.1 on the
               residual branches, none on attention weights), final
               LayerNorm, mean pool over real tokens -> Linear(128, C).
               Batches are padded to their longest document.

Run with the peers venv (../shared/peers/setup.sh, plus `pip install tokenizers`):

    /tmp/peers-venv/bin/python tools/text_torch.py --run RUN --model fasttext --epochs 5 --lr 5e-3
    /tmp/peers-venv/bin/python tools/text_torch.py --run RUN --model transformer --epochs 2 \\
        --save /tmp/t.safetensors --json

Prints one line per epoch (train loss, seconds of the training pass only,
test accuracy), a RESULT line, and with --json a final JSON line.
"""
import argparse
import json
import os
import re
import statistics
import struct
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def read_document(origin):
    """The text of one split entry, decoded and stripped as gpurt does."""
    if not os.path.isfile(origin):
        if re.fullmatch(r".+:\d+", origin):
            sys.exit(f"error: origin {origin!r} is a CSV row; only .txt file origins are supported")
        sys.exit(f"error: origin {origin!r} not found (run from the directory gpurt ran in)")
    with open(origin, "rb") as f:
        raw = f.read()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text.strip()


def load_run(run):
    from tokenizers import Tokenizer  # here, so tools importing this module need no tokenizers

    tok = Tokenizer.from_file(os.path.join(run, "tokenizer.json"))
    with open(os.path.join(run, "split.json")) as f:
        split = json.load(f)
    max_len = split["max_len"]

    def encode(entries):
        texts = [read_document(e["origin"]) for e in entries]
        ids = [torch.tensor(e.ids[:max_len], dtype=torch.long)
               for e in tok.encode_batch(texts, add_special_tokens=False)]
        return ids, torch.tensor([e["label"] for e in entries], dtype=torch.long)

    return (tok.get_vocab_size(with_added_tokens=True), max_len, split["classes"],
            encode(split["train"]), encode(split["test"]))


def collate(docs):
    """Pads a batch to its longest document (at least 1): ids [B, T], mask [B, T]."""
    lengths = torch.tensor([len(d) for d in docs])
    t = max(int(lengths.max()), 1)
    ids = torch.zeros(len(docs), t, dtype=torch.long)
    for i, d in enumerate(docs):
        ids[i, :len(d)] = d
    return ids, torch.arange(t)[None, :] < lengths[:, None]


class FastText(nn.Module):
    def __init__(self, vocab, classes, dim=64):
        super().__init__()
        self.embedding = nn.EmbeddingBag(vocab, dim, mode="mean")
        self.fc = nn.Linear(dim, classes)

    def forward(self, ids, mask):
        # One bag per document over its real tokens only; empty bags give zeros.
        lengths = mask.sum(1)
        offsets = torch.cumsum(lengths, 0) - lengths
        return self.fc(self.embedding(ids[mask], offsets))


class TextTransformer(nn.Module):
    def __init__(self, vocab, classes, max_len, dim=128, heads=4, ffn=512, layers=2, dropout=0.1):
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)
        self.pos_embedding = nn.Embedding(max_len, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, ffn, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(dim),
                                             enable_nested_tensor=False)
        for l in self.encoder.layers:
            l.self_attn.dropout = 0.0  # gpurt's fused attention drops nothing
        self.fc = nn.Linear(dim, classes)

    def forward(self, ids, mask):
        t = ids.shape[1]
        x = self.embedding(ids) + self.pos_embedding(torch.arange(t))[None]
        # An empty document would mask every key (softmax of all -inf = NaN):
        # let it attend to position 0; its pooled vector is zeros regardless.
        attend = mask.clone()
        attend[:, 0] = True
        h = self.encoder(x, src_key_padding_mask=~attend)
        m = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.fc(pooled)


def make_optimizer(name, params, lr, weight_decay):
    # gpurt's optimisers: AdamW decoupled decay, Adam coupled (L2) decay,
    # SGD momentum 0.9 with coupled decay.
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


@torch.no_grad()
def evaluate(model, docs, labels, batch=128):
    model.eval()
    correct = 0
    for i in range(0, len(docs), batch):
        ids, mask = collate(docs[i:i + batch])
        correct += int((model(ids, mask).argmax(1) == labels[i:i + batch]).sum())
    return correct / len(docs)


def save_safetensors(state, path):
    """Writes float32 tensors in the safetensors format (no dependency)."""
    header, blobs, offset = {}, [], 0
    for name, t in state.items():
        data = t.detach().to(torch.float32).contiguous().numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = {"format": "pt"}
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for b in blobs:
            f.write(b)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="gpurt run folder with tokenizer.json and split.json")
    p.add_argument("--model", choices=["fasttext", "transformer"], required=True)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--optimizer", choices=["adamw", "adam", "sgd"], default="adamw")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=None,
                   help="default: 0.01 for adamw, 0 for adam and sgd (gpurt's defaults)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--save", help="write the trained state_dict here (.safetensors)")
    p.add_argument("--json", action="store_true", help="print a final JSON summary line")
    a = p.parse_args()
    if a.weight_decay is None:
        a.weight_decay = 0.01 if a.optimizer == "adamw" else 0.0

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    t0 = time.perf_counter()
    vocab, max_len, classes, (train_x, train_y), (test_x, test_y) = load_run(a.run)
    n_tok = sum(len(d) for d in train_x)
    print(f"data: {len(train_x)} train / {len(test_x)} test documents, {len(classes)} classes, "
          f"vocab {vocab}, max_len {max_len}, {n_tok / len(train_x):.1f} train tokens/doc, "
          f"tokenised in {time.perf_counter() - t0:.2f}s", flush=True)

    if a.model == "fasttext":
        model = FastText(vocab, len(classes))
    else:
        model = TextTransformer(vocab, len(classes), max_len)
    print(f"model: {a.model}, {sum(p.numel() for p in model.parameters())} parameters; "
          f"{a.optimizer} lr {a.lr} weight_decay {a.weight_decay}, batch {a.batch}, "
          f"{a.threads} threads", flush=True)
    opt = make_optimizer(a.optimizer, model.parameters(), a.lr, a.weight_decay)
    gen = torch.Generator().manual_seed(a.seed)

    epoch_s, acc = [], 0.0
    for epoch in range(1, a.epochs + 1):
        order = torch.randperm(len(train_x), generator=gen).tolist()
        model.train()
        total, seen = 0.0, 0
        start = time.perf_counter()
        for i in range(0, len(order), a.batch):
            idx = order[i:i + a.batch]
            ids, mask = collate([train_x[j] for j in idx])
            loss = F.cross_entropy(model(ids, mask), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        epoch_s.append(time.perf_counter() - start)
        acc = evaluate(model, test_x, test_y)
        print(f"epoch {epoch} train_loss {total / seen:.4f} train_s {epoch_s[-1]:.3f} "
              f"test_acc {acc:.4f}", flush=True)

    if a.save:
        save_safetensors(model.state_dict(), a.save)
        print(f"saved {a.save}")
    mean_s = statistics.mean(epoch_s) if epoch_s else 0.0
    median_s = statistics.median(epoch_s) if epoch_s else 0.0
    print(f"RESULT model={a.model} test_acc={acc:.4f} mean_epoch_s={mean_s:.3f} "
          f"median_epoch_s={median_s:.3f}")
    if a.json:
        print(json.dumps({"model": a.model, "test_acc": round(acc, 4),
                          "mean_epoch_s": round(mean_s, 3), "median_epoch_s": round(median_s, 3),
                          "epochs": a.epochs, "lr": a.lr, "optimizer": a.optimizer,
                          "batch": a.batch, "seed": a.seed, "threads": a.threads}))


if __name__ == "__main__":
    main()
