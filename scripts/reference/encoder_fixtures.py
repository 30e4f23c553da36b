"""Reference fixtures for fluxd's text encoders and VAE decoder.

Writes the tiny random models with fluxd's own writers (the `write_tiny_encoders` example),
loads them with transformers (CLIPTextModel, T5EncoderModel) and diffusers (AutoencoderKL) in
float32 on the CPU, runs fixed inputs through them and stores inputs and (parts of) outputs in
crates/fluxd-engine/tests/fixtures/encoders/*.json, which the Rust tests compare against.

Run from the repository root:  /work/venvs/ref/bin/python scripts/reference/encoder_fixtures.py
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "crates", "fluxd-engine", "tests", "fixtures", "encoders")
VOCAB = 1000
SEED = 0


def floats(t):
    return [float("%.8g" % v) for v in t.detach().to(torch.float64).flatten().tolist()]


def dump(name, obj):
    path = os.path.join(OUT, name)
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))
        f.write("\n")
    print(path, os.path.getsize(path), "bytes")


def load_checked(cls, path):
    model, info = cls.from_pretrained(path, torch_dtype=torch.float32, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:
        sys.exit(f"{cls.__name__} {path}: {bad}")
    return model.eval()


def clip_fixture(tmp, rng):
    from transformers import CLIPTextModel

    model = load_checked(CLIPTextModel, os.path.join(tmp, "text_encoder"))
    # Row 0 like the FLUX tokenizer output: bos, words, the highest id (eos) and pad to 77.
    # Row 1 has an id tie for the maximum, to pin argmax's "first maximum" rule.
    ids = np.full((2, 77), 1, dtype=np.int64)
    ids[:, 0] = 0
    ids[0, 1:12] = rng.integers(3, VOCAB - 1, 11)
    ids[0, 12] = VOCAB - 1
    ids[1, 1:30] = rng.integers(3, VOCAB - 1, 29)
    ids[1, 20] = VOCAB - 1
    ids[1, 25] = VOCAB - 1
    x = torch.from_numpy(ids)
    with torch.no_grad():
        out = model(input_ids=x)
    fixture = {
        "vocab": VOCAB,
        "seed": SEED,
        "input_ids": ids.tolist(),
        "pooled": floats(out.pooler_output),
        "hidden_first8": floats(out.last_hidden_state[:, :8]),
        "hidden_abs_sum": float(out.last_hidden_state.abs().sum()),
    }
    # The non-legacy pooling (eos_token_id != 2): first occurrence of eos_token_id.
    alt = os.path.join(tmp, "text_encoder_eos")
    shutil.copytree(os.path.join(tmp, "text_encoder"), alt)
    with open(os.path.join(alt, "config.json")) as f:
        cfg = json.load(f)
    cfg["eos_token_id"] = 7
    with open(os.path.join(alt, "config.json"), "w") as f:
        json.dump(cfg, f)
    alt_ids = ids.copy()
    alt_ids[0, 5] = 7
    alt_ids[0, 9] = 7
    alt_ids[1, 40] = 7
    model = load_checked(CLIPTextModel, alt)
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(alt_ids))
    fixture["eos_token_id"] = 7
    fixture["eos_input_ids"] = alt_ids.tolist()
    fixture["eos_pooled"] = floats(out.pooler_output)
    dump("clip.json", fixture)


def t5_fixture(tmp, rng):
    from transformers import T5EncoderModel
    from transformers.models.t5.modeling_t5 import T5Attention

    model = load_checked(T5EncoderModel, os.path.join(tmp, "text_encoder_2"))
    # FLUX pads with 0 and passes no attention mask: pads are attended.
    ids = np.zeros((2, 40), dtype=np.int64)
    ids[0, :17] = rng.integers(2, VOCAB, 17)
    ids[0, 17] = 1
    ids[1, :40] = rng.integers(2, VOCAB, 40)
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids)).last_hidden_state
    rel = torch.arange(-600, 601)
    buckets = T5Attention._relative_position_bucket(rel, bidirectional=True, num_buckets=32, max_distance=128)
    dump(
        "t5.json",
        {
            "vocab": VOCAB,
            "seed": SEED,
            "input_ids": ids.tolist(),
            "hidden_every5": floats(out[:, ::5]),
            "hidden_abs_sum": float(out.abs().sum()),
            "bucket_rel_from": -600,
            "buckets_32_128": buckets.tolist(),
        },
    )


def vae_fixture(tmp, rng):
    from diffusers import AutoencoderKL

    model = load_checked(AutoencoderKL, os.path.join(tmp, "vae"))
    latents = rng.standard_normal((1, 16, 4, 6)).astype(np.float32)
    z = torch.from_numpy(latents)
    with torch.no_grad():
        # As FluxPipeline does after unpacking: z / scaling_factor + shift_factor, then decode.
        z = z / model.config.scaling_factor + model.config.shift_factor
        img = model.decode(z, return_dict=False)[0]
    dump(
        "vae.json",
        {
            "seed": SEED,
            "latents": floats(torch.from_numpy(latents)),
            "latents_shape": list(latents.shape),
            "image_shape": list(img.shape),
            "image_every2": floats(img[:, :, ::2, ::2]),
            "image_abs_sum": float(img.abs().sum()),
        },
    )


def check_bfl_layout(tmp):
    """diffusers' own single-file converter must turn our BFL-layout ae.safetensors into exactly
    the diffusers-layout weights (names, shapes and values)."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    from safetensors.torch import load_file

    ae = load_file(os.path.join(tmp, "ae.safetensors"))
    ref = load_file(os.path.join(tmp, "vae", "diffusion_pytorch_model.safetensors"))
    with open(os.path.join(tmp, "vae", "config.json")) as f:
        cfg = json.load(f)
    conv = convert_ldm_vae_checkpoint(ae, cfg)
    if set(conv) != set(ref):
        sys.exit(f"ae.safetensors converts to other names: {sorted(set(conv) ^ set(ref))[:5]}")
    for k, v in ref.items():
        if conv[k].shape != v.shape or not torch.equal(conv[k], v):
            sys.exit(f"ae.safetensors: {k} differs after conversion")
    print("ae.safetensors converts exactly to the diffusers VAE")


def main():
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="fluxd-enc-")
    try:
        subprocess.run(
            ["cargo", "run", "-q", "-p", "fluxd-engine", "--example", "write_tiny_encoders", "--", tmp, str(VOCAB), str(SEED)],
            cwd=ROOT,
            check=True,
        )
        rng = np.random.default_rng(1234)
        clip_fixture(tmp, rng)
        t5_fixture(tmp, rng)
        vae_fixture(tmp, rng)
        check_bfl_layout(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
