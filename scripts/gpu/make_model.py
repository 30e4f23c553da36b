"""Turns a model folder written by `fluxd model init-tiny` into a random FLUX.1-dev-shaped one.

Used by scripts/gpu-check.sh on a lent GPU machine, where nothing can be downloaded: the
transformer gets FLUX.1-dev's shape (19 double + 38 single blocks, 24 heads of 128, T5 width
4096, CLIP width 768), the text encoders CLIP-L's and T5-XXL's shapes and the VAE FLUX's, all
with random weights, saved by diffusers/transformers themselves (`save_pretrained`, bf16
safetensors) in the folder layout of black-forest-labs/FLUX.1-dev. fluxd and diffusers then
load the very same files. The tokenizers stay the tiny ones init-tiny trained (their vocabulary
sizes are kept), which changes no timing that matters: tokenizing is not measured apart.

Random weights are drawn on the GPU (24 GB of bf16 in seconds; fluxd's own init-tiny draws on
one CPU core, which would take minutes at this size). `--preset small` keeps every width that
the layout fixes (T5 4096, CLIP 768, 16 latent channels) but shrinks depths and heads, for the
CPU dry run of the same script path.
"""

import argparse
import json
import pathlib
import shutil

import torch
from safetensors.torch import save_file
from diffusers import AutoencoderKL, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

PRESETS = {
    # FLUX.1-dev (black-forest-labs/FLUX.1-dev: transformer/, text_encoder/, text_encoder_2/, vae/).
    "dev": dict(
        double=19, single=38, heads=24,
        clip=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
        t5=dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24),
        vae=dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32),
    ),
    # Same fixed widths, small everything else: a CPU dry run in seconds.
    "small": dict(
        double=1, single=2, heads=2,
        clip=dict(hidden_size=768, intermediate_size=256, num_hidden_layers=1, num_attention_heads=4),
        t5=dict(d_model=4096, d_ff=256, d_kv=16, num_heads=4, num_layers=1),
        vae=dict(block_out_channels=[32, 32, 32, 32], layers_per_block=1, norm_num_groups=8),
    ),
}


def replace(folder: pathlib.Path, model) -> None:
    """Saves a diffusers `model` into `folder` in place of what init-tiny wrote there."""
    shutil.rmtree(folder)
    model.save_pretrained(folder, max_shard_size="10GB", safe_serialization=True)


def replace_text_encoder(folder: pathlib.Path, model, prefix: str = "") -> None:
    """Saves a transformers `model` into `folder` with the tensor names FLUX.1-dev's files have:
    transformers 5's CLIPTextModel has no `text_model` module any more, while FLUX.1-dev's
    text_encoder/model.safetensors names every tensor `text_model.…` (`prefix`)."""
    shutil.rmtree(folder)
    folder.mkdir(parents=True)
    model.config.save_pretrained(folder)
    sd = {k if k.startswith(prefix) else prefix + k: v for k, v in model.state_dict().items()}
    # T5's encoder embedding is tied to `shared`: one copy, as safetensors wants.
    tied = sd.get("encoder.embed_tokens.weight")
    if tied is not None and "shared.weight" in sd and tied.data_ptr() == sd["shared.weight"].data_ptr():
        del sd["encoder.embed_tokens.weight"]
    save_file({k: v.contiguous() for k, v in sd.items()}, folder / "model.safetensors", metadata={"format": "pt"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=pathlib.Path, help="a folder written by fluxd model init-tiny")
    ap.add_argument("--preset", choices=PRESETS, default="dev")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    p = PRESETS[args.preset]
    torch.manual_seed(args.seed)
    # Initialise straight in bf16 on the device: a 12B-parameter model in f32 would need 48 GB.
    torch.set_default_dtype(torch.bfloat16)
    dev = torch.device(args.device)

    with dev:
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=p["double"], num_single_layers=p["single"],
            attention_head_dim=128, num_attention_heads=p["heads"], joint_attention_dim=4096,
            pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56),
        )
    params = sum(t.numel() for t in transformer.parameters())
    replace(args.model / "transformer", transformer)
    del transformer

    clip_cfg = json.loads((args.model / "text_encoder" / "config.json").read_text())
    clip_cfg.update(p["clip"], projection_dim=p["clip"]["hidden_size"])
    with dev:
        clip = CLIPTextModel(CLIPTextConfig(**clip_cfg))
    replace_text_encoder(args.model / "text_encoder", clip, prefix="text_model.")
    del clip

    t5_cfg = json.loads((args.model / "text_encoder_2" / "config.json").read_text())
    t5_cfg.update(p["t5"], num_decoder_layers=p["t5"]["num_layers"])
    with dev:
        t5 = T5EncoderModel(T5Config(**t5_cfg))
    replace_text_encoder(args.model / "text_encoder_2", t5)
    del t5

    vae_cfg = json.loads((args.model / "vae" / "config.json").read_text())
    vae_cfg = {k: v for k, v in vae_cfg.items() if not k.startswith("_")}
    vae_cfg.update(p["vae"])
    with dev:
        vae = AutoencoderKL(**vae_cfg)
    replace(args.model / "vae", vae)
    del vae
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    print(f"wrote a random {args.preset} model to {args.model}: transformer {params / 1e9:.2f}B parameters")


if __name__ == "__main__":
    main()
