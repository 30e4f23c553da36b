//! The generation endpoints this server answers, and the one table of how each runs on the
//! served FLUX.1 model ([`ENDPOINTS`]; the README's "Endpoints" table is rendered from it by
//! [`endpoint_table_markdown`], and a test keeps the two the same).
//!
//! A submit is parsed by its endpoint ([`Endpoint::parse`]) into a [`GenerationRequest`], which
//! [`crate::resolve`] turns into what the engine runs.

use serde::{Deserialize, Serialize};

use crate::error::RequestError;
use crate::generation::{
    parse_flux_dev_request, parse_flux_pro_1_1_request, parse_flux_pro_request,
};
use crate::request::limits::*;
use crate::request::parse_finetuned_request;
use crate::resolve::GenerationRequest;
use crate::ultra::{parse_ultra_finetuned_request, parse_ultra_request};

/// A generation endpoint served here: `POST /v1/<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Endpoint {
    /// `flux-pro-finetuned`: the seed endpoint.
    #[serde(rename = "flux-pro-finetuned")]
    FluxProFinetuned,
    /// `flux-dev`.
    #[serde(rename = "flux-dev")]
    FluxDev,
    /// `flux-pro`.
    #[serde(rename = "flux-pro")]
    FluxPro,
    /// `flux-pro-1.1`.
    #[serde(rename = "flux-pro-1.1")]
    FluxPro11,
    /// `flux-pro-1.1-ultra`.
    #[serde(rename = "flux-pro-1.1-ultra")]
    FluxPro11Ultra,
    /// `flux-pro-1.1-ultra-finetuned`.
    #[serde(rename = "flux-pro-1.1-ultra-finetuned")]
    FluxPro11UltraFinetuned,
}

/// A sampler setting: the request's field (with its default), or the server's fixed choice for
/// endpoints whose schema has no such field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Setting<T> {
    /// From the request; this is its default (used also for an explicit `null`).
    Request(T),
    /// Fixed by the server.
    Fixed(T),
}

/// How the output size is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeRule {
    /// The request's `width` and `height`.
    WidthHeight,
    /// The request's `aspect_ratio` at `--ultra-megapixels` ([`ultra_size`]).
    AspectRatio,
}

/// One row of the endpoint table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EndpointSpec {
    /// Which endpoint.
    pub endpoint: Endpoint,
    /// Its name: the path is `/v1/<name>`.
    pub name: &'static str,
    /// The open-weights model that serves it.
    pub model: &'static str,
    /// Denoising steps.
    pub steps: Setting<u32>,
    /// Distilled guidance.
    pub guidance: Setting<f64>,
    /// Guidance with `raw: true` (only ultra has `raw`).
    pub raw_guidance: Option<f64>,
    /// Output size.
    pub size: SizeRule,
    /// Default `finetune_strength` (the LoRA scale) of endpoints that take a fine-tune.
    pub finetune_strength: Option<f64>,
    /// What else a reader of the table should know.
    pub notes: &'static str,
}

/// Steps of the endpoints whose schema has none: FLUX.1-dev's usual 28 (diffusers'
/// `FluxPipeline` default).
pub const SERVER_STEPS: u32 = 28;
/// Guidance of the endpoints whose schema has none: diffusers' `FluxPipeline` default for
/// FLUX.1-dev.
pub const SERVER_GUIDANCE: f64 = 3.5;
/// Guidance of ultra's `raw: true`: lower distilled guidance makes FLUX.1-dev's images less
/// polished and more natural-looking, the closest open counterpart of the reference's raw mode.
pub const RAW_GUIDANCE: f64 = 2.0;

/// The endpoint table: endpoint → model and sampler settings. The README's table is rendered
/// from this ([`endpoint_table_markdown`]).
pub const ENDPOINTS: [EndpointSpec; 6] = [
    EndpointSpec {
        endpoint: Endpoint::FluxProFinetuned,
        name: "flux-pro-finetuned",
        model: "FLUX.1-dev + fine-tune (LoRA)",
        steps: Setting::Request(STEPS_DEFAULT),
        guidance: Setting::Request(GUIDANCE_DEFAULT),
        raw_guidance: None,
        size: SizeRule::WidthHeight,
        finetune_strength: Some(FINETUNE_STRENGTH_DEFAULT),
        notes: "the seed endpoint",
    },
    EndpointSpec {
        endpoint: Endpoint::FluxDev,
        name: "flux-dev",
        model: "FLUX.1-dev",
        steps: Setting::Request(FLUX_DEV_STEPS_DEFAULT),
        guidance: Setting::Request(FLUX_DEV_GUIDANCE_DEFAULT),
        raw_guidance: None,
        size: SizeRule::WidthHeight,
        finetune_strength: None,
        notes: "",
    },
    EndpointSpec {
        endpoint: Endpoint::FluxPro,
        name: "flux-pro",
        model: "FLUX.1-dev",
        steps: Setting::Request(STEPS_DEFAULT),
        guidance: Setting::Request(GUIDANCE_DEFAULT),
        raw_guidance: None,
        size: SizeRule::WidthHeight,
        finetune_strength: None,
        notes: "`interval` (1..4) is validated and stored but changes nothing: FLUX.1-dev has no such control",
    },
    EndpointSpec {
        endpoint: Endpoint::FluxPro11,
        name: "flux-pro-1.1",
        model: "FLUX.1-dev",
        steps: Setting::Fixed(SERVER_STEPS),
        guidance: Setting::Fixed(SERVER_GUIDANCE),
        raw_guidance: None,
        size: SizeRule::WidthHeight,
        finetune_strength: None,
        notes: "no steps or guidance in the schema: diffusers' FLUX.1-dev defaults",
    },
    EndpointSpec {
        endpoint: Endpoint::FluxPro11Ultra,
        name: "flux-pro-1.1-ultra",
        model: "FLUX.1-dev",
        steps: Setting::Fixed(SERVER_STEPS),
        guidance: Setting::Fixed(SERVER_GUIDANCE),
        raw_guidance: Some(RAW_GUIDANCE),
        size: SizeRule::AspectRatio,
        finetune_strength: None,
        notes: "`image_prompt_strength` scales the Redux tokens (0: left out, 1: full)",
    },
    EndpointSpec {
        endpoint: Endpoint::FluxPro11UltraFinetuned,
        name: "flux-pro-1.1-ultra-finetuned",
        model: "FLUX.1-dev + fine-tune (LoRA)",
        steps: Setting::Fixed(SERVER_STEPS),
        guidance: Setting::Fixed(SERVER_GUIDANCE),
        raw_guidance: None,
        size: SizeRule::AspectRatio,
        finetune_strength: Some(ULTRA_FINETUNE_STRENGTH_DEFAULT),
        notes: "`image_prompt_strength` as ultra",
    },
];

/// Reference endpoints that need a model this server does not serve (FLUX.1 Fill, Canny,
/// Depth, Kontext): they answer `404 {"detail":"Not Found"}` like any unknown path.
pub const UNSERVED_ENDPOINTS: [&str; 10] = [
    "flux-pro-1.0-fill",
    "flux-pro-1.0-fill-finetuned",
    "flux-pro-1.0-expand",
    "flux-pro-1.0-expand-finetuned",
    "flux-pro-1.0-canny",
    "flux-pro-1.0-canny-finetuned",
    "flux-pro-1.0-depth",
    "flux-pro-1.0-depth-finetuned",
    "flux-kontext-pro",
    "flux-kontext-max",
];

impl Endpoint {
    /// Every endpoint served, in the table's order.
    pub fn all() -> impl Iterator<Item = Endpoint> {
        ENDPOINTS.iter().map(|spec| spec.endpoint)
    }

    /// Its row of the table.
    pub fn spec(self) -> &'static EndpointSpec {
        // Every variant has exactly one row (a unit test checks); the first row is never used
        // otherwise.
        ENDPOINTS
            .iter()
            .find(|spec| spec.endpoint == self)
            .unwrap_or(&ENDPOINTS[0])
    }

    /// The name, e.g. `flux-dev`.
    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// The route, e.g. `/v1/flux-dev`.
    pub fn path(self) -> String {
        format!("/v1/{}", self.name())
    }

    /// Validates a request body for this endpoint.
    pub fn parse(self, body: &[u8]) -> Result<GenerationRequest, RequestError> {
        Ok(match self {
            Endpoint::FluxProFinetuned => {
                GenerationRequest::FluxProFinetuned(parse_finetuned_request(body)?)
            }
            Endpoint::FluxDev => GenerationRequest::FluxDev(parse_flux_dev_request(body)?),
            Endpoint::FluxPro => GenerationRequest::FluxPro(parse_flux_pro_request(body)?),
            Endpoint::FluxPro11 => GenerationRequest::FluxPro11(parse_flux_pro_1_1_request(body)?),
            Endpoint::FluxPro11Ultra => {
                GenerationRequest::FluxPro11Ultra(parse_ultra_request(body)?)
            }
            Endpoint::FluxPro11UltraFinetuned => {
                GenerationRequest::FluxPro11UltraFinetuned(parse_ultra_finetuned_request(body)?)
            }
        })
    }
}

impl<T: Copy> Setting<T> {
    /// The value for a request that gave `given` (`None`: absent, null, or not in the schema).
    pub fn pick(self, given: Option<T>) -> T {
        match self {
            Setting::Request(default) => given.unwrap_or(default),
            Setting::Fixed(value) => value,
        }
    }
}

/// The endpoint table as Markdown, exactly as the README shows it.
pub fn endpoint_table_markdown() -> String {
    fn setting<T: std::fmt::Display>(s: Setting<T>) -> String {
        match s {
            Setting::Request(d) => format!("request (default {d})"),
            Setting::Fixed(v) => format!("{v} (fixed)"),
        }
    }
    let mut out = String::from(
        "| endpoint | model | steps | guidance | size | fine-tune strength | notes |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for spec in &ENDPOINTS {
        let steps = setting(spec.steps);
        let mut guidance = setting(spec.guidance);
        if let Some(raw) = spec.raw_guidance {
            guidance.push_str(&format!("; {raw} with `raw`"));
        }
        let size = match spec.size {
            SizeRule::WidthHeight => "`width` × `height`",
            SizeRule::AspectRatio => {
                "`aspect_ratio` at `--ultra-megapixels` (4: 2752×1536 for 16:9)"
            }
        };
        let strength = spec
            .finetune_strength
            .map_or("—".to_owned(), |d| format!("request (default {d})"));
        out.push_str(&format!(
            "| `{}` | {} | {steps} | {guidance} | {size} | {strength} | {} |\n",
            spec.name, spec.model, spec.notes
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_endpoint_has_one_row() {
        let all = [
            Endpoint::FluxProFinetuned,
            Endpoint::FluxDev,
            Endpoint::FluxPro,
            Endpoint::FluxPro11,
            Endpoint::FluxPro11Ultra,
            Endpoint::FluxPro11UltraFinetuned,
        ];
        for e in all {
            assert_eq!(
                ENDPOINTS.iter().filter(|s| s.endpoint == e).count(),
                1,
                "{e:?}"
            );
            assert_eq!(e.spec().endpoint, e);
            assert_eq!(
                serde_json::to_value(e).unwrap(),
                json!(e.name()),
                "serde name is the table's"
            );
        }
        for name in UNSERVED_ENDPOINTS {
            assert!(ENDPOINTS.iter().all(|s| s.name != name));
        }
    }

    /// The README shows the same table as the code.
    #[test]
    fn readme_has_the_endpoint_table() {
        let readme = include_str!("../../../README.md");
        let table = endpoint_table_markdown();
        assert!(
            readme.contains(&table),
            "README.md's endpoint table differs from the code's; paste this:\n{table}"
        );
    }
}
