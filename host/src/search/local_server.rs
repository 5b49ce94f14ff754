//! A local OpenAI-compatible LLM server for the search (`autoprune search --llm local`):
//! llama.cpp's `llama-server` (built by `./setup.sh`) serving a GGUF model on loopback.
//!
//! [`LocalServer::start`] picks a free port on 127.0.0.1, starts the server in its own process
//! group (a Ctrl-C in the terminal reaches autoprune, which decides when the server stops),
//! with `PR_SET_PDEATHSIG` so that it dies with autoprune even when autoprune is killed, and
//! waits until `/health` answers 200. Its output goes to a log file (the run folder's
//! `llama-server.log`); when it fails to start, the error holds the log's last lines with
//! control characters escaped. Dropping the handle stops it: SIGTERM, then SIGKILL after
//! [`STOP_GRACE`], then the process is reaped, so no orphan is left behind.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The base-URL placeholder that selects the local server (`--llm local`).
pub const LOCAL: &str = "local";

/// The default model of `--llm local`, relative to the data directory (`./setup.sh --llm`).
pub const CODER_MODEL: &str = "llm/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf";

/// The server binary that `./setup.sh` builds, relative to the data directory.
pub const SERVER_BINARY: &str = "llm/bin/llama-server";

/// How long a stopping server gets after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Settings of a local server, recorded with the run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalLlm {
    /// The `llama-server` binary.
    pub server: PathBuf,
    /// The GGUF model it serves.
    pub model: PathBuf,
    /// Context tokens per slot: the longest prompt plus its answer. 6144 holds the GCoT
    /// prompt's budget (≈ 4,000 tokens of the Qwen tokenizer) and a 1,024-token answer with
    /// room to spare.
    pub ctx_per_slot: u32,
    /// Slots: requests served at once (`--llm-concurrency`).
    pub parallel: usize,
    /// CPU threads (0 = every core).
    pub threads: usize,
    /// Seconds to wait for the model to load.
    pub startup_timeout_s: f64,
}

impl LocalLlm {
    /// Defaults for `model` and `server` under `data_root`; every core; `parallel` slots.
    pub fn new(data_root: &Path, parallel: usize) -> Self {
        LocalLlm {
            server: data_root.join(SERVER_BINARY),
            model: data_root.join(CODER_MODEL),
            ctx_per_slot: 6144,
            parallel: parallel.max(1),
            threads: 0,
            startup_timeout_s: 300.0,
        }
    }

    /// The threads the server will use.
    pub fn threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// The server's command line (everything but the port).
    fn args(&self, alias: &str) -> Vec<String> {
        let total_ctx = self.ctx_per_slot as usize * self.parallel.max(1);
        [
            "-m",
            &self.model.to_string_lossy(),
            "--host",
            "127.0.0.1",
            "-c",
            &total_ctx.to_string(),
            "-np",
            &self.parallel.max(1).to_string(),
            // One KV buffer per slot, each `ctx_per_slot` long (a unified buffer would let one
            // long request take the other's room).
            "--no-kv-unified",
            "-t",
            &self.threads().to_string(),
            "--alias",
            alias,
            // Prompts are read 256 tokens per step, so that prompt-progress chunks keep a slow
            // machine's stream from looking idle (one 2,048-token step took 300 s here).
            "-b",
            "256",
            "-ub",
            "256",
            // No web UI, no prompt cache in RAM: a search sends a new prompt every time.
            "--no-webui",
            "--cache-ram",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(
            // llama.cpp's AMX weight repacking (built in where the build machine has AMX)
            // crashed the pinned server with SIGSEGV at start on a Sapphire Rapids VM; without
            // repacking it serves. Other CPUs keep their repacked kernels.
            cpu_has_amx().then(|| "--no-repack".to_string()),
        )
        .collect()
    }
}

/// Whether this CPU has AMX tiles (Linux: the `amx_tile` flag of `/proc/cpuinfo`).
fn cpu_has_amx() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| {
        c.lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "amx_tile"))
    })
}

/// Why a local server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LocalServerError {
    /// The binary or the model is missing.
    #[error("{what} not found at {path}; {hint}")]
    Missing {
        /// What is missing.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// How to get it.
        hint: &'static str,
    },
    /// Spawning, the log file or the port failed.
    #[error("starting the local LLM server: {0}")]
    Io(#[from] std::io::Error),
    /// The server exited before it was ready.
    #[error(
        "the local LLM server exited ({status}) before it was ready; last lines of {log}:\n{tail}"
    )]
    Exited {
        /// Its exit status.
        status: String,
        /// The log file.
        log: PathBuf,
        /// The log's last lines, control characters escaped.
        tail: String,
    },
    /// The server did not become ready in time.
    #[error("the local LLM server was not ready after {seconds} s; last lines of {log}:\n{tail}")]
    NotReady {
        /// The startup timeout.
        seconds: f64,
        /// The log file.
        log: PathBuf,
        /// The log's last lines, control characters escaped.
        tail: String,
    },
}

/// A running `llama-server`; dropping it stops the server.
#[derive(Debug)]
pub struct LocalServer {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl LocalServer {
    /// Start `cfg`'s server serving its model under the name `alias`, log to `log`, and wait
    /// until it is ready.
    pub fn start(cfg: &LocalLlm, alias: &str, log: &Path) -> Result<Self, LocalServerError> {
        for (what, path, hint) in [
            (
                "llama-server",
                &cfg.server,
                "run ./setup.sh to build it, or pass --llm-server PATH",
            ),
            (
                "the local LLM model",
                &cfg.model,
                "run ./setup.sh --llm to fetch the coder model, or pass --llm-model-file PATH",
            ),
        ] {
            if !path.is_file() {
                return Err(LocalServerError::Missing {
                    what,
                    path: path.clone(),
                    hint,
                });
            }
        }
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut out = File::options().create(true).append(true).open(log)?;
        writeln!(
            out,
            "\n=== autoprune: {} {}",
            cfg.server.display(),
            cfg.args(alias).join(" ")
        )?;
        let port = free_port()?;
        let mut cmd = Command::new(&cfg.server);
        cmd.args(cfg.args(alias))
            .args(["--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            // Its own process group: a Ctrl-C in the terminal goes to autoprune only.
            .process_group(0);
        let parent = std::process::id();
        // SAFETY: between fork and exec the closure calls only async-signal-safe functions
        // (prctl, getppid, _exit) and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                // Die with the thread that started the server, even on SIGKILL.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() as u32 != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        let mut server = LocalServer {
            child: Some(child),
            port,
            log: log.to_path_buf(),
        };
        server.wait_ready(Duration::from_secs_f64(cfg.startup_timeout_s.max(1.0)))?;
        Ok(server)
    }

    /// `http://127.0.0.1:PORT/v1`, the base URL of its OpenAI-compatible API.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// The server's process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Poll `/health` until it answers 200, the server exits, or `timeout` passes.
    fn wait_ready(&mut self, timeout: Duration) -> Result<(), LocalServerError> {
        let t = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(LocalServerError::Exited {
                    status: status.to_string(),
                    log: self.log.clone(),
                    tail: log_tail(&self.log, 20),
                });
            }
            if health(self.port) == Some(200) {
                return Ok(());
            }
            if t.elapsed() >= timeout {
                self.stop();
                return Err(LocalServerError::NotReady {
                    seconds: timeout.as_secs_f64(),
                    log: self.log.clone(),
                    tail: log_tail(&self.log, 20),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stop the server: SIGTERM, SIGKILL after [`STOP_GRACE`], and reap it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: plain kill(2) on our own child, which has not been reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let t = Instant::now();
        while t.elapsed() < STOP_GRACE {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> std::io::Result<u16> {
    let l = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    Ok(l.local_addr()?.port())
}

/// The status code of `GET /health`, or `None` when nothing answers.
fn health(port: u16) -> Option<u16> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head).ok()?;
    let line = std::str::from_utf8(&head[..n]).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The last `n` lines of a log, safe to print: control characters other than newlines are
/// escaped (the server echoes what it read, which a terminal must not interpret).
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("  {}", escape_controls(l)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `s` with every control character (and DEL) written as `\u{..}`.
pub fn escape_controls(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            escape_controls("ok \x1b[31mred\x07"),
            "ok \\u{1b}[31mred\\u{7}"
        );
        assert_eq!(escape_controls("tab\there"), "tab\\u{9}here");
        assert_eq!(escape_controls("ünïcode"), "ünïcode");
    }

    #[test]
    fn the_log_tail_is_the_last_lines_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        std::fs::write(&p, "a\nb\nc\x1b]0;title\x07\n").unwrap();
        assert_eq!(log_tail(&p, 2), "  b\n  c\\u{1b}]0;title\\u{7}");
        assert_eq!(log_tail(&dir.path().join("none"), 3), "");
    }

    #[test]
    fn missing_parts_are_named_with_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LocalLlm::new(dir.path(), 2);
        let e = LocalServer::start(&cfg, "m", &dir.path().join("log")).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("llama-server not found") && msg.contains("setup.sh"),
            "{msg}"
        );
        std::fs::create_dir_all(dir.path().join("llm/bin")).unwrap();
        std::fs::write(dir.path().join(SERVER_BINARY), "").unwrap();
        let msg = LocalServer::start(&cfg, "m", &dir.path().join("log"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("model not found") && msg.contains("--llm"),
            "{msg}"
        );
    }

    #[test]
    fn a_server_that_dies_at_once_is_reported_with_its_log() {
        // A stand-in binary that prints a hostile line and exits: the error says so, escaped.
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("fake-server");
        std::fs::write(
            &bin,
            "#!/bin/sh\nprintf 'loading\\n\\033[2Jerror: bad model\\n'\nexit 3\n",
        )
        .unwrap();
        std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let model = dir.path().join("m.gguf");
        std::fs::write(&model, "x").unwrap();
        let cfg = LocalLlm {
            server: bin,
            model,
            ..LocalLlm::new(dir.path(), 1)
        };
        let e =
            LocalServer::start(&cfg, "m", &dir.path().join("run/llama-server.log")).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, LocalServerError::Exited { .. }), "{msg}");
        assert!(msg.contains("exit status: 3"), "{msg}");
        assert!(msg.contains("\\u{1b}[2Jerror: bad model"), "{msg}");
        assert!(!msg.contains('\x1b'), "{msg}");
    }

    #[test]
    fn a_server_that_never_gets_ready_is_stopped() {
        // Sleeps instead of serving: after the startup timeout it is killed and reaped.
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("sleepy-server");
        let pidfile = dir.path().join("pid");
        std::fs::write(
            &bin,
            format!(
                "#!/bin/sh\necho $$ > {}\necho waiting\nexec sleep 600\n",
                pidfile.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let model = dir.path().join("m.gguf");
        std::fs::write(&model, "x").unwrap();
        let cfg = LocalLlm {
            server: bin,
            model,
            startup_timeout_s: 1.0,
            ..LocalLlm::new(dir.path(), 1)
        };
        let log = dir.path().join("log");
        let t = Instant::now();
        let e = LocalServer::start(&cfg, "m", &log).unwrap_err();
        assert!(matches!(e, LocalServerError::NotReady { .. }), "{e}");
        assert!(e.to_string().contains("waiting"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(30));
        // The log records the command line; the process is gone (killed and reaped).
        assert!(std::fs::read_to_string(&log)
            .unwrap()
            .contains("--no-kv-unified"));
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        assert!(
            !Path::new(&format!("/proc/{}", pid.trim())).exists(),
            "pid {pid} is still there"
        );
    }
}
