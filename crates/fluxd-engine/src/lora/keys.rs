//! Mapping the key names of published FLUX LoRA files onto our canonical module names.
//!
//! Canonical names are the BFL module names of the FLUX.1 transformer (`double_blocks.3.img_attn.qkv`,
//! `single_blocks.0.linear1`, `final_layer.adaLN_modulation.1`, ...), because the BFL layout keeps
//! q/k/v (and the single blocks' mlp input) fused, which is how our transformer computes them.
//! Formats that split those (diffusers/PEFT, ai-toolkit, XLabs' single blocks) name a *part*
//! (a row range) of a fused module. Key conventions follow diffusers'
//! `loaders/lora_conversion_utils.py` (`_convert_kohya_flux_lora_to_diffusers`,
//! `_convert_xlabs_flux_lora_to_diffusers`) and `single_file_utils.py` (diffusers ↔ BFL names).

/// Which rows of a fused module a LoRA part writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    /// The whole module.
    Whole,
    /// The query third of a fused qkv, or the query slice of a single block's linear1.
    Q,
    /// The key slice.
    K,
    /// The value slice.
    V,
    /// q, k and v together (XLabs single blocks): the first three slices of linear1.
    Qkv,
    /// The MLP-input slice of a single block's linear1.
    Mlp,
}

/// What a tensor of a LoRA file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The down projection (`lora_A`, `lora_down`, `down`): rank × in.
    Down,
    /// The up projection (`lora_B`, `lora_up`, `up`): out × rank.
    Up,
    /// A bias added with the update (BFL `lora_B.bias`).
    UpBias,
    /// The kohya alpha scalar.
    Alpha,
}

/// The target of one LoRA key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A transformer module (canonical BFL name), possibly one part of it.
    Transformer {
        /// Canonical module name.
        module: String,
        /// Which rows.
        part: Part,
        /// Whether the update's rows must have their halves swapped (diffusers' `norm_out.linear`
        /// stores the final modulation as (scale, shift); BFL as (shift, scale)).
        swap_halves: bool,
    },
    /// A text-encoder module (kohya `lora_te1_`/`lora_te2_`, diffusers `text_encoder.`): reported.
    TextEncoder(String),
}

/// A parsed key: its target, the tensor's role, and the module key it belongs to (for grouping).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedKey {
    /// Where the tensor goes.
    pub target: Target,
    /// What it is.
    pub role: Role,
}

/// Splits the role suffix off a key.
fn split_role(key: &str) -> Option<(&str, Role)> {
    const SUFFIXES: &[(&str, Role)] = &[
        (".lora_A.weight", Role::Down),
        (".lora_B.weight", Role::Up),
        (".lora_B.bias", Role::UpBias),
        (".lora_down.weight", Role::Down),
        (".lora_up.weight", Role::Up),
        (".down.weight", Role::Down),
        (".up.weight", Role::Up),
        (".alpha", Role::Alpha),
    ];
    SUFFIXES
        .iter()
        .find_map(|(s, r)| key.strip_suffix(s).map(|m| (m, *r)))
}

/// Prefixes under which the transformer's modules appear in the wild.
const TRANSFORMER_PREFIXES: &[&str] = &[
    "base_model.model.",
    "model.diffusion_model.",
    "diffusion_model.",
    "transformer.",
    "lora_unet_",
    "lora_transformer_",
];

/// Prefixes of text-encoder modules.
const TEXT_ENCODER_PREFIXES: &[&str] = &[
    "lora_te1_",
    "lora_te2_",
    "lora_te_",
    "text_encoder.",
    "text_encoder_2.",
    "te1.",
    "te2.",
];

/// A module template: its name with `{i}` for the block index, the canonical name, the part.
struct Template {
    pattern: &'static str,
    canonical: &'static str,
    part: Part,
    swap: bool,
}

const fn t(pattern: &'static str, canonical: &'static str, part: Part) -> Template {
    Template {
        pattern,
        canonical,
        part,
        swap: false,
    }
}

/// Every module name we know, BFL then diffusers, with where it lands.
const TEMPLATES: &[Template] = &[
    // BFL / kohya / ComfyUI names.
    t(
        "double_blocks.{i}.img_attn.qkv",
        "double_blocks.{i}.img_attn.qkv",
        Part::Whole,
    ),
    t(
        "double_blocks.{i}.txt_attn.qkv",
        "double_blocks.{i}.txt_attn.qkv",
        Part::Whole,
    ),
    t(
        "double_blocks.{i}.img_attn.proj",
        "double_blocks.{i}.img_attn.proj",
        Part::Whole,
    ),
    t(
        "double_blocks.{i}.txt_attn.proj",
        "double_blocks.{i}.txt_attn.proj",
        Part::Whole,
    ),
    t(
        "double_blocks.{i}.img_mlp.0",
        "double_blocks.{i}.img_mlp.0",
        Part::Whole,
    ),
    t(
        "double_blocks.{i}.img_mlp.2",
        "double_blocks.{i}.img_mlp.2",
        Part::Whole,
    ),
    t(
        "double_blocks.{i}.txt_mlp.0",
        "double_blocks.{i}.txt_mlp.0",
        Part::Whole,
    ),
    t(
        "double_blocks.{i}.txt_mlp.2",
        "double_blocks.{i}.txt_mlp.2",
        Part::Whole,
    ),
    t(
        "double_blocks.{i}.img_mod.lin",
        "double_blocks.{i}.img_mod.lin",
        Part::Whole,
    ),
    t(
        "double_blocks.{i}.txt_mod.lin",
        "double_blocks.{i}.txt_mod.lin",
        Part::Whole,
    ),
    t(
        "single_blocks.{i}.linear1",
        "single_blocks.{i}.linear1",
        Part::Whole,
    ),
    t(
        "single_blocks.{i}.linear2",
        "single_blocks.{i}.linear2",
        Part::Whole,
    ),
    t(
        "single_blocks.{i}.modulation.lin",
        "single_blocks.{i}.modulation.lin",
        Part::Whole,
    ),
    t("img_in", "img_in", Part::Whole),
    t("txt_in", "txt_in", Part::Whole),
    t("time_in.in_layer", "time_in.in_layer", Part::Whole),
    t("time_in.out_layer", "time_in.out_layer", Part::Whole),
    t("vector_in.in_layer", "vector_in.in_layer", Part::Whole),
    t("vector_in.out_layer", "vector_in.out_layer", Part::Whole),
    t("guidance_in.in_layer", "guidance_in.in_layer", Part::Whole),
    t(
        "guidance_in.out_layer",
        "guidance_in.out_layer",
        Part::Whole,
    ),
    t("final_layer.linear", "final_layer.linear", Part::Whole),
    t(
        "final_layer.adaLN_modulation.1",
        "final_layer.adaLN_modulation.1",
        Part::Whole,
    ),
    // XLabs processor names.
    t(
        "double_blocks.{i}.processor.qkv_lora1",
        "double_blocks.{i}.img_attn.qkv",
        Part::Whole,
    ),
    t(
        "double_blocks.{i}.processor.qkv_lora2",
        "double_blocks.{i}.txt_attn.qkv",
        Part::Whole,
    ),
    t(
        "double_blocks.{i}.processor.proj_lora1",
        "double_blocks.{i}.img_attn.proj",
        Part::Whole,
    ),
    t(
        "double_blocks.{i}.processor.proj_lora2",
        "double_blocks.{i}.txt_attn.proj",
        Part::Whole,
    ),
    t(
        "single_blocks.{i}.processor.qkv_lora",
        "single_blocks.{i}.linear1",
        Part::Qkv,
    ),
    t(
        "single_blocks.{i}.processor.proj_lora",
        "single_blocks.{i}.linear2",
        Part::Whole,
    ),
    // diffusers / PEFT / ai-toolkit names.
    t(
        "transformer_blocks.{i}.attn.to_q",
        "double_blocks.{i}.img_attn.qkv",
        Part::Q,
    ),
    t(
        "transformer_blocks.{i}.attn.to_k",
        "double_blocks.{i}.img_attn.qkv",
        Part::K,
    ),
    t(
        "transformer_blocks.{i}.attn.to_v",
        "double_blocks.{i}.img_attn.qkv",
        Part::V,
    ),
    t(
        "transformer_blocks.{i}.attn.add_q_proj",
        "double_blocks.{i}.txt_attn.qkv",
        Part::Q,
    ),
    t(
        "transformer_blocks.{i}.attn.add_k_proj",
        "double_blocks.{i}.txt_attn.qkv",
        Part::K,
    ),
    t(
        "transformer_blocks.{i}.attn.add_v_proj",
        "double_blocks.{i}.txt_attn.qkv",
        Part::V,
    ),
    t(
        "transformer_blocks.{i}.attn.to_out.0",
        "double_blocks.{i}.img_attn.proj",
        Part::Whole,
    ),
    t(
        "transformer_blocks.{i}.attn.to_add_out",
        "double_blocks.{i}.txt_attn.proj",
        Part::Whole,
    ),
    t(
        "transformer_blocks.{i}.ff.net.0.proj",
        "double_blocks.{i}.img_mlp.0",
        Part::Whole,
    ),
    t(
        "transformer_blocks.{i}.ff.net.2",
        "double_blocks.{i}.img_mlp.2",
        Part::Whole,
    ),
    t(
        "transformer_blocks.{i}.ff_context.net.0.proj",
        "double_blocks.{i}.txt_mlp.0",
        Part::Whole,
    ),
    t(
        "transformer_blocks.{i}.ff_context.net.2",
        "double_blocks.{i}.txt_mlp.2",
        Part::Whole,
    ),
    t(
        "transformer_blocks.{i}.norm1.linear",
        "double_blocks.{i}.img_mod.lin",
        Part::Whole,
    ),
    t(
        "transformer_blocks.{i}.norm1_context.linear",
        "double_blocks.{i}.txt_mod.lin",
        Part::Whole,
    ),
    t(
        "single_transformer_blocks.{i}.attn.to_q",
        "single_blocks.{i}.linear1",
        Part::Q,
    ),
    t(
        "single_transformer_blocks.{i}.attn.to_k",
        "single_blocks.{i}.linear1",
        Part::K,
    ),
    t(
        "single_transformer_blocks.{i}.attn.to_v",
        "single_blocks.{i}.linear1",
        Part::V,
    ),
    t(
        "single_transformer_blocks.{i}.proj_mlp",
        "single_blocks.{i}.linear1",
        Part::Mlp,
    ),
    t(
        "single_transformer_blocks.{i}.proj_out",
        "single_blocks.{i}.linear2",
        Part::Whole,
    ),
    t(
        "single_transformer_blocks.{i}.norm.linear",
        "single_blocks.{i}.modulation.lin",
        Part::Whole,
    ),
    t("x_embedder", "img_in", Part::Whole),
    t("context_embedder", "txt_in", Part::Whole),
    t(
        "time_text_embed.timestep_embedder.linear_1",
        "time_in.in_layer",
        Part::Whole,
    ),
    t(
        "time_text_embed.timestep_embedder.linear_2",
        "time_in.out_layer",
        Part::Whole,
    ),
    t(
        "time_text_embed.guidance_embedder.linear_1",
        "guidance_in.in_layer",
        Part::Whole,
    ),
    t(
        "time_text_embed.guidance_embedder.linear_2",
        "guidance_in.out_layer",
        Part::Whole,
    ),
    t(
        "time_text_embed.text_embedder.linear_1",
        "vector_in.in_layer",
        Part::Whole,
    ),
    t(
        "time_text_embed.text_embedder.linear_2",
        "vector_in.out_layer",
        Part::Whole,
    ),
    t("proj_out", "final_layer.linear", Part::Whole),
    Template {
        pattern: "norm_out.linear",
        canonical: "final_layer.adaLN_modulation.1",
        part: Part::Whole,
        swap: true,
    },
];

/// Matches `name` (separators `.` or `_`, as kohya flattens them) against `pattern`, returning
/// the block index when the pattern has `{i}`.
fn match_template(name: &str, pattern: &str) -> Option<Option<usize>> {
    let norm = |s: &str| s.replace('.', "_");
    let name = norm(name);
    match pattern.split_once("{i}") {
        None => (name == norm(pattern)).then_some(None),
        Some((head, tail)) => {
            let rest = name.strip_prefix(&norm(head))?;
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return None;
            }
            let (num, after) = rest.split_at(digits);
            (after == norm(tail)).then(|| num.parse().ok())?.map(Some)
        }
    }
}

/// Parses one key of a LoRA file; `None` when the key matches nothing we know.
pub fn parse_key(key: &str) -> Option<ParsedKey> {
    let (module, role) = split_role(key)?;
    if let Some(rest) = TEXT_ENCODER_PREFIXES
        .iter()
        .find_map(|p| module.strip_prefix(p))
    {
        return Some(ParsedKey {
            target: Target::TextEncoder(rest.to_string()),
            role,
        });
    }
    let mut m = module;
    // Prefixes can stack (`base_model.model.transformer.`), so strip repeatedly.
    while let Some(rest) = TRANSFORMER_PREFIXES.iter().find_map(|p| m.strip_prefix(p)) {
        m = rest;
    }
    for tpl in TEMPLATES {
        if let Some(index) = match_template(m, tpl.pattern) {
            let module = match index {
                Some(i) => tpl.canonical.replace("{i}", &i.to_string()),
                None => tpl.canonical.to_string(),
            };
            return Some(ParsedKey {
                target: Target::Transformer {
                    module,
                    part: tpl.part,
                    swap_halves: tpl.swap,
                },
                role,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module_of(key: &str) -> (String, Part, bool) {
        match parse_key(key).map(|p| p.target) {
            Some(Target::Transformer {
                module,
                part,
                swap_halves,
            }) => (module, part, swap_halves),
            other => panic!("{key}: {other:?}"),
        }
    }

    #[test]
    fn every_published_spelling_lands_on_the_bfl_module() {
        let qkv = (
            "double_blocks.3.img_attn.qkv".to_string(),
            Part::Whole,
            false,
        );
        assert_eq!(module_of("double_blocks.3.img_attn.qkv.lora_A.weight"), qkv);
        assert_eq!(
            module_of("diffusion_model.double_blocks.3.img_attn.qkv.lora_B.weight"),
            qkv
        );
        assert_eq!(
            module_of("model.diffusion_model.double_blocks.3.img_attn.qkv.lora_up.weight"),
            qkv
        );
        assert_eq!(
            module_of("lora_unet_double_blocks_3_img_attn_qkv.lora_down.weight"),
            qkv
        );
        assert_eq!(
            module_of("double_blocks.3.processor.qkv_lora1.down.weight"),
            qkv
        );
        let q = ("double_blocks.3.img_attn.qkv".to_string(), Part::Q, false);
        assert_eq!(
            module_of("transformer.transformer_blocks.3.attn.to_q.lora_A.weight"),
            q
        );
        assert_eq!(
            module_of("base_model.model.transformer_blocks.3.attn.to_q.lora_B.weight"),
            q
        );
        assert_eq!(
            module_of("lora_transformer_transformer_blocks_3_attn_to_q.lora_down.weight"),
            q
        );
        assert_eq!(
            module_of("transformer.single_transformer_blocks.12.proj_mlp.lora_A.weight"),
            ("single_blocks.12.linear1".to_string(), Part::Mlp, false)
        );
        assert_eq!(
            module_of("lora_unet_single_blocks_12_modulation_lin.alpha"),
            (
                "single_blocks.12.modulation.lin".to_string(),
                Part::Whole,
                false
            )
        );
        assert_eq!(
            module_of("transformer.norm_out.linear.lora_B.weight"),
            (
                "final_layer.adaLN_modulation.1".to_string(),
                Part::Whole,
                true
            )
        );
        assert_eq!(
            module_of("transformer.proj_out.lora_B.weight"),
            ("final_layer.linear".to_string(), Part::Whole, false)
        );
        assert_eq!(
            module_of("lora_unet_final_layer_adaLN_modulation_1.lora_up.weight"),
            (
                "final_layer.adaLN_modulation.1".to_string(),
                Part::Whole,
                false
            )
        );
    }

    #[test]
    fn roles_and_text_encoder_and_unknown_keys() {
        assert_eq!(
            parse_key("double_blocks.0.img_attn.qkv.lora_B.bias").map(|p| p.role),
            Some(Role::UpBias)
        );
        assert_eq!(
            parse_key("lora_unet_img_in.alpha").map(|p| p.role),
            Some(Role::Alpha)
        );
        assert!(matches!(
            parse_key("lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight")
                .map(|p| p.target),
            Some(Target::TextEncoder(_))
        ));
        assert_eq!(parse_key("double_blocks.0.img_attn.qkv.weight"), None);
        assert_eq!(parse_key("transformer.something_else.lora_A.weight"), None);
        assert_eq!(
            parse_key("transformer_blocks.x.attn.to_q.lora_A.weight"),
            None
        );
    }
}
