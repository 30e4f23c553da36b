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
    let cpu0 = process_cpu_seconds();
    let mut times = bench_forward(&cfg, img, txt, iters)?;
    let cpu = process_cpu_seconds() - cpu0;
    times.sort_by(f64::total_cmp);
    let ms: Vec<String> = times.iter().map(|t| format!("{:.1}", t * 1e3)).collect();
    println!(
        "fluxd forward ({img} img + {txt} txt tokens): min {:.1} ms, median {:.1} ms, all [{}] ms",
        times[0] * 1e3,
        times[times.len() / 2] * 1e3,
        ms.join(", ")
    );
    // CPU time includes building the random model (a few hundred ms for `medium`).
    println!(
        "process CPU time {:.0} ms (incl. model setup), {iters} forwards",
        cpu * 1e3
    );
    Ok(())
}

/// utime + stime of this process from /proc (Linux), in seconds; 0 elsewhere.
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of /proc/pid/stat (counted after the `(comm)` field: 11 and 12).
    (ticks(11) + ticks(12)) / 100.0
}
