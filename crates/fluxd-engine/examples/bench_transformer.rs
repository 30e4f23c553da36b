//! Times one f32 CPU forward of a random FLUX transformer (`transformer::bench_forward`).
//! Compare with `scripts/reference/transformer_bench.py` (diffusers on the same weights).
//!
//! Usage: `RAYON_NUM_THREADS=2 bench_transformer [tiny|medium] [img_tokens] [txt_tokens] [iters]`

use fluxd_engine::transformer::{bench_forward, FluxConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match args.first().map(String::as_str).unwrap_or("medium") {
        "tiny" => FluxConfig::tiny(),
        "medium" => FluxConfig::medium(),
        other => return Err(format!("unknown preset {other}").into()),
    };
    let num = |i: usize, default: usize| -> Result<usize, std::num::ParseIntError> {
        args.get(i).map_or(Ok(default), |s| s.parse())
    };
    let (img, txt, iters) = (num(1, 1024)?, num(2, 128)?, num(3, 5)?);
    let mut times = bench_forward(&cfg, img, txt, iters)?;
    times.sort_by(f64::total_cmp);
    let ms: Vec<String> = times.iter().map(|t| format!("{:.1}", t * 1e3)).collect();
    println!(
        "fluxd forward ({img} img + {txt} txt tokens): median {:.1} ms, all [{}] ms",
        times[times.len() / 2] * 1e3,
        ms.join(", ")
    );
    Ok(())
}
