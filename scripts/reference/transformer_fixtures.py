"""Reference fixture for the FLUX transformer: one diffusers forward on the tiny model.

Writes crates/fluxd-engine/tests/fixtures/transformer/tiny_forward.safetensors with the inputs
and diffusers' output. The weights are not stored: they are the tiny diffusers folder our writer
produces for seed 1234 (`cargo run -p fluxd-engine --example write_tiny_transformer -- DIR tiny 1234`),
which this script creates in a temporary folder and loads with
`FluxTransformer2DModel.from_pretrained(..., torch_dtype=torch.float32)`.

Run with the reference venv from the repository root:
    /work/venvs/ref/bin/python scripts/reference/transformer_fixtures.py
"""

import json
import os
import subprocess
import sys
import tempfile

import torch
from diffusers import FluxTransformer2DModel
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "crates/fluxd-engine/tests/fixtures/transformer/tiny_forward.safetensors")
SEED = 1234


def forward_inputs(in_channels, joint_attention_dim, pooled_projection_dim):
    """Inputs of one forward, batch 2: a 64x48 px image (8x6 latents, packed 2x2 -> 4 rows x 3
    cols = 12 tokens) and 8 text tokens, drawn from torch's generator seeded 0."""
    rows, cols, txt_len, batch = 4, 3, 8, 2
    g = torch.Generator().manual_seed(0)
    img = torch.randn(batch, rows * cols, in_channels, generator=g)
    txt = torch.randn(batch, txt_len, joint_attention_dim, generator=g)
    pooled = torch.randn(batch, pooled_projection_dim, generator=g)
    img_ids = torch.zeros(rows, cols, 3)
    img_ids[..., 1] = torch.arange(rows)[:, None]
    img_ids[..., 2] = torch.arange(cols)[None, :]
    img_ids = img_ids.reshape(rows * cols, 3)
    return {
        "img": img, "txt": txt, "pooled": pooled, "img_ids": img_ids,
        "txt_ids": torch.zeros(txt_len, 3), "timestep": torch.tensor([0.7, 0.25]),
        "guidance": torch.tensor([3.5, 1.0]),
    }


def forward(model, t):
    """`model` (a FluxTransformer2DModel) on the inputs of `forward_inputs`."""
    with torch.no_grad():
        return model(
            hidden_states=t["img"], encoder_hidden_states=t["txt"], pooled_projections=t["pooled"],
            timestep=t["timestep"], img_ids=t["img_ids"], txt_ids=t["txt_ids"],
            guidance=t["guidance"], return_dict=False,
        )[0]


def main():
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "transformer")
        subprocess.run(
            ["cargo", "run", "-q", "-p", "fluxd-engine", "--example", "write_tiny_transformer",
             "--", folder, "tiny", str(SEED), "2"],
            cwd=ROOT, check=True,
        )
        model, info = FluxTransformer2DModel.from_pretrained(
            folder, torch_dtype=torch.float32, output_loading_info=True
        )
        bad = {k: v for k, v in info.items() if v}
        if bad:
            sys.exit(f"loading info not clean: {bad}")
        model.eval()
        cfg = model.config

        tensors = forward_inputs(cfg.in_channels, cfg.joint_attention_dim, cfg.pooled_projection_dim)
        tensors["out"] = forward(model, tensors)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, OUT,
              # One metadata key: safetensors writes several in random order.
              metadata={"reference": json.dumps({
                  "seed": SEED,
                  "config": {k: v for k, v in dict(cfg).items() if not k.startswith("_")},
              }, sort_keys=True)})
    print(f"wrote {OUT}: out std {tensors['out'].std().item():.4f}")


if __name__ == "__main__":
    main()
