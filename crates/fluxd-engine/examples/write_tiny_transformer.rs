//! Writes a random FLUX transformer as a diffusers `transformer/` folder, for the reference
//! scripts (`scripts/reference/transformer_*.py`).
//!
//! Usage: `write_tiny_transformer <out_dir> <tiny|medium> <seed> [shards]`

use std::path::PathBuf;

use fluxd_engine::transformer::{write_tiny_diffusers, FluxConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out, preset, seed, rest @ ..] = args.as_slice() else {
        return Err("usage: write_tiny_transformer <out_dir> <tiny|medium> <seed> [shards]".into());
    };
    let cfg = match preset.as_str() {
        "tiny" => FluxConfig::tiny(),
        "medium" => FluxConfig::medium(),
        other => return Err(format!("unknown preset {other}").into()),
    };
    let shards = rest.first().map(|s| s.parse()).transpose()?.unwrap_or(2);
    write_tiny_diffusers(&PathBuf::from(out), &cfg, seed.parse()?, shards)?;
    Ok(())
}
