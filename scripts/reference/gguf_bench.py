"""The peers' side of scripts/bench-gguf.sh: one FLUX denoising step on the same GGUF file.

  encoders OUT_DIR
      (reference venv) random full-size CLIP-L (ComfyUI's clip_l layout) and a random tiny
      autoencoder of FLUX's latent width (diffusers AutoencoderTiny, taef1's layout) for
      stable-diffusion.cpp, which hard-codes CLIP-L's size and needs a decoder to run; neither
      is timed (the full VAE would take minutes per image on a CPU).
  diffusers GGUF CONFIG_DIR WIDTH HEIGHT TXT RUNS THREADS
      (reference venv) diffusers' own GGUF path (`from_single_file` + `GGUFQuantizationConfig`,
      compute in float32 on the CPU): one transformer forward on random inputs of the same sizes
      fluxd uses, RUNS times after a warm-up. Prints JSON.
  sdcpp GGUF CLIP TAE WIDTH HEIGHT RUNS THREADS
      (stable-diffusion-cpp-python venv) generate_image with 1 Euler step, RUNS + 1 times; no T5,
      so stable-diffusion.cpp feeds 256 zero text tokens (conditioner.hpp). Its log (stderr)
      says "sampling completed, taking X s" per image, which the shell script reads.
"""

import json
import os
import statistics
import sys
import time


def encoders(out_dir):
    import torch
    from diffusers import AutoencoderTiny
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    os.makedirs(out_dir, exist_ok=True)
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
        projection_dim=768))
    # ComfyUI's clip_l.safetensors names (transformers 5 drops the `text_model.` level).
    state = {k if k.startswith("text_model.") else f"text_model.{k}": v.contiguous()
             for k, v in clip.state_dict().items()}
    save_file(state, os.path.join(out_dir, "clip_l.safetensors"))
    tae = AutoencoderTiny(latent_channels=16)
    save_file({k: v.contiguous() for k, v in tae.state_dict().items()},
              os.path.join(out_dir, "taef1.safetensors"))


def diffusers_step(gguf, config_dir, width, height, txt, runs, threads):
    import torch
    from diffusers import FluxTransformer2DModel, GGUFQuantizationConfig

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = FluxTransformer2DModel.from_single_file(
        gguf, config=config_dir,
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32),
        torch_dtype=torch.float32).eval()
    load_ms = (time.perf_counter() - t0) * 1e3
    cfg = model.config
    rows, cols = height // 16, width // 16
    g = torch.Generator().manual_seed(0)
    img = torch.randn(1, rows * cols, cfg.in_channels, generator=g)
    enc = torch.randn(1, txt, cfg.joint_attention_dim, generator=g)
    pooled = torch.randn(1, cfg.pooled_projection_dim, generator=g)
    img_ids = torch.zeros(rows, cols, 3)
    img_ids[..., 1] = torch.arange(rows)[:, None]
    img_ids[..., 2] = torch.arange(cols)[None, :]
    args = dict(hidden_states=img, encoder_hidden_states=enc, pooled_projections=pooled,
                timestep=torch.tensor([0.7]), img_ids=img_ids.reshape(-1, 3),
                txt_ids=torch.zeros(txt, 3), guidance=torch.tensor([3.5]), return_dict=False)
    times = []
    with torch.no_grad():
        for i in range(runs + 1):
            t = time.perf_counter()
            model(**args)
            if i > 0:
                times.append((time.perf_counter() - t) * 1e3)
    print(json.dumps({"load_ms": load_ms, "step_ms": times,
                      "step_ms_median": statistics.median(times)}))


def sdcpp_step(gguf, clip, tae, width, height, runs, threads):
    from stable_diffusion_cpp import StableDiffusion

    sd = StableDiffusion(diffusion_model_path=gguf, clip_l_path=clip, taesd_path=tae,
                         n_threads=threads, verbose=True)
    for i in range(runs + 1):
        sd.generate_image(prompt="a red fox", width=width, height=height, sample_steps=1,
                          cfg_scale=1.0, guidance=3.5, sample_method="euler", seed=i)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "encoders":
        encoders(args[0])
    elif cmd == "diffusers":
        gguf, cfg = args[:2]
        diffusers_step(gguf, cfg, *map(int, args[2:7]))
    elif cmd == "sdcpp":
        gguf, clip, tae = args[:3]
        sdcpp_step(gguf, clip, tae, *map(int, args[3:7]))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
