"""Reference outputs for fluxd's GGUF loading: diffusers and transformers running the
*dequantized* weights of GGUF files that fluxd wrote (`fluxd model quantize`), one per type.

Usage: python gguf_fixtures.py GGUF_DIR OUT_DIR

GGUF_DIR (made by make_gguf_fixtures.sh) holds `model/` (`fluxd model init-tiny --preset quant`),
`flux-<TYPE>.gguf` and `t5-<TYPE>.gguf` for each type, and `loras/peft.safetensors`. For each
transformer file the gguf package (pinned in requirements.txt) dequantizes every tensor to
float32 (ggml's own formulas, in f32: diffusers' and ComfyUI-GGUF's loaders multiply in fp16),
diffusers' single-file conversion maps the BFL names, and `FluxTransformer2DModel` (float32, CPU)
runs one forward on fixed inputs. The same forward on the original float32 weights measures what
the quantization itself changes. A GGUF base plus a LoRA (diffusers' PEFT loader, scales 0 and 1)
checks adapters beside quantized weights. T5: transformers' `T5EncoderModel` loads each t5encoder
file itself (`gguf_file=`, its own llama.cpp name mapping), which also checks the layout.

Writes OUT_DIR/transformer.safetensors, OUT_DIR/t5.safetensors and OUT_DIR/cases.json (file
hashes, the measured quantization effect per type).
"""

import json
import os
import sys

import gguf
import numpy as np
import torch
from diffusers import FluxTransformer2DModel
from safetensors.torch import save_file
from transformers import T5Config, T5EncoderModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from model_hashes import model_hashes, sha256  # noqa: E402

FLUX_TYPES = ["F32", "F16", "BF16", "Q8_0", "Q5_0", "Q5_1", "Q4_0", "Q4_1",
              "Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K"]
T5_TYPES = ["F16", "Q8_0", "Q4_0"]
LORA_TYPES = ["Q8_0", "Q4_K"]
LORA_SCALES = [0.0, 1.0]


def dequantized_state_dict(path):
    """Every tensor of a GGUF file as float32, in torch order (GGUF stores dims reversed)."""
    reader = gguf.GGUFReader(path)
    out = {}
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        out[t.name] = torch.from_numpy(np.ascontiguousarray(values).reshape(shape))
    return out


def bfl_to_diffusers(sd, cfg):
    """BFL names to diffusers names, the inverse of nothing but the table in diffusers'
    `convert_flux_transformer_checkpoint_to_diffusers` (loaders/single_file_utils.py), which
    hard-codes FLUX.1's width 3072: here the widths come from the config."""
    h = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    out = {}

    def put(dst, src, rows=None):
        for suffix in ("weight", "bias"):
            t = sd.pop(f"{src}.{suffix}")
            if rows is None:
                out[f"{dst}.{suffix}"] = t
            else:
                for name, part in zip(dst, torch.split(t, rows, dim=0)):
                    out[f"{name}.{suffix}"] = part

    put("time_text_embed.timestep_embedder.linear_1", "time_in.in_layer")
    put("time_text_embed.timestep_embedder.linear_2", "time_in.out_layer")
    put("time_text_embed.text_embedder.linear_1", "vector_in.in_layer")
    put("time_text_embed.text_embedder.linear_2", "vector_in.out_layer")
    if cfg["guidance_embeds"]:
        put("time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer")
        put("time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer")
    put("context_embedder", "txt_in")
    put("x_embedder", "img_in")
    for i in range(cfg["num_layers"]):
        b, d = f"double_blocks.{i}", f"transformer_blocks.{i}"
        put(f"{d}.norm1.linear", f"{b}.img_mod.lin")
        put(f"{d}.norm1_context.linear", f"{b}.txt_mod.lin")
        put([f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v"], f"{b}.img_attn.qkv", [h] * 3)
        put([f"{d}.attn.add_q_proj", f"{d}.attn.add_k_proj", f"{d}.attn.add_v_proj"],
            f"{b}.txt_attn.qkv", [h] * 3)
        put(f"{d}.attn.to_out.0", f"{b}.img_attn.proj")
        put(f"{d}.attn.to_add_out", f"{b}.txt_attn.proj")
        put(f"{d}.ff.net.0.proj", f"{b}.img_mlp.0")
        put(f"{d}.ff.net.2", f"{b}.img_mlp.2")
        put(f"{d}.ff_context.net.0.proj", f"{b}.txt_mlp.0")
        put(f"{d}.ff_context.net.2", f"{b}.txt_mlp.2")
        for src, dst in [("img_attn.norm.query_norm", "attn.norm_q"),
                         ("img_attn.norm.key_norm", "attn.norm_k"),
                         ("txt_attn.norm.query_norm", "attn.norm_added_q"),
                         ("txt_attn.norm.key_norm", "attn.norm_added_k")]:
            out[f"{d}.{dst}.weight"] = sd.pop(f"{b}.{src}.scale")
    for i in range(cfg["num_single_layers"]):
        b, d = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        put([f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v", f"{d}.proj_mlp"],
            f"{b}.linear1", [h, h, h, 4 * h])
        put(f"{d}.proj_out", f"{b}.linear2")
        put(f"{d}.norm.linear", f"{b}.modulation.lin")
        out[f"{d}.attn.norm_q.weight"] = sd.pop(f"{b}.norm.query_norm.scale")
        out[f"{d}.attn.norm_k.weight"] = sd.pop(f"{b}.norm.key_norm.scale")
    put("proj_out", "final_layer.linear")
    # BFL's final modulation is (shift, scale), diffusers' AdaLayerNormContinuous (scale, shift).
    for suffix in ("weight", "bias"):
        shift, scale = sd.pop(f"final_layer.adaLN_modulation.1.{suffix}").chunk(2, dim=0)
        out[f"norm_out.linear.{suffix}"] = torch.cat([scale, shift], dim=0)
    if sd:
        sys.exit(f"tensors left over: {sorted(sd)}")
    return out


def flux_inputs(cfg):
    # A 64x64 px image: 8x8 latents, packed 2x2 -> 4x4 = 16 tokens; 8 text tokens; batch 2.
    rows, cols, txt_len, batch = 4, 4, 8, 2
    g = torch.Generator().manual_seed(0)
    img = torch.randn(batch, rows * cols, cfg["in_channels"], generator=g)
    txt = torch.randn(batch, txt_len, cfg["joint_attention_dim"], generator=g)
    pooled = torch.randn(batch, cfg["pooled_projection_dim"], generator=g)
    img_ids = torch.zeros(rows, cols, 3)
    img_ids[..., 1] = torch.arange(rows)[:, None]
    img_ids[..., 2] = torch.arange(cols)[None, :]
    return dict(
        img=img, txt=txt, pooled=pooled, img_ids=img_ids.reshape(rows * cols, 3),
        txt_ids=torch.zeros(txt_len, 3), timestep=torch.tensor([0.7, 0.25]),
        guidance=torch.tensor([3.5, 1.0]),
    )


def flux_forward(model, x, lora_scale=None):
    kwargs = {} if lora_scale is None else {"joint_attention_kwargs": {"scale": lora_scale}}
    with torch.no_grad():
        return model(
            hidden_states=x["img"], encoder_hidden_states=x["txt"], pooled_projections=x["pooled"],
            timestep=x["timestep"], img_ids=x["img_ids"], txt_ids=x["txt_ids"],
            guidance=x["guidance"], return_dict=False, **kwargs,
        )[0]


def flux_from_gguf(path, cfg):
    converted = bfl_to_diffusers(dequantized_state_dict(path), cfg)
    model = FluxTransformer2DModel.from_config(cfg)
    model.load_state_dict(converted, strict=True)
    return model.eval()


def effect(a, b):
    d = (a - b).abs().max().item()
    return {"max_abs": d, "rel": d / b.abs().max().item()}


def main():
    gdir, out_dir = sys.argv[1:3]
    torch.set_num_threads(2)
    os.makedirs(out_dir, exist_ok=True)
    model_dir = os.path.join(gdir, "model")
    cfg = FluxTransformer2DModel.load_config(os.path.join(model_dir, "transformer"))
    x = flux_inputs(cfg)
    base = FluxTransformer2DModel.from_pretrained(
        os.path.join(model_dir, "transformer"), torch_dtype=torch.float32).eval()
    tensors = dict(x)
    tensors["out_f32"] = flux_forward(base, x)
    files, flux_cases = {}, {}
    lora = os.path.join(gdir, "loras", "peft.safetensors")
    files["loras/peft.safetensors"] = sha256(lora)
    for ty in FLUX_TYPES:
        name = f"flux-{ty}.gguf"
        files[name] = sha256(os.path.join(gdir, name))
        model = flux_from_gguf(os.path.join(gdir, name), cfg)
        out = flux_forward(model, x)
        tensors[f"out_{ty}"] = out
        flux_cases[ty] = {"quantization_effect": effect(out, tensors["out_f32"])}
        if ty in LORA_TYPES:
            model.load_lora_adapter(lora, adapter_name="fixture", prefix="transformer")
            for s in LORA_SCALES:
                tensors[f"out_{ty}_lora_{s}"] = flux_forward(model, x, lora_scale=s)
        print(f"{ty}: quantization effect {flux_cases[ty]['quantization_effect']}")

    # T5: transformers reads the t5encoder files itself.
    t5_dir = os.path.join(model_dir, "text_encoder_2")
    t5_cfg = T5Config.from_pretrained(t5_dir)
    ids = torch.tensor([[(i * 7 + 3) % t5_cfg.vocab_size for i in range(12)]])
    t5_tensors = {"input_ids": ids.to(torch.int64)}
    with torch.no_grad():
        t5_tensors["t5_f32"] = T5EncoderModel.from_pretrained(t5_dir).eval()(ids).last_hidden_state
    t5_cases = {}
    for ty in T5_TYPES:
        name = f"t5-{ty}.gguf"
        files[name] = sha256(os.path.join(gdir, name))
        enc = T5EncoderModel.from_pretrained(
            gdir, gguf_file=name, config=t5_cfg, torch_dtype=torch.float32).eval()
        with torch.no_grad():
            out = enc(ids).last_hidden_state
        t5_tensors[f"t5_{ty}"] = out
        t5_cases[ty] = {"quantization_effect": effect(out, t5_tensors["t5_f32"])}
        print(f"T5 {ty}: quantization effect {t5_cases[ty]['quantization_effect']}")

    save_file({k: v.contiguous() for k, v in tensors.items()},
              os.path.join(out_dir, "transformer.safetensors"))
    save_file({k: v.contiguous() for k, v in t5_tensors.items()}, os.path.join(out_dir, "t5.safetensors"))
    meta = {
        "model_seed": int(os.environ.get("FLUXD_TINY_SEED", "7")),
        "preset": "quant",
        "model_files": model_hashes(model_dir),
        "gguf_files": files,
        "flux_types": flux_cases,
        "t5_types": t5_cases,
        "lora": {"types": LORA_TYPES, "scales": LORA_SCALES, "seed": 11, "rank": 4},
    }
    with open(os.path.join(out_dir, "cases.json"), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
