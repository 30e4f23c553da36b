//! The plan against the real FLUX.1-dev / T5-XXL shapes (header-only files, see `shapes`), and
//! the issue's goals: FLUX.1-dev Q8_0 + T5 Q8_0 on a 24 GB card, bf16 + T5 bf16 on 40 GB,
//! Q4_0 on a 24 GiB CPU.

use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::DType;
use safetensors::Dtype as StDtype;

use super::shapes::{flux_transformer, t5_xxl, write_flux1_dev_headers, write_header_only};
use super::*;
use crate::model_dir::{BundledWeights, ModelPaths};
use crate::transformer::FluxConfig;

const GIB: u64 = 1 << 30;

/// The API's largest request: 1440×1440 (fluxd-api `SIDE_MAX`), 512 T5 tokens.
fn largest() -> Workload {
    Workload {
        width: 1440,
        height: 1440,
        t5_tokens: 512,
        image_prompt_tokens: 0,
    }
}

fn dev_folder() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("fluxd-plan-dev-{}", std::process::id()));
        write_flux1_dev_headers(&dir).expect("headers");
        let q8 = Stored::Gguf(GgmlDType::Q8_0);
        let (f16, f32) = (Stored::Gguf(GgmlDType::F16), Stored::Gguf(GgmlDType::F32));
        let cfg = FluxConfig::dev();
        write_header_only(
            &dir.join("flux1-dev-Q8_0.gguf"),
            &flux_transformer(&cfg, q8, f16, f32),
            "flux",
        )
        .expect("q8");
        let q4 = Stored::Gguf(GgmlDType::Q4_0);
        write_header_only(
            &dir.join("flux1-dev-Q4_0.gguf"),
            &flux_transformer(&cfg, q4, f16, f32),
            "flux",
        )
        .expect("q4");
        write_header_only(&dir.join("t5-Q8_0.gguf"), &t5_xxl(q8, f32), "t5encoder").expect("t5");
        let fp8 = Stored::Safetensors(StDtype::F8_E4M3);
        let bf16 = Stored::Safetensors(StDtype::BF16);
        write_header_only(
            &dir.join("flux1-dev-fp8.safetensors"),
            &flux_transformer(&cfg, fp8, fp8, bf16),
            "",
        )
        .expect("fp8");
        dir
    })
}

fn paths(transformer: &str, t5: Option<&str>) -> ModelPaths {
    let dir = dev_folder();
    let mut p = ModelPaths::resolve(dir, Some(&dir.join(transformer)), None).expect("paths");
    p.t5_weights = t5.map(|f| BundledWeights {
        file: dir.join(f),
        prefix: String::new(),
    });
    p
}

fn plan(p: &ModelPaths, o: &PlanOptions) -> MemoryPlan {
    plan_model(p, o, &ExtraComponents::default()).expect("plan")
}

#[test]
fn real_shapes_give_the_known_sizes() {
    let o = PlanOptions::new(PlanDevice::Cuda(0), DType::BF16, largest());
    let bf16 = plan(&paths("flux1-dev.safetensors", None), &o);
    eprintln!("{bf16}");
    let c = |p: &MemoryPlan, n: &str| {
        p.components
            .iter()
            .find(|c| c.name == n)
            .cloned()
            .expect("component")
    };
    // 11.90 B parameters in bf16 (engine-facts §5: 23.8 GB), T5-XXL's encoder 4.76 B (9.5 GB),
    // CLIP-L 123 M (0.25 GB).
    let t = c(&bf16, "transformer");
    assert!(
        (23_700_000_000..23_900_000_000).contains(&t.weight_bytes),
        "{t:?}"
    );
    assert_eq!(t.weight_bytes, t.file_bytes);
    let t5 = c(&bf16, "T5");
    assert!(
        (9_400_000_000..9_600_000_000).contains(&t5.weight_bytes),
        "{t5:?}"
    );
    let clip = c(&bf16, "CLIP");
    assert!(
        (240_000_000..250_000_000).contains(&clip.weight_bytes),
        "{clip:?}"
    );

    // fp8 stays fp8: half of bf16; Q8_0 (34 bytes per 32 weights) a little more than that.
    let fp8 = plan(&paths("flux1-dev-fp8.safetensors", None), &o);
    let t8 = c(&fp8, "transformer");
    assert_eq!(t8.weight_bytes, t8.file_bytes);
    assert!(t8.weight_bytes * 2 < t.weight_bytes + 100_000_000);
    let q8 = plan(&paths("flux1-dev-Q8_0.gguf", Some("t5-Q8_0.gguf")), &o);
    let tq = c(&q8, "transformer");
    assert!(
        (12_500_000_000..12_900_000_000).contains(&tq.weight_bytes),
        "{tq:?}"
    );
    assert_eq!(c(&q8, "T5").format, "Q8_0+F32");
    // `--weights-dtype fp8` on the bf16 file: linear weights 1 byte each.
    let mut o8 = o.clone();
    o8.weights = WeightsDtype::Fp8;
    let t_store = c(
        &plan(&paths("flux1-dev.safetensors", None), &o8),
        "transformer",
    );
    assert!(
        t_store.weight_bytes < t8.weight_bytes + 10_000_000,
        "{t_store:?}"
    );
}

#[test]
fn goals_of_the_issue() {
    let gpu = |w| PlanOptions::new(PlanDevice::Cuda(0), DType::BF16, w);
    // FLUX.1-dev Q8_0 + T5 Q8_0 on a 24 GB card.
    let q8 = paths("flux1-dev-Q8_0.gguf", Some("t5-Q8_0.gguf"));
    // The blocked attention keeps the transformer's working memory under 2 GB; the whole score
    // matrix would take 18 GB.
    let working = |o: &PlanOptions, name: &str| {
        plan(&q8, o)
            .components
            .iter()
            .find(|c| c.name == name)
            .map_or(0, |c| c.working_bytes)
    };
    let mut full = gpu(largest());
    full.attention = Attention::FullScores;
    assert!(working(&gpu(largest()), "transformer") < 2_000_000_000);
    assert!(working(&full, "transformer") > 18_000_000_000);
    // The VAE's convolutions a strip at a time: its working memory at 1440² is its feature maps
    // and one strip, not the 9.6 GB whole-image unfold of its 256-channel level.
    let vae = working(&gpu(largest()), "VAE decoder");
    assert!(vae < 4 * GIB, "{}", gib(vae));
    let ready = plan(&q8, &gpu(largest())).total(PlanDevice::Cuda(0));
    eprintln!("Q8_0 + T5 Q8_0 at 1440²: {}", gib(ready.peak()));
    assert!(ready.peak() <= 24 * GIB, "{}", gib(ready.peak()));

    // bf16 + T5 bf16 on 40 GB.
    let bf16 = paths("flux1-dev.safetensors", None);
    let ready = plan(&bf16, &gpu(largest())).total(PlanDevice::Cuda(0));
    eprintln!("bf16 + T5 bf16 at 1440²: {}", gib(ready.peak()));
    assert!(ready.peak() <= 40 * GIB, "{}", gib(ready.peak()));
    // And it does not fit a 24 GB card, even with T5 on the CPU.
    let mut o = gpu(largest());
    o.text_encoders = (PlanDevice::Cpu, DType::BF16);
    assert!(plan(&bf16, &o).total(PlanDevice::Cuda(0)).peak() > 24 * GIB);

    // `--weights-dtype fp8` with the text encoders on the CPU: 11 GiB of weights on the card.
    let mut o = gpu(largest());
    o.weights = WeightsDtype::Fp8;
    o.text_encoders = (PlanDevice::Cpu, DType::F32);
    let fp8 = plan(&bf16, &o);
    let replan = |w: Workload| {
        let mut o = o.clone();
        o.workload = w;
        plan_model(&bf16, &o, &ExtraComponents::default())
    };
    let gb24 = vec![(
        PlanDevice::Cuda(0),
        Budget {
            bytes: 24_000_000_000,
            source: "--memory".into(),
        },
    )];
    let refusal = fp8.check(&gb24, &replan).err().map(|e| e.to_string());
    let on_gpu = fp8.total(PlanDevice::Cuda(0));
    eprintln!(
        "fp8, text encoders on the CPU, at 1440²: {} weights, {} at peak; 24 GB: {refusal:?}",
        gib(on_gpu.weights),
        gib(on_gpu.peak())
    );
    assert!(on_gpu.weights < 12 * GIB);

    // On a CPU with 24 GiB: Q4_0 + T5 Q8_0, everything in f32 on the fused path.
    let q4 = paths("flux1-dev-Q4_0.gguf", Some("t5-Q8_0.gguf"));
    let cpu = plan(
        &q4,
        &PlanOptions::new(PlanDevice::Cpu, DType::F32, largest()),
    );
    eprintln!("{cpu}");
    assert!(cpu.total(PlanDevice::Cpu).peak() <= 24 * GIB);
}

#[test]
fn refusal_says_what_would_fit() {
    let q8 = paths("flux1-dev-Q8_0.gguf", Some("t5-Q8_0.gguf"));
    let o = PlanOptions::new(PlanDevice::Cuda(0), DType::BF16, largest());
    let p = plan(&q8, &o);
    let replan = |w: Workload| {
        let mut o = o.clone();
        o.workload = w;
        plan_model(&q8, &o, &ExtraComponents::default())
    };
    let budget = |gib: u64| {
        vec![(
            PlanDevice::Cuda(0),
            Budget {
                bytes: gib * GIB,
                source: "--memory".into(),
            },
        )]
    };
    assert!(p.check(&budget(80), &replan).is_ok());
    // 16.9 GiB of weights fit 20 GiB; the 1440² working memory (21.1 GiB at peak) does not.
    let msg = p
        .check(&budget(20), &replan)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        msg.contains("cuda:0 needs") && msg.contains("would fit"),
        "{msg}"
    );
    assert!(msg.contains("transformer") && msg.contains("Q8_0"), "{msg}");
    let msg = p
        .check(&budget(8), &replan)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("the weights alone do not fit"), "{msg}");
}

#[test]
fn sizes_parse_in_both_units() -> Result<()> {
    assert_eq!(parse_size("24GB")?, 24_000_000_000);
    assert_eq!(parse_size("24 GiB")?, 24 << 30);
    assert_eq!(parse_size("1.5gib")?, 3 << 29);
    assert_eq!(parse_size("800MiB")?, 800 << 20);
    assert_eq!(parse_size("1024")?, 1024);
    assert!(parse_size("lots").is_err());
    assert!(parse_size("3 parsecs").is_err());
    Ok(())
}
