//! Writes the LoRA reference fixtures' adapter files (one random adapter for the tiny transformer
//! in every layout): `cargo run -p fluxd-engine --example write_random_loras -- OUT_DIR [SEED]
//! [PRESET]` (PRESET `tiny`, the default, or `quant`: the GGUF fixtures' model).

use std::path::PathBuf;

use fluxd_engine::lora::write_reference_loras;
use fluxd_engine::tiny_model::TinyPreset;

/// Rank of the fixture adapter.
const RANK: usize = 4;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(
        args.next()
            .ok_or("usage: write_random_loras OUT_DIR [SEED] [PRESET]")?,
    );
    let seed: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(11);
    let preset = match args.next().as_deref() {
        None | Some("tiny") => TinyPreset::Tiny,
        Some("quant") => TinyPreset::Quant,
        Some(other) => return Err(format!("unknown preset `{other}`").into()),
    };
    std::fs::create_dir_all(&out)?;
    write_reference_loras(&out, &preset.transformer_config(), RANK, seed)?;
    println!("{}", out.display());
    Ok(())
}
