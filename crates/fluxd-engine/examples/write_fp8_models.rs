//! Writes what the fp8 reference fixtures are made from (the tiny model, its transformer as an
//! f32 BFL file and in every fp8 layout, a ComfyUI full checkpoint):
//! `cargo run -p fluxd-engine --example write_fp8_models -- OUT_DIR [SEED]`.

use std::path::PathBuf;

use fluxd_engine::fp8::write_fp8_reference_models;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(
        args.next()
            .ok_or("usage: write_fp8_models OUT_DIR [SEED]")?,
    );
    let seed: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(7);
    write_fp8_reference_models(&out, seed)?;
    println!("{}", out.display());
    Ok(())
}
