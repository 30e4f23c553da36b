"""Reference fixtures for fp8 checkpoints: diffusers running the *upcast* weights of fp8 files that
fluxd's own writer produced (`cargo run -p fluxd-engine --example write_fp8_models -- DIR 7`).

Usage: python fp8_fixtures.py DIR OUT_DIR

DIR holds the tiny model (`tiny/`), its transformer as an f32 BFL file (`bfl.safetensors`), the
same transformer in each fp8 layout (`kijai`, `comfy_scaled`, `comfy_scaled_input`) and a ComfyUI
full checkpoint (`checkpoint.safetensors`). Upcasting follows ComfyUI (`comfy/ops.py`,
`scaled_fp8_ops`): `weight.float() * scale_weight` where the file has a scale; `scale_input` is only
read by fp8 GEMMs and is dropped. torch reads `F8_E4M3` as `torch.float8_e4m3fn`.

Writes OUT_DIR/forward.safetensors (inputs and one `FluxTransformer2DModel` forward per file,
the f32 original as `out_original`), OUT_DIR/checkpoint.{png,safetensors} (a `FluxPipeline` run
whose transformer, CLIP and T5 hold the checkpoint's upcast weights; its VAE is stored unquantized
in LDM names, the same tensors as the folder's, so the folder's VAE is used) and
OUT_DIR/cases.json with the sha256 of every input file.

diffusers' own BFL conversion (`convert_flux_transformer_checkpoint_to_diffusers`) hard-codes
FLUX.1's width 3072, so the BFL -> diffusers names are mapped here for any width, following that
function's mapping.
"""

import json
import os
import sys

import torch
from diffusers import FluxPipeline, FluxTransformer2DModel
from PIL import Image
from safetensors.torch import load_file, save_file

from model_hashes import sha256
from transformer_fixtures import forward, forward_inputs

LAYOUTS = ["kijai", "comfy_scaled", "comfy_scaled_input"]
COMFY_MODEL = "model.diffusion_model."
CASE = dict(prompt="a small fox in fp8", width=64, height=48, steps=3, guidance=3.5, seed=9,
            max_sequence_length=16)


def upcast(sd, prefix):
    """The tensors under `prefix`, prefix stripped, in f32: fp8 ones times their ComfyUI scale."""
    out = {}
    for name, t in sd.items():
        if not name.startswith(prefix):
            continue
        name = name[len(prefix):]
        if name == "scaled_fp8" or name.endswith((".scale_weight", ".scale_input")):
            continue
        t = t.float()
        scale = sd.get(f"{prefix}{name[:-len('.weight')]}.scale_weight") if name.endswith(".weight") else None
        if scale is not None:
            t = t * scale.float()
        out[name] = t
    return out


def fp8_roundtrip(w):
    """A weight stored in fp8 with the scale that maps its largest value to fp8's 448, read back."""
    scale = w.abs().max() / 448.0
    return (w * (1.0 / scale)).to(torch.float8_e4m3fn).float() * scale


def bfl_to_diffusers(sd, hidden, mlp):
    """BFL FLUX names -> FluxTransformer2DModel names (diffusers single_file_utils mapping)."""
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


def transformer_from(sd, config):
    model = FluxTransformer2DModel.from_config(config)
    hidden = config["num_attention_heads"] * config["attention_head_dim"]
    model.load_state_dict(bfl_to_diffusers(sd, hidden, hidden * 4), strict=True)
    return model.eval()


def main():
    src, out_dir = sys.argv[1:3]
    os.makedirs(out_dir, exist_ok=True)
    torch.set_num_threads(2)
    model_dir = os.path.join(src, "tiny")
    config = dict(FluxTransformer2DModel.load_config(os.path.join(model_dir, "transformer")))

    # One forward per file, on the inputs of transformer_fixtures.py.
    tensors = forward_inputs(config["in_channels"], config["joint_attention_dim"],
                             config["pooled_projection_dim"])
    files = {"original": "bfl.safetensors", **{k: f"{k}.safetensors" for k in LAYOUTS}}
    weights = {}
    for key, file in files.items():
        sd = load_file(os.path.join(src, file))
        prefix = COMFY_MODEL if any(k.startswith(COMFY_MODEL) for k in sd) else ""
        weights[key] = upcast(sd, prefix)
    # `--weights-dtype fp8`: every linear (2-D) weight of the f32 file stored with a per-tensor
    # scale amax / 448, biases and norms kept in f32.
    weights["weights_fp8"] = {k: fp8_roundtrip(v) if v.dim() == 2 else v
                              for k, v in weights["original"].items()}
    for key, sd in weights.items():
        tensors[f"out_{key}"] = forward(transformer_from(dict(sd), config), tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out_dir, "forward.safetensors"))

    # A pipeline run on the full checkpoint's upcast weights.
    ckpt_path = os.path.join(src, "checkpoint.safetensors")
    ckpt = load_file(ckpt_path)
    pipe = FluxPipeline.from_pretrained(model_dir, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.transformer = transformer_from(upcast(ckpt, COMFY_MODEL), config)
    clip = upcast(ckpt, "text_encoders.clip_l.transformer.")
    # transformers 5's CLIPTextModel names its modules without the files' `text_model.` prefix
    # (its loader renames on load); a plain state dict needs the module's own names.
    if not any(k.startswith("text_model.") for k in pipe.text_encoder.state_dict()):
        clip = {k.removeprefix("text_model."): v for k, v in clip.items()}
    pipe.text_encoder.load_state_dict(clip, strict=True)
    t5 = upcast(ckpt, "text_encoders.t5xxl.transformer.")
    missing, unexpected = pipe.text_encoder_2.load_state_dict(t5, strict=False)
    # T5EncoderModel ties encoder.embed_tokens to shared: a file may hold either name.
    if unexpected or any(m != "encoder.embed_tokens.weight" for m in missing):
        sys.exit(f"T5 state dict: missing {missing}, unexpected {unexpected}")
    captured = {}

    def on_step_end(_pipe, i, t, kwargs):
        captured["latents"] = kwargs["latents"].clone()
        return kwargs

    image = pipe(
        prompt=CASE["prompt"], width=CASE["width"], height=CASE["height"],
        num_inference_steps=CASE["steps"], guidance_scale=CASE["guidance"],
        generator=torch.Generator("cpu").manual_seed(CASE["seed"]),
        max_sequence_length=CASE["max_sequence_length"], output_type="np",
        callback_on_step_end=on_step_end,
    ).images[0]
    Image.fromarray((image * 255).round().astype("uint8")).save(os.path.join(out_dir, "checkpoint.png"))
    save_file({"final_latents": captured["latents"].contiguous()},
              os.path.join(out_dir, "checkpoint.safetensors"))

    hashes = {f: sha256(os.path.join(src, f)) for f in [*files.values(), "checkpoint.safetensors"]}
    with open(os.path.join(out_dir, "cases.json"), "w") as f:
        json.dump({"model_seed": int(os.environ.get("FLUXD_TINY_SEED", "7")), "case": CASE,
                   "layouts": LAYOUTS, "files": hashes}, f, indent=2)
        f.write("\n")
    print(f"wrote {out_dir}")


if __name__ == "__main__":
    main()
