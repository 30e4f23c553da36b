"""Token-id fixtures for fluxd's CLIP and T5 tokenizers, computed by transformers.

Usage (with the reference venv):
    cargo run -p fluxd-engine --example tiny_tokenizers /tmp/tiny-tok
    /work/venvs/ref/bin/python scripts/reference/tokenizer_fixtures.py /tmp/tiny-tok \
        crates/fluxd-engine/tests/fixtures/tokenizer/tiny_ids.json

The tiny tokenizer folders are loaded the way diffusers' FluxPipeline loads FLUX.1-dev's
(`CLIPTokenizer.from_pretrained(tokenizer/)`, `T5TokenizerFast.from_pretrained(tokenizer_2/)`)
and called with the pipeline's arguments (`_get_clip_prompt_embeds`, `_get_t5_prompt_embeds`).
The T5 folder is also loaded from `spiece.model` alone (no tokenizer.json) and checked against the
sentencepiece library itself. Files are fingerprinted with FNV-1a 64 so that the Rust tests can
check that training regenerates byte-identical files.
"""

import json
import os
import shutil
import sys
import tempfile

import sentencepiece
from transformers import CLIPTokenizer, T5TokenizerFast

FILES = [
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer_2/tokenizer.json",
    "tokenizer_2/spiece.model",
    "tokenizer_2/special_tokens_map.json",
    "tokenizer_2/tokenizer_config.json",
]

LONG = (
    "A breathtaking panoramic view of an ancient walled city perched on a cliff above a turquoise "
    "sea, with winding cobblestone streets, terracotta roofs, bustling markets full of spices and "
    "silk, fishermen mending nets in the harbor, seagulls circling overhead, golden afternoon "
    "light casting long shadows, intricate architectural details, ultra realistic, 8k resolution, "
    "award winning photography, shot on a medium format camera with a 45mm lens at f/8."
)

PROMPTS = [
    "",
    "a photo of a cat",
    "A Photo Of A CAT On The MOON",
    "Hello, world! What's up? It's 5 o'clock; isn't it?",
    "  lots   of\t\twhitespace \n\n here  ",
    "1234567890 and 3.14159 and 2024-11-24",
    "Café crème brûlée, naïve façade in Zürich",
    "emoji 🐱🚀✨ in a prompt 👍🏽",
    "中文提示词 日本語のテキスト 한국어",
    "Tom &amp; Jerry &lt;3 &quot;quoted&quot;",
    "don't won't they're we've I'm you'll he'd",
    "snake_case-and-kebab/path.with.dots (parens) [brackets] {braces}",
    "UPPERCASE ÀÉÎÕÜ Straße ΣΑΣ ﬁne Ｆｕｌｌ ①",
    "special <|endoftext|> and <|startoftext|> and </s> and <extra_id_0> inside",
    LONG,
    " ".join([LONG] * 6),
]

T5_LENGTHS = [512, 32]


def fnv1a64(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def trimmed(ids, pad_id):
    """Padded ids without the trailing run of pad ids (the Rust test pads them back)."""
    ids = list(ids)
    while ids and ids[-1] == pad_id:
        ids.pop()
    return ids


def main():
    tiny, out = sys.argv[1], sys.argv[2]
    clip = CLIPTokenizer.from_pretrained(os.path.join(tiny, "tokenizer"))
    t5 = T5TokenizerFast.from_pretrained(os.path.join(tiny, "tokenizer_2"))
    # The same folder without tokenizer.json: transformers converts spiece.model.
    spm_dir = tempfile.mkdtemp()
    for name in ["spiece.model", "special_tokens_map.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(tiny, "tokenizer_2", name), spm_dir)
    t5_spm = T5TokenizerFast.from_pretrained(spm_dir)
    sp = sentencepiece.SentencePieceProcessor(model_file=os.path.join(tiny, "tokenizer_2", "spiece.model"))
    assert len(t5_spm) == len(t5), (len(t5_spm), len(t5))

    cases = []
    spm_disagree = []
    for prompt in PROMPTS:
        # FluxPipeline._get_clip_prompt_embeds
        clip_ids = clip(
            prompt,
            padding="max_length",
            max_length=clip.model_max_length,
            truncation=True,
            return_overflowing_tokens=False,
            return_length=False,
            return_tensors="pt",
        ).input_ids[0].tolist()
        case = {"prompt": prompt, "clip": trimmed(clip_ids, clip.pad_token_id)}
        case["clip_count"] = clip(prompt, padding="longest", return_tensors="pt").input_ids.shape[-1]
        for n in T5_LENGTHS:
            # FluxPipeline._get_t5_prompt_embeds
            kwargs = dict(
                padding="max_length",
                max_length=n,
                truncation=True,
                return_length=False,
                return_overflowing_tokens=False,
                return_tensors="pt",
            )
            ids = t5(prompt, **kwargs).input_ids[0].tolist()
            ids_spm = t5_spm(prompt, **kwargs).input_ids[0].tolist()
            assert ids == ids_spm, (prompt, ids, ids_spm)
            assert len(ids) == n
            case[f"t5_{n}"] = trimmed(ids, t5.pad_token_id)
        untruncated = t5(prompt, padding="longest", return_tensors="pt").input_ids
        case["t5_count"] = untruncated.shape[-1]
        sp_ids = sp.encode(prompt) + [sp.eos_id()]
        if sp_ids != untruncated[0].tolist():
            spm_disagree.append(prompt)
        cases.append(case)

    fixture = {
        "generated_by": "scripts/reference/tokenizer_fixtures.py",
        "file_fnv1a64": {f: fnv1a64(open(os.path.join(tiny, f), "rb").read()) for f in FILES},
        "clip_vocab_size": len(clip),
        "clip_max_length": clip.model_max_length,
        "clip_pad_id": clip.pad_token_id,
        "t5_vocab_size": len(t5),
        "t5_pad_id": t5.pad_token_id,
        "cases": cases,
    }
    with open(out, "w") as f:
        json.dump(fixture, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"{len(cases)} prompts; clip vocab {len(clip)}, t5 vocab {len(t5)}")
    print(f"sentencepiece library disagrees with transformers on {len(spm_disagree)} prompts:")
    for p in spm_disagree:
        print("  ", repr(p[:60]), sp.encode(p, out_type=str)[:12])


if __name__ == "__main__":
    main()
