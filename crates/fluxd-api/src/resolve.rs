//! A validated request resolved through the endpoint table ([`crate::ENDPOINTS`]) into the
//! [`Generation`] the engine runs: sampler settings, size, fine-tune and image prompt. Both the
//! request and its generation are kept with the task ([`StoredTask`], the task's stored
//! parameters), so a queued task runs with the settings it was accepted with.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::endpoint::Endpoint;
use crate::generation::{FluxDevRequest, FluxPro11Request, FluxProRequest};
use crate::request::{FinetunedRequest, OutputFormat};
use crate::ultra::{
    parse_aspect_ratio, ultra_size, UltraFinetunedRequest, UltraRequest, ULTRA_MEGAPIXELS_DEFAULT,
};

/// A validated request of any generation endpoint. Serialises as the endpoint's model does
/// (pydantic's `model_dump(mode="json")`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum GenerationRequest {
    /// `flux-pro-finetuned`.
    FluxProFinetuned(FinetunedRequest),
    /// `flux-dev`.
    FluxDev(FluxDevRequest),
    /// `flux-pro`.
    FluxPro(FluxProRequest),
    /// `flux-pro-1.1`.
    FluxPro11(FluxPro11Request),
    /// `flux-pro-1.1-ultra`.
    FluxPro11Ultra(UltraRequest),
    /// `flux-pro-1.1-ultra-finetuned`.
    FluxPro11UltraFinetuned(UltraFinetunedRequest),
}

/// A fine-tune to apply and its LoRA scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinetuneUse {
    /// `finetune_id` as the caller wrote it.
    pub id: String,
    /// `finetune_strength`.
    pub strength: f64,
}

/// What the engine runs for a request: the endpoint table applied to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    /// The prompt (`""` for a null one).
    pub prompt: String,
    /// The base64 image prompt, if any.
    pub image_prompt: Option<String>,
    /// Scale of the image prompt's Redux tokens (1 for endpoints without the field).
    pub image_prompt_strength: f64,
    /// Output width in pixels.
    pub width: u32,
    /// Output height in pixels.
    pub height: u32,
    /// Denoising steps.
    pub steps: u32,
    /// Distilled guidance.
    pub guidance: f64,
    /// Seed, random when absent.
    pub seed: Option<u64>,
    /// Moderation tolerance, 0..=6.
    pub safety_tolerance: u8,
    /// Rewrite the prompt first.
    pub prompt_upsampling: bool,
    /// Encoding of the result.
    pub output_format: OutputFormat,
    /// The fine-tune, if the endpoint takes one.
    pub finetune: Option<FinetuneUse>,
}

impl GenerationRequest {
    /// Which endpoint it came from.
    pub fn endpoint(&self) -> Endpoint {
        match self {
            GenerationRequest::FluxProFinetuned(_) => Endpoint::FluxProFinetuned,
            GenerationRequest::FluxDev(_) => Endpoint::FluxDev,
            GenerationRequest::FluxPro(_) => Endpoint::FluxPro,
            GenerationRequest::FluxPro11(_) => Endpoint::FluxPro11,
            GenerationRequest::FluxPro11Ultra(_) => Endpoint::FluxPro11Ultra,
            GenerationRequest::FluxPro11UltraFinetuned(_) => Endpoint::FluxPro11UltraFinetuned,
        }
    }

    /// `webhook_url`, normalised.
    pub fn webhook_url(&self) -> Option<&str> {
        self.given().webhook_url
    }

    /// `webhook_secret`.
    pub fn webhook_secret(&self) -> Option<&str> {
        self.given().webhook_secret
    }

    /// The request through the endpoint table; `ultra_megapixels` sizes the ultra endpoints.
    pub fn resolve(&self, ultra_megapixels: f64) -> Generation {
        let spec = self.endpoint().spec();
        let g = self.given();
        let (width, height) = match g.size {
            Size::WidthHeight(w, h) => (w, h),
            // Validated at parse; 1:1 keeps a stored value that no longer parses usable.
            Size::AspectRatio(aspect) => ultra_size(
                parse_aspect_ratio(aspect).unwrap_or((1, 1)),
                ultra_megapixels,
            ),
        };
        let guidance = match (g.raw, spec.raw_guidance) {
            (true, Some(raw)) => raw,
            _ => spec.guidance.pick(g.guidance),
        };
        Generation {
            prompt: g.prompt.unwrap_or_default().to_owned(),
            image_prompt: g.image_prompt.cloned(),
            image_prompt_strength: g.image_prompt_strength.unwrap_or(1.0),
            width,
            height,
            steps: spec.steps.pick(g.steps),
            guidance,
            seed: g.seed,
            safety_tolerance: g.safety_tolerance,
            prompt_upsampling: g.prompt_upsampling,
            output_format: g.output_format.unwrap_or_default(),
            finetune: g.finetune.map(|(id, strength)| FinetuneUse {
                id: id.to_owned(),
                strength,
            }),
        }
    }

    /// The fields the table needs, whatever the endpoint; `None` where the request left a field
    /// out, sent `null`, or its schema has no such field.
    fn given(&self) -> Given<'_> {
        match self {
            GenerationRequest::FluxProFinetuned(r) => Given {
                prompt: Some(&r.prompt),
                image_prompt: r.image_prompt.as_ref(),
                image_prompt_strength: None,
                size: Size::WidthHeight(r.width, r.height),
                steps: Some(r.steps),
                guidance: Some(r.guidance),
                raw: false,
                seed: r.seed,
                safety_tolerance: r.safety_tolerance,
                prompt_upsampling: r.prompt_upsampling,
                output_format: Some(r.output_format),
                finetune: Some((&r.finetune_id, r.finetune_strength)),
                webhook_url: r.webhook_url.as_deref(),
                webhook_secret: r.webhook_secret.as_deref(),
            },
            GenerationRequest::FluxDev(r) => Given {
                steps: r.steps,
                guidance: r.guidance,
                ..Given::sized(
                    r.prompt.as_deref(),
                    r.image_prompt.as_ref(),
                    (r.width, r.height),
                    r.seed,
                    r.safety_tolerance,
                    r.prompt_upsampling,
                    r.output_format,
                    (r.webhook_url.as_deref(), r.webhook_secret.as_deref()),
                )
            },
            GenerationRequest::FluxPro(r) => Given {
                steps: r.steps,
                guidance: r.guidance,
                // `interval` has no counterpart on FLUX.1-dev (see the table).
                ..Given::sized(
                    r.prompt.as_deref(),
                    r.image_prompt.as_ref(),
                    (r.width, r.height),
                    r.seed,
                    r.safety_tolerance,
                    r.prompt_upsampling,
                    r.output_format,
                    (r.webhook_url.as_deref(), r.webhook_secret.as_deref()),
                )
            },
            GenerationRequest::FluxPro11(r) => Given::sized(
                r.prompt.as_deref(),
                r.image_prompt.as_ref(),
                (r.width, r.height),
                r.seed,
                r.safety_tolerance,
                r.prompt_upsampling,
                r.output_format,
                (r.webhook_url.as_deref(), r.webhook_secret.as_deref()),
            ),
            GenerationRequest::FluxPro11Ultra(r) => Given {
                prompt: r.prompt.as_deref(),
                image_prompt: r.image_prompt.as_ref(),
                image_prompt_strength: Some(r.image_prompt_strength),
                size: Size::AspectRatio(&r.aspect_ratio),
                steps: None,
                guidance: None,
                raw: r.raw,
                seed: r.seed,
                safety_tolerance: r.safety_tolerance,
                prompt_upsampling: r.prompt_upsampling,
                output_format: r.output_format,
                finetune: None,
                webhook_url: r.webhook_url.as_deref(),
                webhook_secret: r.webhook_secret.as_deref(),
            },
            GenerationRequest::FluxPro11UltraFinetuned(r) => Given {
                prompt: r.prompt.as_deref(),
                image_prompt: r.image_prompt.as_ref(),
                image_prompt_strength: Some(r.image_prompt_strength),
                size: Size::AspectRatio(&r.aspect_ratio),
                steps: None,
                guidance: None,
                raw: false,
                seed: r.seed,
                safety_tolerance: r.safety_tolerance,
                prompt_upsampling: r.prompt_upsampling,
                output_format: r.output_format,
                finetune: Some((&r.finetune_id, r.finetune_strength)),
                webhook_url: r.webhook_url.as_deref(),
                webhook_secret: r.webhook_secret.as_deref(),
            },
        }
    }
}

/// How a request sizes its image.
enum Size<'a> {
    WidthHeight(u32, u32),
    AspectRatio(&'a str),
}

/// A request's fields as the endpoint table reads them.
struct Given<'a> {
    prompt: Option<&'a str>,
    image_prompt: Option<&'a String>,
    image_prompt_strength: Option<f64>,
    size: Size<'a>,
    steps: Option<u32>,
    guidance: Option<f64>,
    raw: bool,
    seed: Option<u64>,
    safety_tolerance: u8,
    prompt_upsampling: bool,
    output_format: Option<OutputFormat>,
    finetune: Option<(&'a str, f64)>,
    webhook_url: Option<&'a str>,
    webhook_secret: Option<&'a str>,
}

impl<'a> Given<'a> {
    /// A `width`/`height` request with no sampler fields and no fine-tune.
    #[allow(clippy::too_many_arguments)]
    fn sized(
        prompt: Option<&'a str>,
        image_prompt: Option<&'a String>,
        (width, height): (u32, u32),
        seed: Option<u64>,
        safety_tolerance: u8,
        prompt_upsampling: bool,
        output_format: Option<OutputFormat>,
        (webhook_url, webhook_secret): (Option<&'a str>, Option<&'a str>),
    ) -> Self {
        Given {
            prompt,
            image_prompt,
            image_prompt_strength: None,
            size: Size::WidthHeight(width, height),
            steps: None,
            guidance: None,
            raw: false,
            seed,
            safety_tolerance,
            prompt_upsampling,
            output_format,
            finetune: None,
            webhook_url,
            webhook_secret,
        }
    }
}

/// A task's stored parameters: the endpoint and request it came from, the `x-request-id` of the
/// submit, and the [`Generation`] it runs. Tasks stored before endpoints were recorded hold a
/// bare `flux-pro-finetuned` body; [`StoredTask::from_params`] reads those too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredTask {
    /// The endpoint it was submitted to.
    pub endpoint: Endpoint,
    /// The submit's request id, carried into the task's log span.
    #[serde(default)]
    pub request_id: Option<String>,
    /// The validated request, as the endpoint's model dumps it.
    pub request: Value,
    /// What runs.
    pub generation: Generation,
}

impl StoredTask {
    /// Reads a task's stored parameters.
    pub fn from_params(params: &Value) -> Result<StoredTask, serde_json::Error> {
        if params.get("endpoint").is_some() {
            return serde_json::from_value(params.clone());
        }
        let legacy: FinetunedRequest = serde_json::from_value(params.clone())?;
        let request = GenerationRequest::FluxProFinetuned(legacy);
        Ok(StoredTask {
            endpoint: Endpoint::FluxProFinetuned,
            request_id: None,
            generation: request.resolve(ULTRA_MEGAPIXELS_DEFAULT),
            request: params.clone(),
        })
    }

    /// The request id in stored parameters, without reading the rest.
    pub fn request_id_of(params: &Value) -> Option<&str> {
        params.get("request_id").and_then(Value::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::{RAW_GUIDANCE, SERVER_GUIDANCE, SERVER_STEPS};

    #[test]
    fn sampler_settings_follow_the_table() {
        let gen = |e: Endpoint, body: &str| e.parse(body.as_bytes()).unwrap().resolve(4.0);
        let dev = gen(Endpoint::FluxDev, "{}");
        assert_eq!(
            (dev.steps, dev.guidance, dev.width, dev.height),
            (28, 3.0, 1024, 768)
        );
        assert_eq!(dev.finetune, None);
        let dev_null = gen(
            Endpoint::FluxDev,
            r#"{"steps": null, "guidance": null, "prompt": null}"#,
        );
        assert_eq!((dev_null.steps, dev_null.guidance), (28, 3.0));
        assert_eq!(dev_null.prompt, "");
        let pro = gen(Endpoint::FluxPro, r#"{"steps": 12, "interval": 3}"#);
        assert_eq!((pro.steps, pro.guidance), (12, 2.5));
        let p11 = gen(Endpoint::FluxPro11, r#"{"steps": 3, "guidance": 5}"#);
        assert_eq!((p11.steps, p11.guidance), (SERVER_STEPS, SERVER_GUIDANCE));
        let ultra = gen(Endpoint::FluxPro11Ultra, "{}");
        assert_eq!((ultra.width, ultra.height), (2752, 1536));
        assert_eq!(ultra.image_prompt_strength, 0.1);
        let raw = gen(
            Endpoint::FluxPro11Ultra,
            r#"{"raw": true, "aspect_ratio": "1:1"}"#,
        );
        assert_eq!(
            (raw.width, raw.height, raw.guidance),
            (2048, 2048, RAW_GUIDANCE)
        );
        let uft = gen(Endpoint::FluxPro11UltraFinetuned, r#"{"finetune_id": "f"}"#);
        assert_eq!(
            uft.finetune,
            Some(FinetuneUse {
                id: "f".into(),
                strength: 1.2
            })
        );
        let ft = gen(
            Endpoint::FluxProFinetuned,
            r#"{"finetune_id": "f", "steps": 4}"#,
        );
        assert_eq!((ft.steps, ft.guidance), (4, 2.5));
        assert_eq!(ft.finetune.map(|f| f.strength), Some(1.1));
    }

    #[test]
    fn stored_tasks_read_back_and_legacy_rows_still_run() {
        let request = Endpoint::FluxDev
            .parse(br#"{"prompt": "fox", "seed": 3}"#)
            .unwrap();
        let stored = StoredTask {
            endpoint: request.endpoint(),
            request_id: Some("req-1".into()),
            request: serde_json::to_value(&request).unwrap(),
            generation: request.resolve(4.0),
        };
        let params = serde_json::to_value(&stored).unwrap();
        assert_eq!(params["endpoint"], "flux-dev");
        assert_eq!(params["request"]["prompt"], "fox");
        assert_eq!(StoredTask::request_id_of(&params), Some("req-1"));
        assert_eq!(StoredTask::from_params(&params).unwrap(), stored);

        let legacy = serde_json::to_value(
            crate::parse_finetuned_request(br#"{"finetune_id": "ft", "steps": 3}"#).unwrap(),
        )
        .unwrap();
        let back = StoredTask::from_params(&legacy).unwrap();
        assert_eq!(back.endpoint, Endpoint::FluxProFinetuned);
        assert_eq!(back.generation.steps, 3);
        assert_eq!(back.generation.finetune.map(|f| f.id), Some("ft".into()));
        assert_eq!(StoredTask::request_id_of(&legacy), None);
    }
}
