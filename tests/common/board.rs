//! A real `autoprune serve` process on loopback, its tokens, worker processes, and a small
//! blocking HTTP client (reqwest on a private tokio runtime) for the board tests.

use super::autoprune;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A running board server (killed when dropped).
pub struct Board {
    child: Option<Child>,
    /// Its base URL.
    pub url: String,
    /// Its data folder.
    pub data: PathBuf,
    args: Vec<String>,
    port: u16,
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn_server(data: &Path, port: u16, args: &[String]) -> (Child, String) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.with_extension("serve.log"))
        .unwrap();
    let mut child = autoprune()
        .arg("serve")
        .arg("--data")
        .arg(data)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| {
            let log = std::fs::read_to_string(data.with_extension("serve.log")).unwrap_or_default();
            panic!("serve did not start: {line:?}\n{log}")
        })
        .to_string();
    (child, url)
}

impl Board {
    /// Start `serve` on `data` at a free port with `args`.
    pub fn start(data: &Path, args: &[&str]) -> Board {
        let port = free_port();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (child, url) = spawn_server(data, port, &args);
        Board {
            child: Some(child),
            url,
            data: data.to_path_buf(),
            args,
            port,
        }
    }

    /// `kill -9` the server.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same data and port.
    pub fn restart(&mut self) {
        self.kill9();
        let (child, url) = spawn_server(&self.data, self.port, &self.args);
        assert_eq!(url, self.url);
        self.child = Some(child);
    }

    /// A new token for `name` (a worker's when `worker`).
    pub fn token(&self, name: &str, worker: bool) -> String {
        let mut c = autoprune();
        c.args(["tokens", "add", "--data"])
            .arg(&self.data)
            .args(["--name", name]);
        if worker {
            c.arg("--worker");
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    }

    /// Start a worker process on this board with `args` (its log next to the data folder).
    pub fn worker(&self, token: &str, instance: &str, args: &[&str]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.with_extension(format!("{instance}.log")))
            .unwrap();
        autoprune()
            .args([
                "worker",
                "--server",
                &self.url,
                "--instance",
                instance,
                "--poll",
                "0.2",
            ])
            .args(args)
            .env("AUTOPRUNE_WORKER_TOKEN", token)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// A worker's log so far.
    pub fn worker_log(&self, instance: &str) -> String {
        std::fs::read_to_string(self.data.with_extension(format!("{instance}.log")))
            .unwrap_or_default()
    }

    /// GET a path.
    pub fn get(&self, path: &str, token: Option<&str>) -> Resp {
        request(
            reqwest::Method::GET,
            &format!("{}{path}", self.url),
            token,
            None,
        )
    }

    /// POST a JSON body.
    pub fn post_json(&self, path: &str, token: Option<&str>, body: &Value) -> Resp {
        let b = (
            "application/json".to_string(),
            serde_json::to_vec(body).unwrap(),
        );
        request(
            reqwest::Method::POST,
            &format!("{}{path}", self.url),
            token,
            Some(b),
        )
    }

    /// POST a raw body with its content type.
    pub fn post_raw(&self, path: &str, token: Option<&str>, ctype: &str, body: Vec<u8>) -> Resp {
        request(
            reqwest::Method::POST,
            &format!("{}{path}", self.url),
            token,
            Some((ctype.to_string(), body)),
        )
    }

    /// Submit a metric file with form fields.
    pub fn submit(
        &self,
        token: &str,
        file_name: &str,
        bytes: &[u8],
        fields: &[(&str, &str)],
    ) -> Resp {
        let mut parts: Vec<(&str, Option<&str>, &[u8])> = vec![("metric", Some(file_name), bytes)];
        for (k, v) in fields {
            parts.push((k, None, v.as_bytes()));
        }
        let (ctype, body) = multipart(&parts);
        self.post_raw("/v1/submissions", Some(token), &ctype, body)
    }

    /// Job counts by state (`/v1/health`).
    pub fn jobs(&self) -> Value {
        self.get("/v1/health", None).body["jobs"].clone()
    }

    /// Wait (up to `limit`) until no job is queued or leased.
    pub fn wait_idle(&self, limit: Duration) {
        wait_until(limit, "every job finished", || {
            let j = self.jobs();
            j.get("queued").is_none() && j.get("leased").is_none()
        });
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Resp {
    /// Status.
    pub status: u16,
    /// Headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body as text.
    pub text: String,
    /// The body as JSON (`Null` if it is not).
    pub body: Value,
}

impl Resp {
    /// The error code of a refusal.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

fn request(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<(String, Vec<u8>)>,
) -> Resp {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let mut r = c.request(method, url);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some((ctype, b)) = body {
            r = r.header("content-type", ctype).body(b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            text,
            body,
        }
    })
}

pub use autoprune::board::bench::multipart;

/// The board tests' reduced protocol: windows of 128 tokens, 2 calibration windows, 4
/// evaluation windows (a job takes a few seconds on SmolLM2).
pub const TINY_PROTOCOL: [&str; 6] = [
    "--seqlen",
    "128",
    "--calib-windows",
    "2",
    "--eval-windows",
    "4",
];

/// Poll `f` every 100 ms until it holds; panic after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
