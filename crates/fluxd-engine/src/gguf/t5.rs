//! llama.cpp's `t5encoder` layout, as city96's `t5-v1_1-xxl-encoder-gguf` files use it: tensor
//! names (gguf-py `constants.py` `MODEL_TENSOR.ENC_*`) and the hyperparameters in the metadata.
//!
//! The encoder loads transformers `T5EncoderModel` names; [`llama_name`] gives the name the same
//! tensor has in such a file, the mapping ComfyUI-GGUF's `T5_SD_MAP` (`loader.py`) undoes.

/// The value of `general.architecture` in these files.
pub const ARCH: &str = "t5encoder";

/// Per-block tensors: transformers suffix after `encoder.block.{i}.`, llama.cpp suffix after
/// `enc.blk.{i}.`.
const BLOCK: &[(&str, &str)] = &[
    ("layer.0.SelfAttention.q.weight", "attn_q.weight"),
    ("layer.0.SelfAttention.k.weight", "attn_k.weight"),
    ("layer.0.SelfAttention.v.weight", "attn_v.weight"),
    ("layer.0.SelfAttention.o.weight", "attn_o.weight"),
    ("layer.0.layer_norm.weight", "attn_norm.weight"),
    (
        "layer.0.SelfAttention.relative_attention_bias.weight",
        "attn_rel_b.weight",
    ),
    ("layer.1.DenseReluDense.wi_0.weight", "ffn_gate.weight"),
    ("layer.1.DenseReluDense.wi_1.weight", "ffn_up.weight"),
    // The ungated feed-forward of the original T5 (`wi`) is llama.cpp's `ffn_up` too.
    ("layer.1.DenseReluDense.wi.weight", "ffn_up.weight"),
    ("layer.1.DenseReluDense.wo.weight", "ffn_down.weight"),
    ("layer.1.layer_norm.weight", "ffn_norm.weight"),
];

/// The llama.cpp name of a transformers `T5EncoderModel` tensor, if it has one.
pub fn llama_name(name: &str) -> Option<String> {
    match name {
        "shared.weight" | "encoder.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "encoder.final_layer_norm.weight" => return Some("enc.output_norm.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("encoder.block.")?;
    let (idx, suffix) = rest.split_once('.')?;
    idx.parse::<usize>().ok()?;
    let (_, llama) = BLOCK.iter().find(|(hf, _)| *hf == suffix)?;
    Some(format!("enc.blk.{idx}.{llama}"))
}

/// Metadata keys of the encoder's hyperparameters (gguf-py `Keys.LLM` / `Keys.Attention`).
pub mod keys {
    /// Width of the residual stream (`d_model`).
    pub const EMBEDDING_LENGTH: &str = "t5encoder.embedding_length";
    /// Width of the feed-forward layer (`d_ff`).
    pub const FEED_FORWARD_LENGTH: &str = "t5encoder.feed_forward_length";
    /// Number of blocks.
    pub const BLOCK_COUNT: &str = "t5encoder.block_count";
    /// Attention heads.
    pub const HEAD_COUNT: &str = "t5encoder.attention.head_count";
    /// Width of one head's keys (`d_kv`).
    pub const KEY_LENGTH: &str = "t5encoder.attention.key_length";
    /// Width of one head's values (`d_kv`).
    pub const VALUE_LENGTH: &str = "t5encoder.attention.value_length";
    /// RMS norm epsilon.
    pub const RMS_EPS: &str = "t5encoder.attention.layer_norm_rms_epsilon";
    /// Buckets of the relative position bias.
    pub const REL_BUCKETS: &str = "t5encoder.attention.relative_buckets_count";
    /// Positions the model was trained on.
    pub const CONTEXT_LENGTH: &str = "t5encoder.context_length";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_llama_cpp() {
        let cases = [
            ("shared.weight", "token_embd.weight"),
            ("encoder.final_layer_norm.weight", "enc.output_norm.weight"),
            (
                "encoder.block.3.layer.0.SelfAttention.o.weight",
                "enc.blk.3.attn_o.weight",
            ),
            (
                "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                "enc.blk.0.attn_rel_b.weight",
            ),
            (
                "encoder.block.23.layer.1.DenseReluDense.wi_0.weight",
                "enc.blk.23.ffn_gate.weight",
            ),
            (
                "encoder.block.23.layer.1.DenseReluDense.wi_1.weight",
                "enc.blk.23.ffn_up.weight",
            ),
            (
                "encoder.block.1.layer.1.layer_norm.weight",
                "enc.blk.1.ffn_norm.weight",
            ),
        ];
        for (hf, llama) in cases {
            assert_eq!(llama_name(hf).as_deref(), Some(llama), "{hf}");
        }
        assert_eq!(
            llama_name("encoder.block.x.layer.0.layer_norm.weight"),
            None
        );
        assert_eq!(
            llama_name("decoder.block.0.layer.0.layer_norm.weight"),
            None
        );
    }
}
