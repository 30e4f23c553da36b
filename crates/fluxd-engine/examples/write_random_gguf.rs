//! Writes a random FLUX transformer with FLUX.1's real widths (hidden 3072 = 24 heads of 128,
//! T5 width 4096, CLIP width 768) and a chosen number of blocks as a GGUF file in city96's
//! layout, one tensor at a time, plus its diffusers `config.json` beside it (for diffusers'
//! single-file loader). Used by `scripts/bench-gguf.sh`.
//!
//! Usage: `write_random_gguf OUT.gguf TYPE DOUBLE_BLOCKS SINGLE_BLOCKS [SEED]`

use std::path::PathBuf;

use fluxd_engine::gguf::{parse_type, write_random_flux};
use fluxd_engine::transformer::FluxConfig;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out, ty, double, single, rest @ ..] = args.as_slice() else {
        return Err(
            "usage: write_random_gguf OUT.gguf TYPE DOUBLE_BLOCKS SINGLE_BLOCKS [SEED]".into(),
        );
    };
    let ty = parse_type(ty).ok_or_else(|| format!("unknown type {ty}"))?;
    let cfg = FluxConfig {
        num_layers: double.parse()?,
        num_single_layers: single.parse()?,
        ..FluxConfig::dev()
    };
    let seed = rest.first().map(|s| s.parse()).transpose()?.unwrap_or(0);
    let out = PathBuf::from(out);
    let report = write_random_flux(&out, &cfg, seed, ty, &mut |_, _| {})?;
    let config = out.with_file_name("config.json");
    std::fs::write(
        &config,
        serde_json::to_string_pretty(&cfg.to_diffusers_json())?,
    )?;
    eprintln!(
        "{}: {:?}, {} bytes",
        out.display(),
        report.types,
        report.bytes
    );
    Ok(())
}
