//! Writes the tiny tokenizers into `<dir>/tokenizer` and `<dir>/tokenizer_2`, for
//! `scripts/reference/tokenizer_fixtures.py` to load them with transformers.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: tiny_tokenizers <dir>")?,
    );
    let vocab = fluxd_engine::tokenizer::write_tiny_tokenizers(
        &dir.join("tokenizer"),
        &dir.join("tokenizer_2"),
    )?;
    println!("{vocab:?}");
    Ok(())
}
