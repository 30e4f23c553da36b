//! Weights by name through the Hugging Face Hub: `--model black-forest-labs/FLUX.1-dev`,
//! `--transformer city96/FLUX.1-dev-gguf:flux1-dev-Q4_K_S.gguf` (optionally `owner/name@rev`).
//!
//! Downloads go through the `hf-hub` crate into the standard cache (`HF_HUB_CACHE`, else
//! `$HF_HOME/hub`, else `~/.cache/huggingface/hub`), where Python's `huggingface_hub` finds them
//! too, with a progress bar per file. They resume: hf-hub writes 10 MB chunks into
//! `<blob>.sync.part` and records how many bytes are complete, so a later run asks only for the
//! rest (HTTP `Range`). `HF_TOKEN` (or the token file `huggingface-cli login` writes) opens gated
//! repos, `HF_ENDPOINT` points at a mirror, `HF_HUB_OFFLINE=1` uses the cache only. A local path
//! that exists always wins over a repo id of the same spelling.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use fluxd_engine::model_dir::ModelPaths;
use hf_hub::api::tokio::{Api, ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

/// A repository at a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoRef {
    /// `owner/name`.
    pub id: String,
    /// Branch, tag or commit (`main` unless `@rev` is given).
    pub revision: String,
}

impl RepoRef {
    fn repo(&self) -> Repo {
        Repo::with_revision(self.id.clone(), RepoType::Model, self.revision.clone())
    }
}

/// `owner/name` or `owner/name@rev`, if `s` is spelled like one.
pub fn parse_repo(s: &str) -> Option<RepoRef> {
    let (id, revision) = match s.split_once('@') {
        Some((id, rev)) if !rev.is_empty() => (id, rev),
        Some(_) => return None,
        None => (s, "main"),
    };
    let mut parts = id.split('/');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            p.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        })
    };
    (ok(parts.next()) && ok(parts.next()) && parts.next().is_none()).then(|| RepoRef {
        id: id.to_string(),
        revision: revision.to_string(),
    })
}

/// `owner/name[@rev]:path/in/repo`, if `s` is spelled like one.
pub fn parse_repo_file(s: &str) -> Option<(RepoRef, String)> {
    let (repo, file) = s.split_once(':')?;
    if file.is_empty() || file.starts_with('/') || file.split('/').any(|c| c == "..") {
        return None;
    }
    Some((parse_repo(repo)?, file.to_string()))
}

/// Which components' weights come from elsewhere (`--transformer`, `--vae`), so their files are
/// not fetched.
#[derive(Debug, Clone, Copy, Default)]
pub struct Skip {
    /// The transformer is given as a file.
    pub transformer: bool,
    /// The VAE is given as a file.
    pub vae: bool,
}

/// The files of a FLUX.1 model repository fluxd reads: `model_index.json`, and the configs,
/// tokenizer files and safetensors weights of the diffusers folders; BFL's single files at the
/// root only for a component whose folder the repository lacks. Never pickles, ONNX or images.
pub fn wanted_files(files: &[String], skip: Skip) -> Vec<String> {
    let has_dir = |d: &str| files.iter().any(|f| f.starts_with(&format!("{d}/")));
    let kept = |f: &str| {
        [".json", ".safetensors", ".txt", ".model"]
            .iter()
            .any(|e| f.ends_with(e))
    };
    files
        .iter()
        .filter(|f| kept(f))
        .filter(|f| match f.split_once('/') {
            Some((dir, _)) => match dir {
                "scheduler" | "tokenizer" | "tokenizer_2" | "text_encoder" | "text_encoder_2" => {
                    true
                }
                "transformer" => !skip.transformer,
                "vae" => !skip.vae,
                _ => false,
            },
            None if f.as_str() == "model_index.json" => true,
            None if f.as_str() == "ae.safetensors" => !skip.vae && !has_dir("vae"),
            None => {
                !skip.transformer
                    && !has_dir("transformer")
                    && fluxd_engine::model_dir::BFL_TRANSFORMER_FILES.contains(&f.as_str())
            }
        })
        .cloned()
        .collect()
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| matches!(v.trim(), "1" | "true" | "TRUE" | "yes"))
}

fn cache() -> Cache {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(dir) => Cache::new(PathBuf::from(dir)),
        None => Cache::from_env(),
    }
}

fn endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty())
        .map_or_else(
            || "https://huggingface.co".to_string(),
            |e| e.trim_end_matches('/').to_string(),
        )
}

fn api() -> Result<Api> {
    let mut builder = ApiBuilder::from_cache(cache())
        .with_endpoint(endpoint())
        .with_progress(true)
        .with_user_agent("fluxd", env!("CARGO_PKG_VERSION"));
    if let Some(token) = std::env::var("HF_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        builder = builder.with_token(Some(token.trim().to_string()));
    }
    builder
        .build()
        .context("setting up the Hugging Face Hub client")
}

/// A Hub error in words that say what to do.
fn explain(err: ApiError, repo: &RepoRef, file: &str) -> anyhow::Error {
    let status = match &err {
        ApiError::RequestError(e) => e.status(),
        ApiError::TooManyRetries(inner) => match inner.as_ref() {
            ApiError::RequestError(e) => e.status(),
            _ => None,
        },
        _ => None,
    };
    let page = format!("{}/{}", endpoint(), repo.id);
    match status.map(|s| s.as_u16()) {
        Some(401) => anyhow::anyhow!(
            "{} is gated or private: set HF_TOKEN to an access token of an account that accepted \
             its license at {page} (the server answered 401 for {file})",
            repo.id
        ),
        Some(403) => anyhow::anyhow!(
            "the token in HF_TOKEN has no access to {}: accept its license at {page} with the \
             token's account, or use a token with read access (403 for {file})",
            repo.id
        ),
        Some(404) => anyhow::anyhow!(
            "{} has no `{file}` at revision `{}` (or no such repository)",
            repo.id,
            repo.revision
        ),
        _ => anyhow::Error::new(err).context(format!("downloading {file} from {}", repo.id)),
    }
}

/// Whether a name may be downloaded or must already be in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// Download what the cache lacks (unless `HF_HUB_OFFLINE=1`).
    Allowed,
    /// The cache only (e.g. `fluxd model plan`, which reads headers, not 30 GB of weights).
    CacheOnly,
}

impl Fetch {
    fn cache_only(self) -> bool {
        self == Self::CacheOnly || offline()
    }
}

/// Why a name cannot be served from the cache alone.
fn not_cached(what: &str) -> String {
    let why = if offline() {
        "HF_HUB_OFFLINE=1 forbids downloading it"
    } else {
        "fetch it first with `fluxd model download`"
    };
    format!(
        "{what} is not in the Hugging Face cache ({}): {why}",
        cache().path().display()
    )
}

/// A model folder: `arg` itself if it exists, else the snapshot of the repository it names,
/// fetched (or found in the cache) with the files [`wanted_files`] picks.
pub async fn model_dir(arg: &Path, skip: Skip, fetch: Fetch) -> Result<PathBuf> {
    let Some(repo) = repo_arg(arg) else {
        return Ok(arg.to_path_buf());
    };
    let cached = cache().repo(repo.repo());
    if fetch.cache_only() {
        return cached
            .get("model_index.json")
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .with_context(|| not_cached(&repo.id));
    }
    let api = api()?.repo(repo.repo());
    let info = api
        .info()
        .await
        .map_err(|e| explain(e, &repo, "the repository's file list"))?;
    let files: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let wanted = wanted_files(&files, skip);
    if !wanted.iter().any(|f| f == "model_index.json") {
        bail!(
            "{} is not a diffusers FLUX.1 model repository (no model_index.json)",
            repo.id
        );
    }
    tracing::info!(repo = %repo.id, revision = %repo.revision, files = wanted.len(), "fetching the model");
    for file in &wanted {
        api.get(file).await.map_err(|e| explain(e, &repo, file))?;
    }
    Ok(cached.pointer_path(&info.sha))
}

/// A weight file: `arg` itself if it exists, else the file `owner/name[@rev]:path` names, fetched
/// (or found in the cache).
pub async fn weight_file(arg: &Path, fetch: Fetch) -> Result<PathBuf> {
    if arg.exists() {
        return Ok(arg.to_path_buf());
    }
    let Some((repo, file)) = arg.to_str().and_then(parse_repo_file) else {
        return Ok(arg.to_path_buf());
    };
    if fetch.cache_only() {
        return cache()
            .repo(repo.repo())
            .get(&file)
            .with_context(|| not_cached(&format!("{}:{file}", repo.id)));
    }
    api()?
        .repo(repo.repo())
        .get(&file)
        .await
        .map_err(|e| explain(e, &repo, &file))
}

/// One file of the repository `root` names (e.g. `transformer/config.json`), fetched alone;
/// `None` if `root` is not a repository name (a local path, existing or not).
pub async fn repo_file(root: &Path, file: &str, fetch: Fetch) -> Result<Option<PathBuf>> {
    let Some(repo) = repo_arg(root) else {
        return Ok(None);
    };
    let spec = PathBuf::from(format!("{}@{}:{file}", repo.id, repo.revision));
    Ok(Some(weight_file(&spec, fetch).await?))
}

/// An optional [`weight_file`].
pub async fn maybe_weight_file(arg: Option<&Path>, fetch: Fetch) -> Result<Option<PathBuf>> {
    match arg {
        Some(a) => Ok(Some(weight_file(a, fetch).await?)),
        None => Ok(None),
    }
}

/// The model's files as `--model`, `--transformer` and `--vae` name them, each a local path or
/// a Hub name (a component given as a file is not fetched with the folder).
pub async fn model_paths(
    model: &Path,
    transformer: Option<&Path>,
    vae: Option<&Path>,
    fetch: Fetch,
) -> Result<ModelPaths> {
    let skip = Skip {
        transformer: transformer.is_some(),
        vae: vae.is_some(),
    };
    let root = model_dir(model, skip, fetch).await?;
    let transformer = maybe_weight_file(transformer, fetch).await?;
    let vae = maybe_weight_file(vae, fetch).await?;
    ModelPaths::resolve(&root, transformer.as_deref(), vae.as_deref())
        .with_context(|| format!("reading the model folder {}", root.display()))
}

/// The repository `arg` names, unless a local path of that spelling exists.
fn repo_arg(arg: &Path) -> Option<RepoRef> {
    if arg.exists() {
        return None;
    }
    arg.to_str().and_then(parse_repo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_specs() {
        let r = parse_repo("black-forest-labs/FLUX.1-dev").expect("repo");
        assert_eq!(
            (r.id.as_str(), r.revision.as_str()),
            ("black-forest-labs/FLUX.1-dev", "main")
        );
        assert_eq!(
            parse_repo("a/b@v1.0").map(|r| r.revision),
            Some("v1.0".into())
        );
        for bad in [
            "./models/x",
            "/abs/path",
            "one",
            "a/b/c",
            "a/b@",
            "a/.b",
            "a b/c",
        ] {
            assert!(parse_repo(bad).is_none(), "{bad}");
        }
        let (r, f) = parse_repo_file("city96/FLUX.1-dev-gguf:flux1-dev-Q4_K_S.gguf").expect("file");
        assert_eq!(
            (r.id.as_str(), f.as_str()),
            ("city96/FLUX.1-dev-gguf", "flux1-dev-Q4_K_S.gguf")
        );
        assert!(parse_repo_file("a/b:../../etc/passwd").is_none());
        assert!(parse_repo_file("a/b:").is_none());
    }

    #[test]
    fn only_the_files_fluxd_reads() {
        let files: Vec<String> = [
            ".gitattributes",
            "README.md",
            "dev_grid.jpg",
            "model_index.json",
            "flux1-dev.safetensors",
            "ae.safetensors",
            "scheduler/scheduler_config.json",
            "text_encoder/config.json",
            "text_encoder/model.safetensors",
            "text_encoder_2/model-00001-of-00002.safetensors",
            "text_encoder_2/model.safetensors.index.json",
            "tokenizer/merges.txt",
            "tokenizer_2/spiece.model",
            "transformer/diffusion_pytorch_model-00001-of-00003.safetensors",
            "transformer/diffusion_pytorch_model.bin",
            "vae/config.json",
            "vae/diffusion_pytorch_model.safetensors",
        ]
        .map(String::from)
        .to_vec();
        let got = wanted_files(&files, Skip::default());
        assert!(
            got.contains(&"transformer/diffusion_pytorch_model-00001-of-00003.safetensors".into())
        );
        assert!(got.contains(&"tokenizer_2/spiece.model".into()));
        for not in [
            "flux1-dev.safetensors",
            "ae.safetensors",
            "README.md",
            "dev_grid.jpg",
        ] {
            assert!(!got.contains(&not.to_string()), "{not}");
        }
        assert!(!got.iter().any(|f| f.ends_with(".bin")));
        let skip = Skip {
            transformer: true,
            vae: false,
        };
        assert!(!wanted_files(&files, skip)
            .iter()
            .any(|f| f.starts_with("transformer/")));
        // A repository with only BFL single files: those are the weights.
        let bfl: Vec<String> = [
            "model_index.json",
            "flux1-dev.safetensors",
            "ae.safetensors",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(wanted_files(&bfl, Skip::default()), bfl);
    }
}
