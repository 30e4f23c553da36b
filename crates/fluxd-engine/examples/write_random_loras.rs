//! Writes the LoRA reference fixtures' adapter files (one random adapter for the tiny transformer
//! in every layout): `cargo run -p fluxd-engine --example write_random_loras -- OUT_DIR [SEED]`.

use std::path::PathBuf;

use fluxd_engine::lora::write_reference_loras;
use fluxd_engine::transformer::FluxConfig;

/// Rank of the fixture adapter.
const RANK: usize = 4;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(
        args.next()
            .ok_or("usage: write_random_loras OUT_DIR [SEED]")?,
    );
    let seed: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(11);
    std::fs::create_dir_all(&out)?;
    write_reference_loras(&out, &FluxConfig::tiny(), RANK, seed)?;
    println!("{}", out.display());
    Ok(())
}
