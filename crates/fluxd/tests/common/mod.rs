//! Helpers shared by the tests that run the real `fluxd` binary: a server on a loopback port
//! with a fresh data directory (tiny model), plain HTTP/1.1 over a TCP socket, keys and
//! fine-tunes made through the CLI.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;

use fluxd_engine::lora::{write_random_lora, LoraFormat};
use fluxd_engine::transformer::FluxConfig;
use serde_json::{json, Value};

pub fn fluxd(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_fluxd"))
        .args(args)
        .output()
        .expect("run fluxd");
    assert!(
        out.status.success(),
        "fluxd {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fluxd-serve-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

/// A running `fluxd serve`, killed when dropped.
pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub fn start(data: &Path, extra: &[&str]) -> Server {
        // Warnings and errors only: the server's log lands in the test output unfiltered.
        Server::launch(data, "127.0.0.1:0", extra, "warn", Stdio::inherit())
    }

    /// Starts `fluxd serve` on `listen` with `RUST_LOG=rust_log`, its log going to `stderr`, and
    /// waits until it is ready.
    pub fn launch(
        data: &Path,
        listen: &str,
        extra: &[&str],
        rust_log: &str,
        stderr: Stdio,
    ) -> Server {
        let mut args = vec!["serve", "--data-dir", s(data), "--listen", listen];
        args.extend_from_slice(extra);
        Server::run_fluxd(&args, &[], rust_log, stderr)
    }

    /// Starts `fluxd ARGS` (a `serve` or a `worker --listen ...`) with the environment `envs`
    /// added, reads the address it prints first, and waits until its `/readyz` says ready.
    pub fn run_fluxd(
        args: &[&str],
        envs: &[(&str, &str)],
        rust_log: &str,
        stderr: Stdio,
    ) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fluxd"))
            .args(args)
            .envs(envs.iter().copied())
            .env("RUST_LOG", rust_log)
            // Colour is decided by whether stderr is a terminal, not by NO_COLOR: a log sent to
            // a file must come out plain by itself (the chaos test checks).
            .env_remove("NO_COLOR")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn fluxd");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let base = line
            .trim()
            .split_once(" listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .1
            .to_owned();
        let server = Server { child, base };
        for _ in 0..600 {
            if server.get("/readyz", None).status == 200 {
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("fluxd {args:?} never became ready");
    }

    /// SIGTERM, then the exit status: a graceful shutdown exits 0.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success());
        self.child.wait().expect("wait for fluxd")
    }

    pub fn authority(&self) -> &str {
        self.base.strip_prefix("http://").expect("http base")
    }

    pub fn request(&self, method: &str, target: &str, key: Option<&str>, body: &[u8]) -> Reply {
        request(self.authority(), method, target, key, body)
    }

    pub fn get(&self, target: &str, key: Option<&str>) -> Reply {
        self.request("GET", target, key, b"")
    }

    pub fn post_json(&self, target: &str, key: Option<&str>, body: &Value) -> Reply {
        self.request("POST", target, key, body.to_string().as_bytes())
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 exchange with `Connection: close`; the server sends whole bodies with a
/// Content-Length, so reading to the end is the body.
pub fn request(
    authority: &str,
    method: &str,
    target: &str,
    key: Option<&str>,
    body: &[u8],
) -> Reply {
    try_request(authority, method, target, key, body).expect("HTTP exchange")
}

/// [`request`], with connection failures (a server that is down or dies mid-request) as errors.
pub fn try_request(
    authority: &str,
    method: &str,
    target: &str,
    key: Option<&str>,
    body: &[u8],
) -> std::io::Result<Reply> {
    try_request_with(authority, method, target, key, &[], body)
}

/// [`try_request`] with extra request headers.
pub fn try_request_with(
    authority: &str,
    method: &str,
    target: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect(authority)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(key) = key {
        head.push_str(&format!("x-key: {key}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let cut = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "reply cut short");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(cut)?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(cut)?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

pub fn create_key(data: &Path, tenant: &str) -> String {
    create_key_with(data, tenant, &[])
}

/// A key of `tenant`, made with the extra `fluxd keys create` arguments `extra` (a
/// `--database`, say).
pub fn create_key_with(data: &Path, tenant: &str, extra: &[&str]) -> String {
    let mut args = vec!["keys", "create", "--tenant", tenant, "--data-dir", s(data)];
    args.extend_from_slice(extra);
    let out = fluxd(&args);
    out.lines().last().expect("key line").trim().to_owned()
}

/// A key of `tenant` that may have `limit` unfinished tasks.
pub fn create_key_with_limit(data: &Path, tenant: &str, limit: u32) -> String {
    let limit = limit.to_string();
    let out = fluxd(&[
        "keys",
        "create",
        "--tenant",
        tenant,
        "--max-active-tasks",
        &limit,
        "--data-dir",
        s(data),
    ]);
    out.lines().last().expect("key line").trim().to_owned()
}

/// A `width`×`height` gradient PNG, base64: an image prompt.
pub fn image_prompt_png(width: u32, height: u32) -> String {
    let mut png = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 240 / width) as u8, (y * 240 / height) as u8, 128])
    })
    .write_to(&mut png, image::ImageFormat::Png)
    .expect("encode PNG");
    base64::engine::general_purpose::STANDARD.encode(png.into_inner())
}

pub fn import_lora(data: &Path, tenant: &str, id: &str, extra: &[&str]) {
    let lora = data.join(format!("{id}.safetensors"));
    write_random_lora(&lora, LoraFormat::Kohya, &FluxConfig::tiny(), 4, 1, &|_| {
        true
    })
    .expect("write LoRA");
    let mut args = vec![
        "finetunes",
        "import",
        "--tenant",
        tenant,
        "--id",
        id,
        s(&lora),
        "--data-dir",
        s(data),
    ];
    args.extend_from_slice(extra);
    let out = fluxd(&args);
    assert_eq!(out.lines().last(), Some(id), "{out}");
}

pub fn poll_until_final(server: &Server, polling_url: &str, key: &str) -> Value {
    let target = polling_url
        .strip_prefix(&server.base)
        .unwrap_or_else(|| panic!("{polling_url} is not under {}", server.base));
    for _ in 0..1200 {
        let reply = server.get(target, Some(key));
        assert_eq!(reply.status, 200);
        let body = reply.json();
        if body["status"] != "Pending" {
            return body;
        }
        if let Some(p) = body["progress"].as_f64() {
            assert!((0.0..=1.0).contains(&p), "{body}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("task never finished");
}

pub fn small_request(extra: Value) -> Value {
    let mut body = json!({
        "finetune_id": "my-finetune",
        "prompt": "a photo of TOK",
        "width": 256,
        "height": 256,
        "steps": 2,
    });
    for (k, v) in extra.as_object().expect("object") {
        body[k] = v.clone();
    }
    body
}

/// A stand-in for an OpenAI-compatible language model server on loopback: every request gets a
/// chat completion whose text is `answer`; the request bodies are kept for inspection. Any
/// JSON POST gets that 200, so it also serves as a webhook receiver.
pub struct FakeLlm {
    pub base: String,
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl FakeLlm {
    pub fn start(answer: &str) -> FakeLlm {
        FakeLlm::start_at("127.0.0.1:0", answer)
    }

    /// Like [`FakeLlm::start`], listening on `addr`.
    pub fn start_at(addr: &str, answer: &str) -> FakeLlm {
        let listener = std::net::TcpListener::bind(addr).expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let requests: std::sync::Arc<std::sync::Mutex<Vec<Value>>> = Default::default();
        let seen = requests.clone();
        let reply = serde_json::json!({
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": answer}}],
        })
        .to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                if let Ok(json) = serde_json::from_slice(&body) {
                    seen.lock().expect("lock").push(json);
                }
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{reply}",
                    reply.len()
                );
            }
        });
        FakeLlm { base, requests }
    }
}

/// A Python virtual environment under the target directory with `requirements` installed from
/// PyPI (e.g. `["blackforest==0.1.3"]`), made once; returns its interpreter.
pub fn python_with(requirements: &[&str]) -> PathBuf {
    let name = requirements.join("+");
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-venv"));
    let python = venv.join("bin/python");
    // Made under a temporary name and renamed when complete, so an interrupted install is
    // never taken for a finished one, and two test binaries making it at once do not clash.
    if !python.exists() {
        let staging = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{name}-venv.{}.partial", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        let ok = Command::new("python3")
            .args(["-m", "venv", s(&staging)])
            .status()
            .expect("python3 -m venv");
        assert!(ok.success(), "creating a venv for {name} failed");
        let ok = Command::new(staging.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(requirements)
            .status()
            .expect("pip install");
        assert!(ok.success(), "installing {name} from PyPI failed");
        if std::fs::rename(&staging, &venv).is_err() {
            // Another test made it first.
            let _ = std::fs::remove_dir_all(&staging);
        }
    }
    python
}

/// The Python clients of the reference API, unmodified from PyPI: `blackforest` (the official
/// one) and `black-forest-labs` (its predecessor).
pub const PYTHON_CLIENTS: &[&str] = &["blackforest==0.1.3", "black-forest-labs==1.0.0"];

/// The webhook receiver's rule for the secret of hook `n` (see tests/webhook_receiver.py).
pub fn secret_for(n: usize) -> String {
    if n % 2 == 1 {
        format!("s3cret-{n}")
    } else {
        let key = base64::engine::general_purpose::STANDARD.encode(format!("wh-key-{n}"));
        format!("whsec_{key}")
    }
}

/// `tests/webhook_receiver.py` on a loopback port: verifies every delivery independently of
/// fluxd and records it; killed when dropped.
pub struct Receiver {
    pub child: Child,
    pub base: String,
    pub record: PathBuf,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Receiver {
    /// Starts the receiver recording to `record`, with the script's `options` (e.g.
    /// `--no-secret-header`).
    pub fn start(record: PathBuf, options: &[&str]) -> Receiver {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/webhook_receiver.py");
        let mut child = Command::new(python_with(&["standardwebhooks==1.1.0"]))
            .arg(&script)
            .arg(&record)
            .args(options)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the receiver");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("receiver port");
        let port = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("unexpected receiver line {line:?}"))
            .to_owned();
        Receiver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            record,
        }
    }

    /// Every delivery so far, in arrival order.
    pub fn deliveries(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("record line"))
            .collect()
    }

    /// Waits until every task in `ids` has a verified delivery that was answered 200, or until
    /// `deadline`; the deliveries then.
    pub fn wait_for_verified<'a>(
        &self,
        ids: impl Iterator<Item = &'a str> + Clone,
        deadline: std::time::Instant,
    ) -> Vec<Value> {
        loop {
            let deliveries = self.deliveries();
            let verified = verified_tasks(&deliveries);
            if ids.clone().all(|id| verified.contains(id)) || std::time::Instant::now() > deadline {
                return deliveries;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The tasks among the receiver's `deliveries` with a verified delivery answered 200.
pub fn verified_tasks(deliveries: &[Value]) -> std::collections::HashSet<&str> {
    deliveries
        .iter()
        .filter(|d| d["ok"] == true && d["answered"] == 200)
        .filter_map(|d| d["task_id"].as_str())
        .collect()
}

/// Submits `body` to `path` with `key`, asserts it was accepted, and returns the task's id.
pub fn submit_for_id(server: &Server, key: &str, path: &str, body: &Value) -> String {
    let reply = server.post_json(path, Some(key), body);
    assert_eq!(
        reply.status,
        200,
        "{path}: {}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()["id"].as_str().expect("id").to_owned()
}

/// Submits `body` with `key`, asserts it was accepted, and polls it to its final status.
pub fn submit_and_wait(server: &Server, key: &str, body: &Value) -> Value {
    submit_to_and_wait(server, key, "/v1/flux-pro-finetuned", body).1
}

/// Submits `body` to `path` with `key`, asserts it was accepted, and polls it to its final
/// status: the submit answer and the final `get_result` body.
pub fn submit_to_and_wait(server: &Server, key: &str, path: &str, body: &Value) -> (Value, Value) {
    let submit = server.post_json(path, Some(key), body);
    assert_eq!(
        submit.status,
        200,
        "{path}: {}",
        String::from_utf8_lossy(&submit.body)
    );
    let submitted = submit.json();
    let polling_url = submitted["polling_url"]
        .as_str()
        .expect("polling_url")
        .to_owned();
    let done = poll_until_final(server, &polling_url, key);
    (submitted, done)
}

/// The bytes behind a `Ready` body's `result.sample` (fetched without a key).
pub fn sample_bytes(server: &Server, done: &Value) -> Vec<u8> {
    assert_eq!(done["status"], "Ready", "{done}");
    let sample = done["result"]["sample"].as_str().expect("sample");
    let target = sample.strip_prefix(&server.base).expect("local URL");
    let image = server.get(target, None);
    assert_eq!(image.status, 200);
    image.body
}

/// Splits an `http://authority/target` URL.
pub fn split_url(url: &str) -> (&str, &str) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    rest.split_at(rest.find('/').unwrap_or(rest.len()))
}

/// GETs an `http://` URL without a key.
pub fn download(url: &str) -> Reply {
    let (authority, target) = split_url(url);
    request(authority, "GET", target, None, b"")
}

/// The object under `key` in the blob store at `blobs` (a bucket, say), read with fluxd's own
/// client.
pub fn object(blobs: &str, key: &str) -> Vec<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime
        .block_on(async { fluxd_store::BlobStore::from_url(blobs)?.get(key).await })
        .expect("the object is in the store")
        .to_vec()
}
