//! Weights by name: the real `fluxd` binary against a loopback server that answers like the
//! Hugging Face Hub (`HF_ENDPOINT`): the routes hf-hub calls (`/api/models/{repo}/revision/{rev}`
//! for the file list, `/{repo}/resolve/{rev}/{file}` with `Range` requests, the `etag` and
//! `x-repo-commit` headers it reads), 401/403 for a gated repository, and a failed chunk to show
//! that a download resumes where it stopped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use fluxd_engine::fp8::{fp8_transformer_tensors, Fp8Layout};
use fluxd_engine::tiny_init::{write_safetensors, TensorMap};
use fluxd_engine::tiny_model::{write_tiny_model, TinyPreset};
use fluxd_engine::transformer::{random_canonical_weights, FluxConfig};
use sha2::{Digest, Sha256};

const SEED: u64 = 7;
const TOKEN: &str = "hf_test_secret";
/// hf-hub's download chunk: the failed request is the second chunk of the big file.
const CHUNK: usize = 10_000_000;

struct FakeRepo {
    sha: String,
    files: BTreeMap<String, Vec<u8>>,
    gated: bool,
}

#[derive(Default)]
struct HubState {
    repos: BTreeMap<String, FakeRepo>,
    /// (repo/file, Range header) of every file request.
    log: Vec<(String, String)>,
    /// Answer 500 once to the request for this file starting at this offset.
    fail_once: Option<(String, usize)>,
}

type Shared = Arc<Mutex<HubState>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, HubState> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

async fn info(
    State(s): State<Shared>,
    UrlPath((owner, name, _rev)): UrlPath<(String, String, String)>,
) -> Response {
    let s = lock(&s);
    let Some(repo) = s.repos.get(&format!("{owner}/{name}")) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let siblings: Vec<_> = repo
        .files
        .keys()
        .map(|f| serde_json::json!({ "rfilename": f }))
        .collect();
    Json(serde_json::json!({ "sha": repo.sha, "siblings": siblings })).into_response()
}

async fn resolve(
    State(s): State<Shared>,
    UrlPath((owner, name, _rev, file)): UrlPath<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut s = lock(&s);
    let key = format!("{owner}/{name}");
    let range = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    s.log.push((format!("{key}/{file}"), range.clone()));
    let Some(repo) = s.repos.get(&key) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if repo.gated {
        match headers.get("authorization").and_then(|v| v.to_str().ok()) {
            None => return StatusCode::UNAUTHORIZED.into_response(),
            Some(a) if a != format!("Bearer {TOKEN}") => {
                return StatusCode::FORBIDDEN.into_response()
            }
            Some(_) => {}
        }
    }
    let Some(data) = repo.files.get(&file) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let (data, sha) = (data.clone(), repo.sha.clone());
    let etag = format!("\"{:x}\"", Sha256::digest(&data));
    let (start, end) = match range.strip_prefix("bytes=").and_then(|r| r.split_once('-')) {
        Some((a, b)) => {
            let a: usize = a.parse().unwrap_or(0);
            // HTTP clamps the end to the last byte (hf-hub asks one past it).
            let b = b
                .parse::<usize>()
                .unwrap_or(data.len() - 1)
                .min(data.len() - 1);
            (a, b)
        }
        None => (0, data.len() - 1),
    };
    if s.fail_once.as_ref() == Some(&(format!("{key}/{file}"), start)) {
        s.fail_once = None;
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let mut resp = data[start..=end].to_vec().into_response();
    let h = resp.headers_mut();
    h.insert("etag", etag.parse().expect("header"));
    h.insert("x-repo-commit", sha.parse().expect("header"));
    if !range.is_empty() {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        let cr = format!("bytes {start}-{end}/{}", data.len());
        resp.headers_mut()
            .insert("content-range", cr.parse().expect("header"));
    }
    resp
}

/// Starts the fake Hub on a loopback port (its runtime lives as long as the test process).
fn start_hub(state: Shared) -> String {
    let app = Router::new()
        .route("/api/models/{owner}/{name}/revision/{rev}", get(info))
        .route("/{owner}/{name}/resolve/{rev}/{*file}", get(resolve))
        .with_state(state);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(listener.local_addr().expect("addr")).expect("send");
            axum::serve(listener, app).await.expect("serve");
        });
    });
    format!("http://{}", rx.recv().expect("address"))
}

/// Every file under `dir`, by path relative to it.
fn files_of(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p
                    .strip_prefix(dir)
                    .expect("prefix")
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, std::fs::read(&p).expect("read"));
            }
        }
    }
    out
}

struct Env {
    endpoint: String,
    hf_home: PathBuf,
    token: Option<&'static str>,
    offline: bool,
    cwd: PathBuf,
}

fn fluxd(env: &Env, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fluxd"));
    cmd.args(args)
        .current_dir(&env.cwd)
        .env("HF_ENDPOINT", &env.endpoint)
        .env("HF_HOME", &env.hf_home)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE");
    if let Some(t) = env.token {
        cmd.env("HF_TOKEN", t);
    }
    if env.offline {
        cmd.env("HF_HUB_OFFLINE", "1");
    }
    cmd.output().expect("run fluxd")
}

fn generate(env: &Env, model: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "generate",
        "--model",
        model,
        "--prompt",
        "a fox",
        "--seed",
        "3",
        "--steps",
        "2",
        "--width",
        "64",
        "--height",
        "48",
        "--max-sequence-length",
        "32",
        "--output",
    ];
    args.push(out.to_str().expect("utf-8"));
    args.extend_from_slice(extra);
    fluxd(env, &args)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn pixels(p: &Path) -> Vec<u8> {
    image::open(p).expect("png").to_rgb8().into_raw()
}

#[test]
fn weights_by_name_from_a_hub() {
    let root = std::env::temp_dir().join(format!("fluxd-hub-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let local = root.join("local");
    write_tiny_model(&local, SEED, TinyPreset::Tiny).expect("tiny");
    // The fp8 transformer of the same model, with a 12 MB tensor the loader never asks for,
    // so that its download takes two of hf-hub's 10 MB chunks.
    let cfg = FluxConfig::tiny();
    let mut fp8: TensorMap = fp8_transformer_tensors(
        &cfg,
        &random_canonical_weights(&cfg, SEED).expect("w"),
        Fp8Layout::Kijai,
    )
    .expect("fp8");
    fp8.insert(
        "padding".into(),
        candle_core::Tensor::zeros(
            12_000_000,
            candle_core::DType::U8,
            &candle_core::Device::Cpu,
        )
        .expect("pad"),
    );
    let fp8_file = root.join("fp8/kijai-padded.safetensors");
    write_safetensors(&fp8_file, &fp8).expect("write fp8");
    let config = std::fs::read(local.join("transformer/config.json")).expect("config");
    // Tiny head sizes need the config beside a single file (FLUX.1's are inferred).
    std::fs::write(root.join("fp8/config.json"), &config).expect("config beside");

    let mut tiny_files = files_of(&local);
    tiny_files.insert("README.md".into(), b"# tiny".to_vec());
    // BFL single files beside the diffusers folders are not fetched.
    tiny_files.insert("flux1-dev.safetensors".into(), vec![0; 1000]);
    let state: Shared = Arc::default();
    {
        let mut s = lock(&state);
        s.repos.insert(
            "testorg/tiny-flux".into(),
            FakeRepo {
                sha: "a".repeat(40),
                files: tiny_files,
                gated: false,
            },
        );
        let big = std::fs::read(&fp8_file).expect("read fp8");
        assert!(big.len() > CHUNK + 1_000_000);
        s.repos.insert(
            "testorg/gated-fp8".into(),
            FakeRepo {
                sha: "b".repeat(40),
                files: BTreeMap::from([
                    ("kijai-padded.safetensors".to_string(), big),
                    ("config.json".to_string(), config),
                ]),
                gated: true,
            },
        );
        s.fail_once = Some(("testorg/gated-fp8/kijai-padded.safetensors".into(), CHUNK));
    }
    let mut env = Env {
        endpoint: start_hub(state.clone()),
        hf_home: root.join("hf"),
        token: None,
        offline: false,
        cwd: root.clone(),
    };

    // A repo id: fetched into the standard cache layout, same image as the local folder.
    let (by_name, by_path) = (root.join("by-name.png"), root.join("by-path.png"));
    let out = generate(&env, "testorg/tiny-flux", &by_name, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        generate(&env, local.to_str().expect("utf-8"), &by_path, &[])
            .status
            .success()
    );
    assert_eq!(pixels(&by_name), pixels(&by_path));
    let snapshot = env
        .hf_home
        .join("hub/models--testorg--tiny-flux/snapshots")
        .join("a".repeat(40));
    assert!(snapshot.join("transformer/config.json").is_file());
    let fetched: Vec<String> = lock(&state).log.iter().map(|(f, _)| f.clone()).collect();
    for skipped in [
        "README.md",
        "flux1-dev.safetensors",
        "redux/",
        "safety_checker/",
    ] {
        assert!(
            !fetched.iter().any(|f| f.contains(skipped)),
            "{skipped} was fetched: {fetched:?}"
        );
    }

    // A gated repo: no token, a token without access, then the right one.
    let out = fluxd(
        &env,
        &["model", "download", "testorg/gated-fp8:config.json"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("gated") && stderr(&out).contains("HF_TOKEN"),
        "{}",
        stderr(&out)
    );
    env.token = Some("hf_wrong");
    let out = fluxd(
        &env,
        &["model", "download", "testorg/gated-fp8:config.json"],
    );
    assert!(
        !out.status.success() && stderr(&out).contains("no access"),
        "{}",
        stderr(&out)
    );
    env.token = Some(TOKEN);
    let out = fluxd(
        &env,
        &["model", "download", "testorg/gated-fp8:config.json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // The big file's second chunk fails once; the next run asks only for what is missing.
    let fp8_name = "testorg/gated-fp8:kijai-padded.safetensors";
    let (fp8_hub, fp8_local) = (root.join("fp8-hub.png"), root.join("fp8-local.png"));
    let out = generate(
        &env,
        "testorg/tiny-flux",
        &fp8_hub,
        &["--transformer", fp8_name],
    );
    assert!(
        !out.status.success(),
        "the injected failure must stop the first run"
    );
    let before = lock(&state).log.len();
    let out = generate(
        &env,
        "testorg/tiny-flux",
        &fp8_hub,
        &["--transformer", fp8_name],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let resumed: Vec<String> = lock(&state).log[before..]
        .iter()
        .filter(|(f, _)| f.ends_with("kijai-padded.safetensors"))
        .map(|(_, r)| r.clone())
        .collect();
    assert!(
        resumed
            .iter()
            .any(|r| r.starts_with(&format!("bytes={CHUNK}-"))),
        "{resumed:?}"
    );
    assert!(
        !resumed
            .iter()
            .any(|r| r.starts_with("bytes=0-") && r != "bytes=0-0"),
        "the first chunk was fetched again: {resumed:?}"
    );
    let local_fp8 = fp8_file.to_str().expect("utf-8");
    let out = generate(
        &env,
        local.to_str().expect("utf-8"),
        &fp8_local,
        &["--transformer", local_fp8],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(pixels(&fp8_hub), pixels(&fp8_local));

    // Offline: the cache only, and a clear error for what it lacks.
    env.offline = true;
    env.endpoint = "http://127.0.0.1:9".into();
    let out = generate(
        &env,
        "testorg/tiny-flux",
        &root.join("offline.png"),
        &["--transformer", fp8_name],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = generate(&env, "testorg/never-fetched", &root.join("x.png"), &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not in the Hugging Face cache"),
        "{}",
        stderr(&out)
    );

    // A local folder spelled like a repo id wins, hub or not.
    env.offline = false;
    let spelled = root.join("testorg/never-fetched");
    std::fs::create_dir_all(root.join("testorg")).expect("mkdir");
    std::fs::rename(&local, &spelled).expect("move");
    let out = generate(
        &env,
        "testorg/never-fetched",
        &root.join("local-wins.png"),
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(pixels(&root.join("local-wins.png")), pixels(&by_path));
    let _ = std::fs::remove_dir_all(&root);
}
