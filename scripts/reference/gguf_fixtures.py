"""Reference outputs for fluxd's GGUF loading: diffusers and transformers running the
*dequantized* weights of GGUF files that fluxd wrote (`fluxd model quantize`), one per type.

Usage: python gguf_fixtures.py GGUF_DIR OUT_DIR

GGUF_DIR (made by make_gguf_fixtures.sh) holds `model/` (`fluxd model init-tiny --preset quant`),
`flux-<TYPE>.gguf` and `t5-<TYPE>.gguf` for each type, and `loras/peft.safetensors`. For each
transformer file the gguf package (pinned in requirements.txt) dequantizes every tensor to
float32 (ggml's own formulas, in f32: diffusers' and ComfyUI-GGUF's loaders multiply in fp16),
the BFL names are mapped as diffusers' single-file conversion maps them
(`transformer_fixtures.bfl_to_diffusers`), and `FluxTransformer2DModel` (float32, CPU) runs one
forward on fixed inputs. The same forward on the original float32 weights measures what
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
from transformer_fixtures import forward, forward_inputs, transformer_from_bfl  # noqa: E402

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


def flux_from_gguf(path, cfg):
    return transformer_from_bfl(dequantized_state_dict(path), cfg)


def effect(a, b):
    d = (a - b).abs().max().item()
    return {"max_abs": d, "rel": d / b.abs().max().item()}


def main():
    gdir, out_dir = sys.argv[1:3]
    torch.set_num_threads(2)
    os.makedirs(out_dir, exist_ok=True)
    model_dir = os.path.join(gdir, "model")
    cfg = FluxTransformer2DModel.load_config(os.path.join(model_dir, "transformer"))
    # A 64x64 px image: 8x8 latents, packed 2x2 -> 4x4 = 16 tokens.
    x = forward_inputs(cfg["in_channels"], cfg["joint_attention_dim"], cfg["pooled_projection_dim"],
                       rows=4, cols=4)
    base = FluxTransformer2DModel.from_pretrained(
        os.path.join(model_dir, "transformer"), torch_dtype=torch.float32).eval()
    tensors = dict(x)
    tensors["out_f32"] = forward(base, x)
    files, flux_cases = {}, {}
    lora = os.path.join(gdir, "loras", "peft.safetensors")
    files["loras/peft.safetensors"] = sha256(lora)
    for ty in FLUX_TYPES:
        name = f"flux-{ty}.gguf"
        files[name] = sha256(os.path.join(gdir, name))
        model = flux_from_gguf(os.path.join(gdir, name), cfg)
        out = forward(model, x)
        tensors[f"out_{ty}"] = out
        flux_cases[ty] = {"quantization_effect": effect(out, tensors["out_f32"])}
        if ty in LORA_TYPES:
            model.load_lora_adapter(lora, adapter_name="fixture", prefix="transformer")
            for s in LORA_SCALES:
                tensors[f"out_{ty}_lora_{s}"] = forward(model, x, lora_scale=s)
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
