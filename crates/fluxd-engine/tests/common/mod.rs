//! What the reference tests (`*_reference.rs`) share: each compares fluxd with a reference
//! implementation on fixtures that `scripts/reference/` made from the tiny model, so each finds
//! and reads those fixtures, writes the tiny model again, checks it has not drifted from the one
//! the fixtures were made from, and measures differences the same way.
//!
//! Every test file is its own crate and uses only some of this, hence the `#[allow(dead_code)]`
//! where it is included.
//!
//! Each test process runs the engine on one code path ([`EnginePath`], from `FLUXD_TEST_PATH`):
//! by default f32 on the fused CPU kernels; `scripts/test.sh` runs the reference tests a second
//! time with `FLUXD_TEST_PATH=gpu`, the path a GPU runs (bf16, candle's ops, the fused CPU
//! kernels off), where each comparison uses its bf16 tolerance ([`Tol`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use fluxd_engine::model_dir::ModelPaths;
use fluxd_engine::pipeline::{FluxPipeline, GenerateParams, TextEmbeddings, Timings};
use fluxd_engine::tiny_model::{write_tiny_model, TinyPreset};
use fluxd_engine::transformer::FluxTransformer;
use fluxd_engine::weights::WeightFiles;
use image::RgbImage;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The code path a test process runs the engine on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnginePath {
    /// f32 on the fused CPU kernels (`FLUXD_TEST_PATH` unset or `cpu`).
    Cpu,
    /// What a GPU runs, on the CPU: bf16 weights and activations, candle's ops, the fused CPU
    /// kernels off (`FLUXD_TEST_PATH=gpu`).
    Gpu,
}

impl EnginePath {
    /// The dtype models are loaded in on this path.
    pub fn dtype(self) -> DType {
        match self {
            EnginePath::Cpu => DType::F32,
            EnginePath::Gpu => DType::BF16,
        }
    }
}

/// This process's path, read from `FLUXD_TEST_PATH` once; on the GPU path it switches the fused
/// CPU kernels off for the whole process before any model runs.
pub fn engine_path() -> EnginePath {
    static PATH: OnceLock<EnginePath> = OnceLock::new();
    *PATH.get_or_init(|| {
        let path = match std::env::var("FLUXD_TEST_PATH").as_deref() {
            Ok("gpu") => EnginePath::Gpu,
            Ok("cpu") | Ok("") | Err(_) => EnginePath::Cpu,
            Ok(other) => panic!("FLUXD_TEST_PATH={other}: expected `cpu` or `gpu`"),
        };
        fluxd_engine::set_fused_cpu_kernels(path == EnginePath::Cpu);
        eprintln!("engine path: {path:?}");
        path
    })
}

/// The dtype of this process's models ([`EnginePath::dtype`]).
pub fn dtype() -> DType {
    engine_path().dtype()
}

/// A tolerance for each engine path: the f32 one measured on the fused CPU kernels, the bf16
/// one measured on the GPU path (each constant's comment gives what was observed).
#[derive(Debug, Clone, Copy)]
pub struct Tol<T> {
    /// On [`EnginePath::Cpu`].
    pub f32: T,
    /// On [`EnginePath::Gpu`].
    pub bf16: T,
}

impl<T: Copy> Tol<T> {
    /// The tolerance of this process's path.
    pub fn get(&self) -> T {
        match engine_path() {
            EnginePath::Cpu => self.f32,
            EnginePath::Gpu => self.bf16,
        }
    }
}

/// `tests/fixtures/<suite>` of this crate, where `make_fixtures.sh` writes that suite's files.
pub fn fixtures(suite: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(suite)
}

/// A fixture's JSON file, parsed.
pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} parses: {e}", path.display()))
}

/// A fixture image as 8-bit RGB.
pub fn png(path: &Path) -> RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8()
}

/// One tensor of a fixture file, as f32 on the CPU where every comparison happens.
pub fn tensor(files: &WeightFiles, name: &str) -> Tensor {
    files.get(name, DType::F32, &Device::Cpu).expect(name)
}

/// One transformer forward on a fixture file's inputs (`img`, `img_ids`, `txt`, `txt_ids`,
/// `timestep`, `guidance`, `pooled`, as `transformer_fixtures.forward_inputs` draws them), in
/// this path's dtype ([`dtype`]); the output as f32.
pub fn fixture_forward(model: &FluxTransformer, fx: &WeightFiles) -> Tensor {
    let t = |n: &str| tensor(fx, n).to_dtype(dtype()).expect("dtype");
    let out = model
        .forward(
            &t("img"),
            &t("img_ids"),
            &t("txt"),
            &t("txt_ids"),
            &t("timestep"),
            Some(&t("guidance")),
            &t("pooled"),
        )
        .expect("forward");
    out.to_dtype(DType::F32).expect("f32")
}

/// The tensors of one fixture file.
pub fn open_tensors(path: &Path) -> WeightFiles {
    WeightFiles::open(&[path.to_path_buf()]).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The request of one case of a fixture file. The scripts name the T5 length
/// `max_sequence_length` (as FluxPipeline does) or, in the LoRA cases, `msl`.
pub fn generate_params(case: &Value, msl_key: &str) -> GenerateParams {
    GenerateParams {
        prompt: case["prompt"].as_str().expect("prompt").to_string(),
        width: case["width"].as_u64().expect("width") as usize,
        height: case["height"].as_u64().expect("height") as usize,
        steps: case["steps"].as_u64().expect("steps") as usize,
        guidance: case["guidance"].as_f64().expect("guidance") as f32,
        seed: case["seed"].as_u64().expect("seed"),
        max_sequence_length: case[msl_key].as_u64().expect(msl_key) as usize,
    }
}

/// One case of a suite's `cases.json`: a request and the reference's tensors for it, in
/// `<name>.safetensors` beside it.
pub struct Case {
    /// The case's name, which also names its fixture files.
    pub name: String,
    /// The request the reference ran.
    pub params: GenerateParams,
    /// The case's own entry, for the fields only one suite has.
    pub json: Value,
    tensors: WeightFiles,
}

impl Case {
    /// The reference's tensor `name` for this case.
    pub fn tensor(&self, name: &str) -> Tensor {
        tensor(&self.tensors, name)
    }
}

/// A suite of fixtures made from the tiny model, `tests/fixtures/<name>/`: its `cases.json`
/// holds the cases, the model's seed and the sha256 of each of the model's files.
pub struct Suite(pub &'static str);

impl Suite {
    /// A file of the suite.
    pub fn path(&self, file: &str) -> PathBuf {
        fixtures(self.0).join(file)
    }

    /// The suite's `cases.json`.
    pub fn meta(&self) -> Value {
        read_json(&self.path("cases.json"))
    }

    /// A PNG of the suite as 8-bit RGB.
    pub fn png(&self, file: &str) -> RgbImage {
        png(&self.path(file))
    }

    /// The suite's cases.
    pub fn cases(&self) -> Vec<Case> {
        self.meta()["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .map(|c| {
                let name = c["name"].as_str().expect("name").to_string();
                Case {
                    params: generate_params(c, "max_sequence_length"),
                    tensors: open_tensors(&self.path(&format!("{name}.safetensors"))),
                    json: c.clone(),
                    name,
                }
            })
            .collect()
    }

    /// The tiny model the fixtures were made from, written again.
    pub fn model(&self) -> &'static Path {
        tiny_model(self.meta()["model_seed"].as_u64().expect("model_seed"))
    }

    /// The pipeline on [`Suite::model`] in this process's dtype ([`dtype`]), loaded once per
    /// test binary and shared by its tests.
    pub fn pipeline(&self) -> &'static FluxPipeline {
        static P: OnceLock<FluxPipeline> = OnceLock::new();
        let model = self.model();
        P.get_or_init(|| load_pipeline(model, dtype()))
    }

    /// Checks the model written again is byte-identical to the one the fixtures were made from:
    /// every file of `model_files` (a path under the model folder → its sha256).
    pub fn assert_model_files(&self) {
        let model = self.model();
        for (rel, hash) in self.meta()["model_files"].as_object().expect("model_files") {
            assert_sha256(&model.join(rel), hash, rel);
        }
    }
}

/// Lower-case hex sha256, as Python's `hashlib.sha256(...).hexdigest()` writes it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Fails unless the file at `path` has the sha256 the fixture scripts recorded (`hash`): a file
/// that differs from the one the reference saw makes every comparison after it meaningless.
pub fn assert_sha256(path: &Path, hash: &Value, what: &str) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let got = sha256_hex(&bytes);
    assert_eq!(
        Some(got.as_str()),
        hash.as_str(),
        "{what} differs: regenerate the fixtures"
    );
}

/// A path of this test binary under the temp folder: the test binaries run at the same time,
/// each in its own process, hence the process id.
pub fn scratch_dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("fluxd-{tag}-{}", std::process::id()))
}

/// The tiny model `fluxd model init-tiny --seed <seed>` writes, written once per test binary.
/// The seed is kept beside the folder so that a second caller asking for another seed fails
/// instead of silently getting the first model.
pub fn tiny_model(seed: u64) -> &'static Path {
    static DIR: OnceLock<(u64, PathBuf)> = OnceLock::new();
    let (written, dir) = DIR.get_or_init(|| {
        let dir = scratch_dir("ref-model");
        write_tiny_model(&dir, seed, TinyPreset::Tiny).expect("init-tiny");
        (seed, dir)
    });
    assert_eq!(*written, seed, "one tiny model per test binary");
    dir
}

/// The pipeline on the model folder `model`, in `dtype`, on the CPU (on this process's
/// [`EnginePath`]).
pub fn load_pipeline(model: &Path, dtype: DType) -> FluxPipeline {
    engine_path();
    let paths = ModelPaths::resolve(model, None, None).expect("layout");
    FluxPipeline::load(&paths, &Device::Cpu, dtype, |_| {}).expect("load")
}

/// The final latents of `p` from `text`, without progress reports or cancellation.
pub fn denoise(pipe: &FluxPipeline, p: &GenerateParams, text: &TextEmbeddings) -> Tensor {
    pipe.denoise(
        p,
        text,
        &mut Timings::default(),
        (&mut |_| {}, None),
        &AtomicBool::new(false),
    )
    .expect("denoise")
}

/// Largest |a − b| over all elements, compared in f32; the shapes must be the same.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.to_dtype(DType::F32).expect("f32");
    let b = b.to_dtype(DType::F32).expect("f32");
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b)
        .expect("sub")
        .abs()
        .expect("abs")
        .flatten_all()
        .expect("flat")
        .max(0)
        .expect("max")
        .to_scalar::<f32>()
        .expect("scalar")
}

/// ‖a − b‖₂ / ‖b‖₂ over all elements, in f64: the error measure that does not hinge on one
/// outlier (METHOD.md: bf16 operands land between 1e-3 and 1e-2 on one product).
pub fn rel_l2(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).expect("f64");
    let b = b.to_dtype(DType::F64).expect("f64");
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let norm = |t: &Tensor| {
        t.sqr()
            .and_then(|t| t.sum_all())
            .and_then(|t| t.to_scalar::<f64>())
            .expect("norm")
            .sqrt()
    };
    norm(&(&a - &b).expect("sub")) / norm(&b).max(f64::MIN_POSITIVE)
}

/// Mean difference between two images' 8-bit channel values; the sizes must be the same.
pub fn mean_level_diff(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions(), "sizes differ");
    let sum: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    sum as f64 / a.as_raw().len().max(1) as f64
}

/// Largest difference between two images' 8-bit channel values; the sizes must be the same.
pub fn max_level_diff(a: &RgbImage, b: &RgbImage) -> u8 {
    assert_eq!(a.dimensions(), b.dimensions(), "sizes differ");
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}
