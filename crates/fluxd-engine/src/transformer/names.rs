//! Canonical tensor names and their diffusers counterparts.
//!
//! The model keeps BFL's module names (`double_blocks.3.img_attn.qkv`, `single_blocks.7.linear1`,
//! ...) with fused q/k/v and q/k/v/mlp projections: one matmul instead of three or four, and the
//! names LoRA files (BFL, kohya, XLabs) key their adapters by. Diffusers splits those projections
//! in row blocks and stores the final modulation with its halves swapped; the table below is the
//! inverse of `convert_flux_transformer_checkpoint_to_diffusers` (diffusers
//! `loaders/single_file_utils.py`).

use super::config::{FluxConfig, TIME_EMBED_DIM};

/// One linear layer of the canonical model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearSpec {
    /// Canonical (BFL) module name, without `.weight`/`.bias`.
    pub name: String,
    /// Output width.
    pub out: usize,
    /// Input width.
    pub inp: usize,
}

/// Where a canonical tensor lives in a diffusers checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiffusersSource {
    /// One tensor under another name.
    Renamed(String),
    /// Row blocks of these (module, rows) tensors, concatenated in order along dim 0.
    Fused(Vec<(String, usize)>),
    /// The tensor with its two halves (along dim 0) swapped: BFL (shift, scale) vs diffusers
    /// (scale, shift) in `AdaLayerNormContinuous`.
    Swapped(String),
}

fn lin(name: String, out: usize, inp: usize) -> LinearSpec {
    LinearSpec { name, out, inp }
}

/// All linear layers, in a fixed order (the order the tiny writers draw weights in).
pub fn linear_specs(cfg: &FluxConfig) -> Vec<LinearSpec> {
    let h = cfg.hidden();
    let mlp = cfg.mlp_hidden();
    let mut v = vec![
        lin("img_in".into(), h, cfg.in_channels),
        lin("txt_in".into(), h, cfg.joint_attention_dim),
        lin("time_in.in_layer".into(), h, TIME_EMBED_DIM),
        lin("time_in.out_layer".into(), h, h),
        lin("vector_in.in_layer".into(), h, cfg.pooled_projection_dim),
        lin("vector_in.out_layer".into(), h, h),
    ];
    if cfg.guidance_embeds {
        v.push(lin("guidance_in.in_layer".into(), h, TIME_EMBED_DIM));
        v.push(lin("guidance_in.out_layer".into(), h, h));
    }
    for i in 0..cfg.num_layers {
        for s in ["img", "txt"] {
            let p = format!("double_blocks.{i}.{s}");
            v.push(lin(format!("{p}_mod.lin"), 6 * h, h));
            v.push(lin(format!("{p}_attn.qkv"), 3 * h, h));
            v.push(lin(format!("{p}_attn.proj"), h, h));
            v.push(lin(format!("{p}_mlp.0"), mlp, h));
            v.push(lin(format!("{p}_mlp.2"), h, mlp));
        }
    }
    for i in 0..cfg.num_single_layers {
        let p = format!("single_blocks.{i}");
        v.push(lin(format!("{p}.linear1"), 3 * h + mlp, h));
        v.push(lin(format!("{p}.linear2"), h, h + mlp));
        v.push(lin(format!("{p}.modulation.lin"), 3 * h, h));
    }
    v.push(lin("final_layer.linear".into(), cfg.out_features(), h));
    v.push(lin("final_layer.adaLN_modulation.1".into(), 2 * h, h));
    v
}

/// All QK-RMSNorm scales (canonical tensor names, each of size head_dim).
pub fn norm_names(cfg: &FluxConfig) -> Vec<String> {
    let mut v = Vec::new();
    for i in 0..cfg.num_layers {
        for s in ["img", "txt"] {
            for q in ["query", "key"] {
                v.push(format!("double_blocks.{i}.{s}_attn.norm.{q}_norm.scale"));
            }
        }
    }
    for i in 0..cfg.num_single_layers {
        for q in ["query", "key"] {
            v.push(format!("single_blocks.{i}.norm.{q}_norm.scale"));
        }
    }
    v
}

/// The diffusers module (for linears) or tensor (for norm scales) behind a canonical name.
/// `name` is a module from [`linear_specs`] or a tensor from [`norm_names`].
pub fn diffusers_source(cfg: &FluxConfig, name: &str) -> Option<DiffusersSource> {
    let h = cfg.hidden();
    let renamed = |s: &str| Some(DiffusersSource::Renamed(s.to_string()));
    match name {
        "img_in" => return renamed("x_embedder"),
        "txt_in" => return renamed("context_embedder"),
        "time_in.in_layer" => return renamed("time_text_embed.timestep_embedder.linear_1"),
        "time_in.out_layer" => return renamed("time_text_embed.timestep_embedder.linear_2"),
        "vector_in.in_layer" => return renamed("time_text_embed.text_embedder.linear_1"),
        "vector_in.out_layer" => return renamed("time_text_embed.text_embedder.linear_2"),
        "guidance_in.in_layer" => return renamed("time_text_embed.guidance_embedder.linear_1"),
        "guidance_in.out_layer" => return renamed("time_text_embed.guidance_embedder.linear_2"),
        "final_layer.linear" => return renamed("proj_out"),
        "final_layer.adaLN_modulation.1" => {
            return Some(DiffusersSource::Swapped("norm_out.linear".into()))
        }
        _ => {}
    }
    if let Some(rest) = name.strip_prefix("double_blocks.") {
        let (idx, module) = rest.split_once('.')?;
        let p = format!("transformer_blocks.{idx}");
        let fused = |names: [&str; 3]| {
            Some(DiffusersSource::Fused(
                names.iter().map(|n| (format!("{p}.attn.{n}"), h)).collect(),
            ))
        };
        let target = match module {
            "img_mod.lin" => "norm1.linear",
            "txt_mod.lin" => "norm1_context.linear",
            "img_attn.qkv" => return fused(["to_q", "to_k", "to_v"]),
            "txt_attn.qkv" => return fused(["add_q_proj", "add_k_proj", "add_v_proj"]),
            "img_attn.proj" => "attn.to_out.0",
            "txt_attn.proj" => "attn.to_add_out",
            "img_mlp.0" => "ff.net.0.proj",
            "img_mlp.2" => "ff.net.2",
            "txt_mlp.0" => "ff_context.net.0.proj",
            "txt_mlp.2" => "ff_context.net.2",
            "img_attn.norm.query_norm.scale" => "attn.norm_q.weight",
            "img_attn.norm.key_norm.scale" => "attn.norm_k.weight",
            "txt_attn.norm.query_norm.scale" => "attn.norm_added_q.weight",
            "txt_attn.norm.key_norm.scale" => "attn.norm_added_k.weight",
            _ => return None,
        };
        return Some(DiffusersSource::Renamed(format!("{p}.{target}")));
    }
    if let Some(rest) = name.strip_prefix("single_blocks.") {
        let (idx, module) = rest.split_once('.')?;
        let p = format!("single_transformer_blocks.{idx}");
        let target = match module {
            "linear1" => {
                let parts = [("attn.to_q", h), ("attn.to_k", h), ("attn.to_v", h)]
                    .into_iter()
                    .chain([("proj_mlp", cfg.mlp_hidden())])
                    .map(|(n, rows)| (format!("{p}.{n}"), rows))
                    .collect();
                return Some(DiffusersSource::Fused(parts));
            }
            "linear2" => "proj_out",
            "modulation.lin" => "norm.linear",
            "norm.query_norm.scale" => "attn.norm_q.weight",
            "norm.key_norm.scale" => "attn.norm_k.weight",
            _ => return None,
        };
        return Some(DiffusersSource::Renamed(format!("{p}.{target}")));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_canonical_name_has_a_diffusers_source() {
        let cfg = FluxConfig::tiny();
        let specs = linear_specs(&cfg);
        // 8 embedders, 10 per double block, 3 per single block, 2 final.
        assert_eq!(specs.len(), 8 + 10 * 2 + 3 * 2 + 2);
        for s in &specs {
            assert!(diffusers_source(&cfg, &s.name).is_some(), "{}", s.name);
        }
        for n in norm_names(&cfg) {
            assert!(
                matches!(
                    diffusers_source(&cfg, &n),
                    Some(DiffusersSource::Renamed(_))
                ),
                "{n}"
            );
        }
        let l1 = diffusers_source(&cfg, "single_blocks.1.linear1");
        let Some(DiffusersSource::Fused(parts)) = l1 else {
            panic!("{l1:?}")
        };
        let rows: Vec<usize> = parts.iter().map(|p| p.1).collect();
        assert_eq!(rows, [32, 32, 32, 128]);
        assert_eq!(parts[3].0, "single_transformer_blocks.1.proj_mlp");
    }
}
