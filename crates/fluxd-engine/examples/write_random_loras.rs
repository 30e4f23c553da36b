//! Writes one random adapter for the tiny transformer in every layout the writer knows, for the
//! LoRA reference fixtures: `cargo run -p fluxd-engine --example write_random_loras -- OUT_DIR [SEED]`.

use std::path::PathBuf;

use fluxd_engine::lora::{write_random_lora, LoraFormat};
use fluxd_engine::transformer::FluxConfig;

/// Rank of the fixture adapter.
pub const RANK: usize = 4;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(
        args.next()
            .ok_or("usage: write_random_loras OUT_DIR [SEED]")?,
    );
    let seed: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(11);
    std::fs::create_dir_all(&out)?;
    let all = |_: &str| true;
    // diffusers' kohya converter splits single-block linear1 with FLUX.1's hard-coded widths
    // ([3072]*3 + [12288]) and ignores alpha on the final layer (a "TODO: alphas" in
    // `_convert_kohya_flux_lora_to_diffusers`; kohya's trainer applies it), so the kohya fixture
    // leaves those modules out.
    let kohya_safe = |m: &str| !m.ends_with(".linear1") && !m.starts_with("final_layer.");
    let layouts: [(&str, LoraFormat, &dyn Fn(&str) -> bool); 5] = [
        ("peft", LoraFormat::Diffusers, &all),
        ("bfl", LoraFormat::Bfl, &all),
        ("aitoolkit", LoraFormat::AiToolkit, &all),
        ("kohya", LoraFormat::Kohya, &kohya_safe),
        ("bfl_kohya_safe", LoraFormat::Bfl, &kohya_safe),
    ];
    for (name, format, keep) in layouts {
        let path = out.join(format!("{name}.safetensors"));
        write_random_lora(&path, format, &FluxConfig::tiny(), RANK, seed, keep)?;
    }
    println!("{}", out.display());
    Ok(())
}
