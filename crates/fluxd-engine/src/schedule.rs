//! The sigma/timestep schedule and the Euler step of diffusers' `FluxPipeline` with
//! `FlowMatchEulerDiscreteScheduler` (diffusers 0.42.1), reproduced to the last bit.
//!
//! References: `pipelines/flux/pipeline_flux.py` (`calculate_shift`, `retrieve_timesteps`, the
//! denoising loop) and `schedulers/scheduling_flow_match_euler_discrete.py` (`set_timesteps`,
//! `time_shift`, `step`). The dtypes matter for bit-exactness: the pipeline's
//! `np.linspace(1, 1/N, N)` is float64, the scheduler casts it to float32 and applies the time
//! shift in numpy float32 (Python floats such as `exp(mu)` become float32 operands under NEP 50),
//! then torch float32 gives `timesteps = sigmas * 1000`.

use std::path::Path;

use candle_core::{DType, Tensor};
use half::{bf16, f16};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// The scheduler class this module implements.
const SCHEDULER_CLASS: &str = "FlowMatchEulerDiscreteScheduler";

/// How `set_timesteps` shifts sigmas when dynamic shifting is on (`time_shift_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeShiftType {
    /// `e^mu / (e^mu + (1/t - 1))`.
    #[default]
    Exponential,
    /// `mu / (mu + (1/t - 1))`.
    Linear,
}

/// `scheduler/scheduler_config.json` of a diffusers FLUX model. Defaults are those of
/// `FlowMatchEulerDiscreteScheduler.__init__`; options we do not implement are rejected by
/// [`SchedulerConfig::validate`].
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct SchedulerConfig {
    /// `_class_name`; must be `FlowMatchEulerDiscreteScheduler` when present.
    #[serde(
        rename = "_class_name",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub class_name: Option<String>,
    /// Training timesteps; `timesteps = sigmas * num_train_timesteps`.
    #[serde(default = "default_num_train_timesteps")]
    pub num_train_timesteps: u32,
    /// Static shift, used only without dynamic shifting.
    #[serde(default = "default_shift")]
    pub shift: f64,
    /// Resolution-dependent shift with `mu = calculate_shift(image_seq_len, ...)`.
    #[serde(default)]
    pub use_dynamic_shifting: bool,
    /// `mu` at `base_image_seq_len`.
    #[serde(default = "default_base_shift")]
    pub base_shift: Option<f64>,
    /// `mu` at `max_image_seq_len`.
    #[serde(default = "default_max_shift")]
    pub max_shift: Option<f64>,
    /// Sequence length where `mu = base_shift`.
    #[serde(default = "default_base_image_seq_len")]
    pub base_image_seq_len: u64,
    /// Sequence length where `mu = max_shift`.
    #[serde(default = "default_max_image_seq_len")]
    pub max_image_seq_len: u64,
    /// Exponential or linear time shift.
    #[serde(default)]
    pub time_shift_type: TimeShiftType,
    /// Not implemented (must be false).
    #[serde(default)]
    pub invert_sigmas: bool,
    /// Not implemented (must be null or 0).
    #[serde(default)]
    pub shift_terminal: Option<f64>,
    /// Not implemented (must be false).
    #[serde(default)]
    pub use_karras_sigmas: bool,
    /// Not implemented (must be false).
    #[serde(default)]
    pub use_exponential_sigmas: bool,
    /// Not implemented (must be false).
    #[serde(default)]
    pub use_beta_sigmas: bool,
    /// Not implemented (must be false): it would draw fresh noise at every step.
    #[serde(default)]
    pub stochastic_sampling: bool,
    /// Not implemented (must be absent or false): the pipeline would then ignore its sigmas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_flow_sigmas: Option<bool>,
}

fn default_num_train_timesteps() -> u32 {
    1000
}
fn default_shift() -> f64 {
    1.0
}
fn default_base_shift() -> Option<f64> {
    Some(0.5)
}
fn default_max_shift() -> Option<f64> {
    Some(1.15)
}
fn default_base_image_seq_len() -> u64 {
    256
}
fn default_max_image_seq_len() -> u64 {
    4096
}

impl SchedulerConfig {
    /// Reads and validates `scheduler_config.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
        let cfg: Self =
            serde_json::from_str(&text).map_err(|e| EngineError::config(path, e.to_string()))?;
        cfg.validate()
            .map_err(|msg| EngineError::config(path, msg))?;
        Ok(cfg)
    }

    /// FLUX.1-dev's `scheduler/scheduler_config.json`.
    pub fn flux_dev() -> Self {
        Self {
            class_name: Some(SCHEDULER_CLASS.to_string()),
            num_train_timesteps: 1000,
            shift: 3.0,
            use_dynamic_shifting: true,
            base_shift: Some(0.5),
            max_shift: Some(1.15),
            base_image_seq_len: 256,
            max_image_seq_len: 4096,
            time_shift_type: TimeShiftType::Exponential,
            invert_sigmas: false,
            shift_terminal: None,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            stochastic_sampling: false,
            use_flow_sigmas: None,
        }
    }

    /// The config as diffusers writes it (all init parameters), for `scheduler_config.json`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = serde_json::json!({
            "_class_name": SCHEDULER_CLASS,
            "_diffusers_version": "0.42.1",
        });
        if let (Some(map), Ok(serde_json::Value::Object(fields))) =
            (value.as_object_mut(), serde_json::to_value(self))
        {
            map.extend(fields.into_iter().filter(|(k, _)| k != "_class_name"));
        }
        value
    }

    /// Checks that the config only asks for what [`flux_schedule`] implements; the error says
    /// which option is unsupported.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if let Some(class) = &self.class_name {
            if class != SCHEDULER_CLASS {
                return Err(format!(
                    "scheduler class {class} is not supported (fluxd implements {SCHEDULER_CLASS})"
                ));
            }
        }
        let unsupported = [
            ("invert_sigmas", self.invert_sigmas),
            (
                "shift_terminal",
                self.shift_terminal.is_some_and(|v| v != 0.0),
            ),
            ("use_karras_sigmas", self.use_karras_sigmas),
            ("use_exponential_sigmas", self.use_exponential_sigmas),
            ("use_beta_sigmas", self.use_beta_sigmas),
            ("stochastic_sampling", self.stochastic_sampling),
            ("use_flow_sigmas", self.use_flow_sigmas == Some(true)),
        ];
        if let Some((name, _)) = unsupported.iter().find(|(_, on)| *on) {
            return Err(format!(
                "scheduler option `{name}` is set, which fluxd does not implement"
            ));
        }
        if self.num_train_timesteps == 0 {
            return Err("num_train_timesteps must be positive".to_string());
        }
        if self.use_dynamic_shifting {
            if self.base_shift.is_none() || self.max_shift.is_none() {
                return Err("use_dynamic_shifting needs base_shift and max_shift".to_string());
            }
            if self.max_image_seq_len == self.base_image_seq_len {
                return Err("max_image_seq_len must differ from base_image_seq_len".to_string());
            }
        }
        Ok(())
    }

    /// `calculate_shift` of `pipeline_flux.py`, in f64 like Python.
    fn mu(&self, image_seq_len: usize) -> f64 {
        let base_shift = self.base_shift.unwrap_or(0.5);
        let max_shift = self.max_shift.unwrap_or(1.15);
        // Python: int - int, then float / int.
        let m = (max_shift - base_shift)
            / (self.max_image_seq_len as f64 - self.base_image_seq_len as f64);
        let b = base_shift - m * self.base_image_seq_len as f64;
        image_seq_len as f64 * m + b
    }
}

/// The schedule a FluxPipeline run uses.
#[derive(Clone, Debug, PartialEq)]
pub struct FluxSchedule {
    /// `scheduler.sigmas`: `steps + 1` values, the last one 0.
    pub sigmas: Vec<f32>,
    /// `scheduler.timesteps` (`sigmas * 1000`): `steps` values.
    pub timesteps: Vec<f32>,
}

impl FluxSchedule {
    /// The `timestep` argument the pipeline passes to the transformer at each step:
    /// `t.to(latents.dtype) / 1000`, computed in that dtype (torch divides reduced floats in f32
    /// and rounds back). Values are returned as f32, each exactly representable in `dtype`.
    /// (The transformer multiplies by 1000 again, in its own dtype.)
    pub fn transformer_timesteps(&self, dtype: DType) -> Result<Vec<f32>> {
        let round: fn(f32) -> f32 = match dtype {
            DType::F32 => |v| v,
            DType::BF16 => |v| bf16::from_f32(v).to_f32(),
            DType::F16 => |v| f16::from_f32(v).to_f32(),
            other => {
                return Err(EngineError::InvalidInput(format!(
                    "latent dtype {other:?} is not supported for timesteps"
                )))
            }
        };
        Ok(self
            .timesteps
            .iter()
            .map(|&t| round(round(t) / 1000.0))
            .collect())
    }
}

/// The sigmas and timesteps of `FluxPipeline.__call__` for `steps` inference steps and
/// `image_seq_len` image tokens (`(height/16)·(width/16)`), bit-identical to
/// `pipe.scheduler.sigmas` / `pipe.scheduler.timesteps`.
pub fn flux_schedule(
    cfg: &SchedulerConfig,
    steps: usize,
    image_seq_len: usize,
) -> Result<FluxSchedule> {
    cfg.validate()
        .map_err(|msg| EngineError::InvalidInput(format!("scheduler config: {msg}")))?;
    if steps == 0 {
        return Err(EngineError::InvalidInput(
            "the number of steps must be at least 1".into(),
        ));
    }
    // pipeline_flux.py: `np.linspace(1.0, 1 / N, N)` in float64: `i * step + start`, last = stop.
    let stop = 1.0 / steps as f64;
    let step = if steps > 1 {
        (stop - 1.0) / (steps - 1) as f64
    } else {
        0.0
    };
    let linspace = (0..steps).map(|i| {
        if steps > 1 && i == steps - 1 {
            stop
        } else {
            i as f64 * step + 1.0
        }
    });
    // set_timesteps: `np.array(sigmas).astype(np.float32)`, then the shift in float32.
    let sigmas32 = linspace.map(|s| s as f32);
    let mut sigmas: Vec<f32> = if cfg.use_dynamic_shifting {
        let mu = cfg.mu(image_seq_len);
        // `time_shift(mu, 1.0, t)`: `(1 / t - 1) ** 1.0` is exact, and the Python float
        // `exp(mu)` (or `mu`) enters as a float32 operand.
        let a = match cfg.time_shift_type {
            TimeShiftType::Exponential => mu.exp() as f32,
            TimeShiftType::Linear => mu as f32,
        };
        sigmas32.map(|t| a / (a + (1.0 / t - 1.0))).collect()
    } else {
        // `shift * sigmas / (1 + (shift - 1) * sigmas)`; `shift - 1` is a Python float op.
        let shift = cfg.shift as f32;
        let shift_m1 = (cfg.shift - 1.0) as f32;
        sigmas32.map(|s| shift * s / (1.0 + shift_m1 * s)).collect()
    };
    let train = cfg.num_train_timesteps as f32;
    let timesteps = sigmas.iter().map(|&s| s * train).collect();
    sigmas.push(0.0);
    Ok(FluxSchedule { sigmas, timesteps })
}

/// One Euler step `x + (sigma_next - sigma) · v` as `FlowMatchEulerDiscreteScheduler.step`
/// computes it on the CPU: the sample is upcast to f32, `dt = sigma_next - sigma` in f32, and the
/// result is cast to the velocity's dtype. For an f32 velocity everything is f32. For a bf16/f16
/// velocity torch evaluates `dt * v` in that dtype (dt rounded to it, the product computed in f32
/// and rounded), then adds it to the f32 sample. (On CUDA torch keeps dt in f32 for the product;
/// the last bit of a reduced-precision step can differ there.)
pub fn euler_step(
    latents: &Tensor,
    velocity: &Tensor,
    sigma: f32,
    sigma_next: f32,
) -> Result<Tensor> {
    if latents.dims() != velocity.dims() {
        return Err(EngineError::InvalidInput(format!(
            "euler step: latents {:?} and velocity {:?} differ in shape",
            latents.dims(),
            velocity.dims()
        )));
    }
    let dtype = velocity.dtype();
    let dt = sigma_next - sigma;
    let dt = match dtype {
        DType::F32 => dt,
        DType::BF16 => bf16::from_f32(dt).to_f32(),
        DType::F16 => f16::from_f32(dt).to_f32(),
        other => {
            return Err(EngineError::InvalidInput(format!(
                "euler step: velocity dtype {other:?} is not supported"
            )))
        }
    };
    let dt = Tensor::new(dt, velocity.device())?;
    // A plain multiply (not `affine`, whose `+ 0` would turn -0.0 into +0.0).
    let mut delta = velocity.to_dtype(DType::F32)?.broadcast_mul(&dt)?;
    if dtype != DType::F32 {
        delta = delta.to_dtype(dtype)?.to_dtype(DType::F32)?;
    }
    Ok((latents.to_dtype(DType::F32)? + delta)?.to_dtype(dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use serde_json::Value;

    /// Written by `scripts/reference/noise_fixtures.py` from diffusers 0.42.1.
    const FIXTURE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/noise/schedule.json"
    ));

    fn fixture() -> Value {
        serde_json::from_str(FIXTURE).expect("fixture parses")
    }

    fn json_f32(v: &Value) -> Vec<f32> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_u64)
                    .map(|b| f32::from_bits(b as u32))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    fn config(fx: &Value, name: &str) -> SchedulerConfig {
        let cfg: SchedulerConfig =
            serde_json::from_value(fx["configs"][name].clone()).expect("config parses");
        assert_eq!(cfg.validate(), Ok(()));
        cfg
    }

    #[test]
    fn schedules_match_diffusers_bit_for_bit() -> Result<()> {
        let fx = fixture();
        let cases = fx["cases"].as_array().expect("cases");
        let mut dev_cases = 0;
        for case in cases {
            let name = case["config"].as_str().expect("config");
            let cfg = config(&fx, name);
            let steps = case["steps"].as_u64().expect("steps") as usize;
            let seq = case["image_seq_len"].as_u64().expect("seq") as usize;
            let what = format!("{name} steps {steps} seq {seq}");
            let s = flux_schedule(&cfg, steps, seq)?;
            assert_eq!(
                bits(&s.sigmas),
                bits(&json_f32(&case["sigmas"])),
                "sigmas {what}"
            );
            assert_eq!(
                bits(&s.timesteps),
                bits(&json_f32(&case["timesteps"])),
                "timesteps {what}"
            );
            for (label, dtype) in [
                ("f32", DType::F32),
                ("bf16", DType::BF16),
                ("f16", DType::F16),
            ] {
                let want = json_f32(&case["model_timesteps"][label]);
                assert_eq!(
                    bits(&s.transformer_timesteps(dtype)?),
                    bits(&want),
                    "{label} {what}"
                );
            }
            if name == "flux_dev" {
                dev_cases += 1;
                // FLUX.1-dev's config as we ship it gives the same schedule.
                assert_eq!(flux_schedule(&SchedulerConfig::flux_dev(), steps, seq)?, s);
            }
        }
        assert_eq!(dev_cases, 40);
        Ok(())
    }

    #[test]
    fn euler_step_matches_scheduler_step() -> Result<()> {
        let fx = fixture();
        for case in fx["steps"].as_array().expect("steps") {
            let dtype = match case["dtype"].as_str() {
                Some("bf16") => DType::BF16,
                _ => DType::F32,
            };
            let shape: Vec<usize> = case["shape"]
                .as_array()
                .expect("shape")
                .iter()
                .filter_map(Value::as_u64)
                .map(|v| v as usize)
                .collect();
            let tensor = |k: &str| -> Result<Tensor> {
                Ok(
                    Tensor::from_vec(json_f32(&case[k]), shape.as_slice(), &Device::Cpu)?
                        .to_dtype(dtype)?,
                )
            };
            let sigma = f32::from_bits(case["sigma"].as_u64().expect("sigma") as u32);
            let sigma_next = f32::from_bits(case["sigma_next"].as_u64().expect("sigma") as u32);
            let out = euler_step(&tensor("sample")?, &tensor("velocity")?, sigma, sigma_next)?;
            assert_eq!(out.dtype(), dtype);
            let got = out.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            assert_eq!(bits(&got), bits(&json_f32(&case["out"])), "step {case}");
        }
        Ok(())
    }

    #[test]
    fn euler_step_rejects_mismatched_shapes() -> Result<()> {
        let a = Tensor::zeros((1, 4, 8), DType::F32, &Device::Cpu)?;
        let b = Tensor::zeros((1, 8, 4), DType::F32, &Device::Cpu)?;
        assert!(euler_step(&a, &b, 1.0, 0.5).is_err());
        Ok(())
    }

    #[test]
    fn shapes_and_end_points() -> Result<()> {
        let s = flux_schedule(&SchedulerConfig::flux_dev(), 28, 4096)?;
        assert_eq!((s.sigmas.len(), s.timesteps.len()), (29, 28));
        assert_eq!(
            (s.sigmas[0], s.sigmas[28], s.timesteps[0]),
            (1.0, 0.0, 1000.0)
        );
        assert!(s.sigmas.windows(2).all(|w| w[0] > w[1]));
        assert!(flux_schedule(&SchedulerConfig::flux_dev(), 0, 4096).is_err());
        Ok(())
    }

    #[test]
    fn config_file_round_trip_and_rejections() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("fluxd-sched-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| EngineError::io(&dir, e))?;
        let path = dir.join("scheduler_config.json");
        let json = SchedulerConfig::flux_dev().to_json();
        assert_eq!(json["_class_name"], "FlowMatchEulerDiscreteScheduler");
        assert_eq!(json["shift"], 3.0);
        assert_eq!(json["base_image_seq_len"], 256);
        crate::tiny_init::write_json(&path, &json)?;
        assert_eq!(SchedulerConfig::load(&path)?, SchedulerConfig::flux_dev());

        // Schnell's file: defaults fill the rest.
        std::fs::write(
            &path,
            r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 1.0}"#,
        )
        .map_err(|e| EngineError::io(&path, e))?;
        let schnell = SchedulerConfig::load(&path)?;
        assert!(!schnell.use_dynamic_shifting);
        assert_eq!(schnell.num_train_timesteps, 1000);

        for (bad, needle) in [
            (r#"{"use_karras_sigmas": true}"#, "use_karras_sigmas"),
            (r#"{"invert_sigmas": true}"#, "invert_sigmas"),
            (r#"{"shift_terminal": 0.1}"#, "shift_terminal"),
            (r#"{"stochastic_sampling": true}"#, "stochastic_sampling"),
            (
                r#"{"_class_name": "EulerDiscreteScheduler"}"#,
                "EulerDiscreteScheduler",
            ),
            (r#"{"time_shift_type": "cubic"}"#, "cubic"),
        ] {
            std::fs::write(&path, bad).map_err(|e| EngineError::io(&path, e))?;
            let err = SchedulerConfig::load(&path).expect_err(bad).to_string();
            assert!(
                err.contains(needle) && err.contains("scheduler_config.json"),
                "{err}"
            );
        }
        std::fs::remove_dir_all(&dir).map_err(|e| EngineError::io(&dir, e))?;
        Ok(())
    }
}
