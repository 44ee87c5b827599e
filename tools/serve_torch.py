"""The peer of `gpurt serve` for tools/serve-compare.sh: a FastAPI app
around the same small CNN in PyTorch, loaded from a gpurt run folder
(model.safetensors in PyTorch's names, normalisation from
checkpoint.json), speaking the same KServe v2 JSON subset (UINT8 or FP32
input, logits / probabilities / top-k out).

Run it as a deployment would, one uvicorn worker process per core, each
with one intra-op thread:

    GPURT_RUN=runs/x uvicorn --app-dir tools serve_torch:app --workers 2 \
        --port 8081 --log-level warning

Needs the ../shared/peers venv plus fastapi, "uvicorn[standard]" and
safetensors.
"""

import json
import os
from pathlib import Path

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response
from safetensors.torch import load_file

torch.set_num_threads(1)


class SmallCnn(torch.nn.Module):
    """gpurt's `cnn` preset: three 3x3 convolutions, two 2x2 max pools, two
    dense layers, ReLU after all but the last."""

    def __init__(self, channels: int, side: int, classes: int):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels, 32, 3)
        self.conv2 = torch.nn.Conv2d(32, 64, 3)
        self.conv3 = torch.nn.Conv2d(64, 64, 3)
        s = ((side - 2) // 2 - 2) // 2 - 2
        self.fc1 = torch.nn.Linear(64 * s * s, 64)
        self.fc2 = torch.nn.Linear(64, classes)

    def forward(self, x):
        f = torch.nn.functional
        x = f.max_pool2d(f.relu(self.conv1(x)), 2)
        x = f.max_pool2d(f.relu(self.conv2(x)), 2)
        x = f.relu(self.conv3(x)).flatten(1)
        return self.fc2(f.relu(self.fc1(x)))


def load(run: Path):
    ck = json.loads((run / "checkpoint.json").read_text())
    if ck["spec"]["name"] != "cnn":
        raise SystemExit(f"{run}: serve_torch.py serves the cnn preset, not {ck['spec']['name']}")
    c, h, w = ck["input"]
    model = SmallCnn(c, h, ck["classes"])
    model.load_state_dict(load_file(run / ck["files"] / "model.safetensors"))
    model.eval()
    mean = torch.tensor(ck["mean"]).view(1, c, 1, 1)
    std = torch.tensor(ck["std"]).view(1, c, 1, 1)
    return model, (c, h, w), ck["classes"], mean, std


RUN = Path(os.environ.get("GPURT_RUN", "runs/latest"))
MODEL, DIMS, CLASSES, MEAN, STD = load(RUN)
NAME = os.environ.get("GPURT_MODEL_NAME", "cnn")
app = FastAPI()


@app.post("/v2/models/{name}/infer")
async def infer(name: str, request: Request):
    if name != NAME:
        raise HTTPException(404, f"no model named {name}")
    try:
        body = json.loads(await request.body())
        inp = body["inputs"][0]
        shape = inp["shape"]
        if list(shape[1:]) != list(DIMS):
            raise ValueError(f"shape {shape} does not fit {DIMS}")
        x = torch.tensor(inp["data"], dtype=torch.float32).view(*shape)
        if inp["datatype"] == "UINT8":
            x = (x / 255.0 - MEAN) / STD
        k = int(body.get("parameters", {}).get("top_k", 3))
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise HTTPException(400, str(e))
    with torch.inference_mode():
        logits = MODEL(x)
    probs = torch.softmax(logits, 1)
    top_p, top_i = probs.topk(min(k, CLASSES), 1)
    out = {
        "model_name": NAME,
        "outputs": [
            {"name": "logits", "datatype": "FP32", "shape": list(logits.shape), "data": logits.flatten().tolist()},
            {"name": "probabilities", "datatype": "FP32", "shape": list(probs.shape), "data": probs.flatten().tolist()},
        ],
        "top": [
            [{"class": i, "name": str(i), "probability": p} for p, i in zip(ps, idx)]
            for ps, idx in zip(top_p.tolist(), top_i.tolist())
        ],
    }
    if "id" in body:
        out["id"] = body["id"]
    return Response(json.dumps(out), media_type="application/json")
