//! Writes random weights with real widths as GGUF files, one tensor at a time (nothing is held
//! whole, so full-size files are written in little memory):
//!
//! - `write_random_gguf flux OUT.gguf TYPE DOUBLE_BLOCKS SINGLE_BLOCKS [SEED]`: a FLUX transformer
//!   with FLUX.1's widths (hidden 3072 = 24 heads of 128, T5 width 4096, CLIP width 768) and the
//!   given number of blocks (19 and 38: FLUX.1-dev) in city96's layout, plus its diffusers
//!   `config.json` beside it (for diffusers' single-file loader). Used by `scripts/bench-gguf.sh`.
//! - `write_random_gguf t5 OUT.gguf TYPE [SEED]`: a T5 v1.1 XXL encoder in llama.cpp's
//!   `t5encoder` layout (city96's T5 GGUF files). Used by `scripts/fullsize-cpu.sh`.

use std::path::PathBuf;

use fluxd_engine::gguf::{parse_type, write_random_flux, write_random_t5};
use fluxd_engine::text_encoders::T5Config;
use fluxd_engine::transformer::FluxConfig;

const USAGE: &str = "usage: write_random_gguf flux OUT.gguf TYPE DOUBLE_BLOCKS SINGLE_BLOCKS [SEED]\n       write_random_gguf t5 OUT.gguf TYPE [SEED]";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seed = |s: Option<&String>| -> Result<u64, std::num::ParseIntError> {
        s.map(|s| s.parse()).transpose().map(|s| s.unwrap_or(0))
    };
    let (out, report) = match args.as_slice() {
        [model, out, ty, double, single, rest @ ..] if model == "flux" => {
            let ty = parse_type(ty).ok_or_else(|| format!("unknown type {ty}"))?;
            let cfg = FluxConfig {
                num_layers: double.parse()?,
                num_single_layers: single.parse()?,
                ..FluxConfig::dev()
            };
            let out = PathBuf::from(out);
            let report = write_random_flux(&out, &cfg, seed(rest.first())?, ty, &mut |_, _| {})?;
            std::fs::write(
                out.with_file_name("config.json"),
                serde_json::to_string_pretty(&cfg.to_diffusers_json())?,
            )?;
            (out, report)
        }
        [model, out, ty, rest @ ..] if model == "t5" => {
            let ty = parse_type(ty).ok_or_else(|| format!("unknown type {ty}"))?;
            let out = PathBuf::from(out);
            let cfg = T5Config::xxl();
            let report = write_random_t5(&out, &cfg, seed(rest.first())?, ty, &mut |_, _| {})?;
            (out, report)
        }
        _ => return Err(USAGE.into()),
    };
    eprintln!(
        "{}: {:?}, {} bytes",
        out.display(),
        report.types,
        report.bytes
    );
    Ok(())
}
