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


def forward_inputs(in_channels, joint_attention_dim, pooled_projection_dim, rows=4, cols=3):
    """Inputs of one forward, batch 2: an image of `rows` x `cols` packed latent tokens (4 x 3: a
    64x48 px image, 8x6 latents packed 2x2) and 8 text tokens, drawn from torch's generator
    seeded 0."""
    txt_len, batch = 8, 2
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


def forward(model, t, lora_scale=None):
    """`model` (a FluxTransformer2DModel) on the inputs of `forward_inputs`, its LoRA adapters
    (if any) at `lora_scale`."""
    kwargs = {} if lora_scale is None else {"joint_attention_kwargs": {"scale": lora_scale}}
    with torch.no_grad():
        return model(
            hidden_states=t["img"], encoder_hidden_states=t["txt"], pooled_projections=t["pooled"],
            timestep=t["timestep"], img_ids=t["img_ids"], txt_ids=t["txt_ids"],
            guidance=t["guidance"], return_dict=False, **kwargs,
        )[0]


def bfl_to_diffusers(sd, hidden, mlp):
    """BFL FLUX names -> FluxTransformer2DModel names (`sd` is consumed), following diffusers'
    `convert_flux_transformer_checkpoint_to_diffusers` (loaders/single_file_utils.py), which
    hard-codes FLUX.1's width 3072: here `hidden` and `mlp` give the widths."""
    d = {}

    def lin(src, dst):
        for s in ("weight", "bias"):
            d[f"{dst}.{s}"] = sd.pop(f"{src}.{s}")

    def split(src, dsts, sizes):
        for s in ("weight", "bias"):
            for part, dst in zip(torch.split(sd.pop(f"{src}.{s}"), sizes, dim=0), dsts):
                d[f"{dst}.{s}"] = part

    lin("img_in", "x_embedder")
    lin("txt_in", "context_embedder")
    lin("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1")
    lin("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2")
    lin("vector_in.in_layer", "time_text_embed.text_embedder.linear_1")
    lin("vector_in.out_layer", "time_text_embed.text_embedder.linear_2")
    if "guidance_in.in_layer.weight" in sd:
        lin("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1")
        lin("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2")
    doubles = sorted({int(k.split(".")[1]) for k in sd if k.startswith("double_blocks.")})
    singles = sorted({int(k.split(".")[1]) for k in sd if k.startswith("single_blocks.")})
    for i in doubles:
        b, t = f"double_blocks.{i}", f"transformer_blocks.{i}"
        lin(f"{b}.img_mod.lin", f"{t}.norm1.linear")
        lin(f"{b}.txt_mod.lin", f"{t}.norm1_context.linear")
        split(f"{b}.img_attn.qkv", [f"{t}.attn.to_q", f"{t}.attn.to_k", f"{t}.attn.to_v"], [hidden] * 3)
        split(f"{b}.txt_attn.qkv",
              [f"{t}.attn.add_q_proj", f"{t}.attn.add_k_proj", f"{t}.attn.add_v_proj"], [hidden] * 3)
        d[f"{t}.attn.norm_q.weight"] = sd.pop(f"{b}.img_attn.norm.query_norm.scale")
        d[f"{t}.attn.norm_k.weight"] = sd.pop(f"{b}.img_attn.norm.key_norm.scale")
        d[f"{t}.attn.norm_added_q.weight"] = sd.pop(f"{b}.txt_attn.norm.query_norm.scale")
        d[f"{t}.attn.norm_added_k.weight"] = sd.pop(f"{b}.txt_attn.norm.key_norm.scale")
        lin(f"{b}.img_attn.proj", f"{t}.attn.to_out.0")
        lin(f"{b}.txt_attn.proj", f"{t}.attn.to_add_out")
        lin(f"{b}.img_mlp.0", f"{t}.ff.net.0.proj")
        lin(f"{b}.img_mlp.2", f"{t}.ff.net.2")
        lin(f"{b}.txt_mlp.0", f"{t}.ff_context.net.0.proj")
        lin(f"{b}.txt_mlp.2", f"{t}.ff_context.net.2")
    for i in singles:
        b, t = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        split(f"{b}.linear1", [f"{t}.attn.to_q", f"{t}.attn.to_k", f"{t}.attn.to_v", f"{t}.proj_mlp"],
              [hidden, hidden, hidden, mlp])
        lin(f"{b}.linear2", f"{t}.proj_out")
        lin(f"{b}.modulation.lin", f"{t}.norm.linear")
        d[f"{t}.attn.norm_q.weight"] = sd.pop(f"{b}.norm.query_norm.scale")
        d[f"{t}.attn.norm_k.weight"] = sd.pop(f"{b}.norm.key_norm.scale")
    lin("final_layer.linear", "proj_out")
    for s in ("weight", "bias"):
        shift, scale = sd.pop(f"final_layer.adaLN_modulation.1.{s}").chunk(2, dim=0)
        d[f"norm_out.linear.{s}"] = torch.cat([scale, shift], dim=0)
    if sd:
        sys.exit(f"unmapped BFL tensors: {sorted(sd)}")
    return d


def transformer_from_bfl(sd, config):
    """A FluxTransformer2DModel of `config` (f32, eval) holding the BFL-named state dict `sd`."""
    model = FluxTransformer2DModel.from_config(config)
    hidden = config["num_attention_heads"] * config["attention_head_dim"]
    model.load_state_dict(bfl_to_diffusers(dict(sd), hidden, hidden * 4), strict=True)
    return model.eval()


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
