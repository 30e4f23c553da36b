#!/usr/bin/env bash
# Full-size proof on a CPU (issue G, requirement 6): random weights with the exact shapes of
# FLUX.1-dev (19 double + 38 single blocks, hidden 3072) as GGUF Q4_0, T5 v1.1 XXL as GGUF Q4_0
# (city96's layouts, written one tensor at a time by the `write_random_gguf` example), CLIP-L
# (ComfyUI's clip_l.safetensors layout) and FLUX's VAE (diffusers folder), then one
# `fluxd generate` step at 256² with 64 T5 tokens. It prints load time, text encoding, step and
# decode times, and peak RSS against the files' sizes. A script, not a CI test: it writes ~10 GB
# and needs ~12 GB of memory and a few minutes per phase on 2 cores.
#
# Usage: scripts/fullsize-cpu.sh [REF_VENV]
# Env: TYPE (Q4_0) for the transformer, T5_TYPE (Q4_0), WORK (a temporary folder, removed at the
#      end unless KEEP=1), PROFILE (dev: the test profile, engine and dependencies at opt-level 3;
#      or release).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
ref=$("$root/scripts/reference/setup_venv.sh" "${1:-$root/.venv-ref}")
TYPE=${TYPE:-Q4_0}; T5_TYPE=${T5_TYPE:-Q4_0}; PROFILE=${PROFILE:-dev}
work=${WORK:-$(mktemp -d)}
mkdir -p "$work"
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
log() { printf '== %s  %s\n' "$(date +%T)" "$*"; }

cargo build --quiet --locked --profile "$PROFILE" -p fluxd --bins
cargo build --quiet --locked --profile "$PROFILE" -p fluxd-engine --example write_random_gguf
dir=$PROFILE; [ "$PROFILE" = dev ] && dir=debug
fluxd=target/$dir/fluxd
writer=target/$dir/examples/write_random_gguf

log "model folder (tokenizers, scheduler), CLIP-L's config and FLUX's VAE, full size"
"$fluxd" model init-tiny "$work/model" --seed 1 >/dev/null
"$ref/bin/python" - "$work/model" <<'EOF'
import json, shutil, sys
from pathlib import Path
from diffusers import AutoencoderKL
model = Path(sys.argv[1])
# A single CLIP file takes its shapes from the folder's text_encoder/config.json: CLIP-L's, as in
# FLUX.1-dev (the tiny tokenizer's ids stay below its vocabulary).
clip_cfg = model / "text_encoder" / "config.json"
cfg = json.loads(clip_cfg.read_text())
cfg.update(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
           num_attention_heads=12, projection_dim=768)
clip_cfg.write_text(json.dumps(cfg, indent=2))
# Likewise T5 v1.1 XXL's shapes for the T5 file (the tiny tokenizer's ids stay below 32128).
t5_cfg = model / "text_encoder_2" / "config.json"
cfg = json.loads(t5_cfg.read_text())
cfg.update(d_model=4096, d_ff=10240, d_kv=64, num_layers=24, num_decoder_layers=24, num_heads=64,
           vocab_size=32128, feed_forward_proj="gated-gelu")
t5_cfg.write_text(json.dumps(cfg, indent=2))
vae_dir = model / "vae"
cfg = {k: v for k, v in json.loads((vae_dir / "config.json").read_text()).items() if not k.startswith("_")}
# FLUX.1-dev's vae/config.json: four levels, two ResNet blocks each, 32 groups.
cfg.update(block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32)
vae = AutoencoderKL(**cfg)
shutil.rmtree(vae_dir)
vae.save_pretrained(vae_dir, safe_serialization=True)
print(f"VAE: {sum(p.numel() for p in vae.parameters()) / 1e6:.1f} M parameters")
EOF

log "CLIP-L, full size (ComfyUI layout)"
"$ref/bin/python" scripts/reference/gguf_bench.py encoders "$work/enc" >/dev/null
clip="$work/enc/clip_l.safetensors"

log "T5 v1.1 XXL as GGUF $T5_TYPE"
t5="$work/t5-v1_1-xxl-encoder-$T5_TYPE.gguf"
/usr/bin/time -f "   %e s, peak RSS %M KiB" "$writer" t5 "$t5" "$T5_TYPE"

log "FLUX.1-dev transformer as GGUF $TYPE"
flux="$work/flux1-dev-$TYPE.gguf"
/usr/bin/time -f "   %e s, peak RSS %M KiB" "$writer" flux "$flux" "$TYPE" 19 38
# The transformer's config beside it (FLUX.1-dev's), which a GGUF file is checked against.
cp "$work/config.json" "$work/model/transformer/config.json"

log "fluxd generate: 1 step at 256², 64 T5 tokens"
/usr/bin/time -f "%M" -o "$work/rss_kib" "$fluxd" generate --model "$work/model" \
    --transformer "$flux" --t5 "$t5" --clip "$clip" --prompt "a red fox in the snow" \
    --width 256 --height 256 --steps 1 --max-sequence-length 64 --output "$work/out.png" \
    --timings-json "$work/timings.json"

"$ref/bin/python" - "$work" "$flux" "$t5" "$clip" <<'EOF'
import json, os, sys
work, files = sys.argv[1], sys.argv[2:]
t = json.load(open(os.path.join(work, "timings.json")))
rss = int(open(os.path.join(work, "rss_kib")).read().split()[-1]) * 1024
sizes = {os.path.basename(f): os.path.getsize(f) for f in files}
vae = sum(os.path.getsize(os.path.join(work, "model/vae", f)) for f in os.listdir(os.path.join(work, "model/vae")))
sizes["vae/"] = vae
total = sum(sizes.values())
gib = lambda b: f"{b / 2**30:.2f} GiB"
for name, size in sizes.items():
    print(f"   {name:40} {gib(size)}")
print(f"   {'files, together':40} {gib(total)}")
print(json.dumps(t, indent=1))
print(f"peak RSS {gib(rss)} = {rss / total:.2f} x the files")
EOF
