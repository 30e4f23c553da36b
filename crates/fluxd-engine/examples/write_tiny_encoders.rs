//! Writes the tiny random text encoders and VAE into a folder, for the reference script
//! `scripts/reference/encoder_fixtures.py` to load with transformers and diffusers.
//!
//! Usage: `cargo run -p fluxd-engine --example write_tiny_encoders -- <dir> [vocab] [seed]`
//! writes `<dir>/text_encoder`, `<dir>/text_encoder_2`, `<dir>/vae` and `<dir>/ae.safetensors`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .ok_or("usage: write_tiny_encoders <dir> [vocab] [seed]")?,
    );
    let vocab: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let seed: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(0);
    fluxd_engine::text_encoders::write_tiny_clip(&dir.join("text_encoder"), vocab, seed)?;
    fluxd_engine::text_encoders::write_tiny_t5(&dir.join("text_encoder_2"), vocab, seed)?;
    fluxd_engine::vae::write_tiny_vae(&dir.join("vae"), seed)?;
    fluxd_engine::vae::write_tiny_ae_bfl(&dir.join("ae.safetensors"), seed)?;
    println!("{}", dir.display());
    Ok(())
}
