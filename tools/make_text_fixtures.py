#!/usr/bin/env python3
"""Writes the PyTorch reference fixtures for gpurt's text models.

Builds two tiny models with torch.manual_seed(0), randomises every parameter
(embeddings normal_(), everything else uniform_(-0.5, 0.5), so that a wrong
tensor name or layout cannot match by accident), runs them in eval mode on
four fixed padded sequences and writes, into tests/fixtures/text/:

    fasttext.safetensors     state_dict of EmbeddingBag(50, 8, mean) -> Linear(8, 3)
    fasttext.json            inputs and PyTorch's logits
    fasttext.toml            the gpurt spec of that model
    transformer.safetensors  state_dict of token + position embeddings (16-d),
                             2 pre-norm encoder layers (2 heads, FFN 32, GELU),
                             final LayerNorm, masked mean pool -> Linear(16, 3)
    transformer.json         inputs and PyTorch's logits
    transformer.toml         the gpurt spec of that model

Each JSON file is {"max_len", "vocab", "classes", "ids" [4][12], "lengths" [4],
"logits" [4][3]}. Real tokens are drawn from 1..49; positions at and past a
sequence's length hold 0 and are excluded (EmbeddingBag offsets for fasttext,
src_key_padding_mask plus masked mean pooling for the transformer).

Run with the peers venv (no safetensors package needed):

    /tmp/peers-venv/bin/python tools/make_text_fixtures.py [--out tests/fixtures/text]
"""
import argparse
import json
import os
import struct
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from text_torch import save_safetensors  # noqa: E402  (the one safetensors writer)

VOCAB = 50
MAX_LEN = 12
CLASSES = 3
FASTTEXT_LENGTHS = [12, 0, 3, 7]
TRANSFORMER_LENGTHS = [12, 5, 1, 9]

FASTTEXT_TOML = """\
name = "tiny-fasttext"
[[layer]]
type = "embedding_bag"
name = "embedding"
vocab = 50
dim = 8
[[layer]]
type = "dense"
name = "fc"
units = 3
"""

TRANSFORMER_TOML = """\
name = "tiny-transformer"
[[layer]]
type = "embedding"
name = "embedding"
vocab = 50
dim = 16
[[layer]]
type = "positional_embedding"
name = "pos_embedding"
max_len = 12
[[layer]]
type = "transformer_encoder"
name = "encoder"
layers = 2
heads = 2
ffn = 32
dropout = 0.1
[[layer]]
type = "masked_mean_pool"
[[layer]]
type = "dense"
name = "fc"
units = 3
"""


class FastText(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.EmbeddingBag(VOCAB, 8, mode="mean")
        self.fc = nn.Linear(8, CLASSES)

    def forward(self, ids, lengths):
        # One bag per sequence over its first `length` ids; an empty bag is zeros.
        mask = torch.arange(ids.shape[1])[None, :] < lengths[:, None]
        offsets = torch.cumsum(lengths, 0) - lengths
        return self.fc(self.embedding(ids[mask], offsets))


class TinyTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        d = 16
        self.embedding = nn.Embedding(VOCAB, d)
        self.pos_embedding = nn.Embedding(MAX_LEN, d)
        layer = nn.TransformerEncoderLayer(d_model=d, nhead=2, dim_feedforward=32, dropout=0.1,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, norm=nn.LayerNorm(d),
                                             enable_nested_tensor=False)
        self.fc = nn.Linear(d, CLASSES)

    def forward(self, ids, lengths):
        t = ids.shape[1]
        pad = torch.arange(t)[None, :] >= lengths[:, None]  # True = ignore this key
        x = self.embedding(ids) + self.pos_embedding(torch.arange(t))[None]
        h = self.encoder(x, src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        pooled = (h * keep).sum(1) / keep.sum(1).clamp(min=1.0)  # zeros for length 0
        return self.fc(pooled)


def randomise(model):
    """Embeddings ~ N(0, 1); every other parameter ~ U(-0.5, 0.5)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in ("embedding.weight", "pos_embedding.weight"):
                p.normal_()
            else:
                p.uniform_(-0.5, 0.5)


def make_inputs(lengths):
    """ids [B, MAX_LEN]: real tokens from 1..VOCAB-1, zeros at and past each length."""
    ids = torch.zeros(len(lengths), MAX_LEN, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(1, VOCAB, (n,))
    return ids, torch.tensor(lengths, dtype=torch.long)


def read_safetensors(path):
    """Reads back what save_safetensors wrote: {name: float32 tensor}."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    body = raw[8 + n:]
    out = {}
    for name, info in header.items():
        assert info["dtype"] == "F32", name
        b, e = info["data_offsets"]
        t = torch.frombuffer(bytearray(body[b:e]), dtype=torch.float32)
        out[name] = t.reshape(info["shape"])
    return out


def write_fixture(out, stem, model, ids, lengths, logits, toml):
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    path = os.path.join(out, f"{stem}.safetensors")
    save_safetensors(state, path)
    back = read_safetensors(path)
    assert list(back) == list(state), (list(back), list(state))
    for k in state:
        assert torch.equal(back[k], state[k]), k
    rows = lambda xs: "[\n" + ",\n".join("  " + json.dumps(x) for x in xs) + "\n ]"
    logit_rows = [[float(v) for v in row] for row in logits.to(torch.float32)]
    with open(os.path.join(out, f"{stem}.json"), "w") as f:
        f.write(f'{{"max_len": {MAX_LEN}, "vocab": {VOCAB}, "classes": {CLASSES},\n'
                f' "ids": {rows(ids.tolist())},\n'
                f' "lengths": {json.dumps(lengths.tolist())},\n'
                f' "logits": {rows(logit_rows)}}}\n')
    with open(os.path.join(out, f"{stem}.toml"), "w") as f:
        f.write(toml)
    print(f"{stem}: {len(state)} tensors, logits max |v| = {logits.abs().max().item():.4f}")
    for k, v in state.items():
        print(f"  {k} {list(v.shape)}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "..", "tests", "fixtures", "text"))
    a = p.parse_args()
    out = os.path.normpath(a.out)
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}")

    with torch.no_grad():
        # fasttext
        ft = FastText()
        randomise(ft)
        ft.eval()
        ids, lengths = make_inputs(FASTTEXT_LENGTHS)
        logits = ft(ids, lengths)
        # The empty sequence must give exactly fc.bias; set it explicitly.
        for i, n in enumerate(FASTTEXT_LENGTHS):
            if n == 0:
                assert torch.allclose(logits[i], ft.fc.bias, atol=1e-6), (logits[i], ft.fc.bias)
                logits[i] = ft.fc.bias
        # Cross-check each non-empty sequence on its own: fc(mean of its embeddings).
        for i, n in enumerate(FASTTEXT_LENGTHS):
            if n:
                ref = ft.fc(ft.embedding.weight[ids[i, :n]].mean(0))
                assert torch.allclose(logits[i], ref, atol=1e-5), (i, logits[i], ref)
        write_fixture(out, "fasttext", ft, ids, lengths, logits, FASTTEXT_TOML)

        # transformer
        tr = TinyTransformer()
        randomise(tr)
        tr.eval()
        ids, lengths = make_inputs(TRANSFORMER_LENGTHS)
        logits = tr(ids, lengths)
        assert torch.isfinite(logits).all(), logits
        # Cross-check: each sequence alone, truncated to its length, no mask.
        worst = 0.0
        for i, n in enumerate(TRANSFORMER_LENGTHS):
            one = tr(ids[i:i + 1, :n], lengths[i:i + 1])[0]
            worst = max(worst, (one - logits[i]).abs().max().item())
        assert worst < 1e-4, worst
        print(f"transformer: padded batch vs per-sequence max |diff| = {worst:.2e}")
        write_fixture(out, "transformer", tr, ids, lengths, logits, TRANSFORMER_TOML)


if __name__ == "__main__":
    main()
