//! Running rustc: inside bubblewrap under rlimits and a hard kill, or (trusted) directly.

use super::{BuildOptions, Sdk};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Where the toolchain, the SDK and the job appear inside the sandbox. Fixed names, so no host
/// path reaches the compiler's diagnostics.
const RUST: &str = "/rust";
const SDK: &str = "/sdk";
const JOB: &str = "/job";

/// One compile.
pub(super) struct Job<'a> {
    pub source: PathBuf,
    pub out_dir: PathBuf,
    pub sdk: &'a Sdk,
    pub flags: &'a [&'a str],
    pub opts: &'a BuildOptions,
}

/// What the compiler did.
pub(super) struct Outcome {
    pub success: bool,
    /// Killed by the time limit or a signal (rlimits end in SIGKILL/SIGSEGV/SIGXFSZ).
    pub killed: bool,
    pub stderr: String,
}

/// Whether bubblewrap is installed and can create a sandbox here.
pub(super) fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        Command::new("bwrap")
            .args(["--unshare-all", "--ro-bind", "/", "/", "--", "/bin/true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Shared libraries the toolchain's executables load, as (path seen by the loader, real file).
fn system_libs(sysroot: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut bins = vec![sysroot.join("bin/rustc")];
    for dir in [
        sysroot.join("lib"),
        sysroot.join("lib/rustlib/x86_64-unknown-linux-gnu/bin"),
    ] {
        for e in std::fs::read_dir(dir)?.flatten() {
            let p = e.path();
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if p.is_file() && (name.ends_with(".so") || name.contains(".so.") || name == "rust-lld")
            {
                bins.push(p);
            }
        }
    }
    let mut libs = BTreeSet::new();
    for b in bins {
        let out = Command::new("ldd").arg(&b).output()?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
            let path = match line.split_once("=>") {
                Some((_, rhs)) => rhs.split_whitespace().next(),
                None => line
                    .split_whitespace()
                    .next()
                    .filter(|p| p.starts_with('/')),
            };
            if let Some(p) =
                path.filter(|p| p.starts_with('/') && !p.starts_with(&*sysroot.to_string_lossy()))
            {
                libs.insert(p.to_string());
            }
        }
    }
    libs.into_iter()
        .map(|p| Ok((p.clone(), std::fs::canonicalize(&p)?)))
        .collect()
}

fn cached_libs(sysroot: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    static LIBS: OnceLock<Result<Vec<(String, PathBuf)>, String>> = OnceLock::new();
    LIBS.get_or_init(|| system_libs(sysroot).map_err(|e| e.to_string()))
        .clone()
        .map_err(std::io::Error::other)
}

/// rustc arguments, with the toolchain, SDK and job at `rust`, `sdk` and `job`.
fn rustc_args(job: &Job<'_>, rust: &str, sdk: &str, src: &str, out: &str) -> Vec<String> {
    let mut a: Vec<String> = vec!["--sysroot".into(), rust.into()];
    a.extend(job.flags.iter().map(|s| s.to_string()));
    a.push(format!("--extern=autoprune_sdk={sdk}/{}", job.sdk.rlib));
    a.push(format!("-Ldependency={sdk}"));
    a.push("-o".into());
    a.push(format!("{out}/candidate.wasm"));
    a.push(src.into());
    a
}

/// Compile inside bubblewrap: private namespaces (no network), a read-only toolchain, the SDK
/// and the source; a writable output folder; nothing else of the host; no environment.
pub(super) fn run_sandboxed(job: &Job<'_>) -> std::io::Result<Outcome> {
    let sysroot = &job.sdk.sysroot;
    let o = job.opts;
    let mut cmd = Command::new("timeout");
    cmd.args(["-s", "KILL", &format!("{}s", o.timeout_secs)])
        .arg("prlimit")
        .arg(format!("--as={}", o.memory_bytes))
        .arg(format!("--fsize={}", o.max_output_bytes))
        .args(["--nofile=256", "--core=0", "--"])
        .arg("bwrap")
        .args([
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
        ])
        .args(["--uid", "65534", "--gid", "65534"])
        .arg("--ro-bind")
        .arg(sysroot)
        .arg(RUST);
    let mut lib_dirs = BTreeSet::new();
    for (seen, real) in cached_libs(sysroot)? {
        if let Some(parent) = Path::new(&seen).parent() {
            lib_dirs.insert(parent.to_string_lossy().into_owned());
        }
        cmd.arg("--ro-bind").arg(real).arg(&seen);
    }
    let ld_path = std::iter::once(format!("{RUST}/lib"))
        .chain(lib_dirs)
        .collect::<Vec<_>>()
        .join(":");
    cmd.arg("--ro-bind")
        .arg(&job.sdk.dir)
        .arg(SDK)
        .arg("--ro-bind")
        .arg(&job.source)
        .arg(format!("{JOB}/lib.rs"))
        .arg("--bind")
        .arg(&job.out_dir)
        .arg(format!("{JOB}/out"))
        .args([
            "--tmpfs",
            "/tmp",
            "--dev-bind",
            "/dev/null",
            "/dev/null",
            "--clearenv",
        ])
        .args(["--setenv", "LD_LIBRARY_PATH", &ld_path])
        .args(["--setenv", "TMPDIR", "/tmp"])
        .args(["--chdir", JOB])
        .arg(format!("{RUST}/bin/rustc"))
        .args(rustc_args(job, RUST, SDK, "lib.rs", "out"));
    finish(cmd)
}

/// Compile directly on the host (trusted source only), with the same flags and time limit.
pub(super) fn run_trusted(job: &Job<'_>) -> std::io::Result<Outcome> {
    let sysroot = job.sdk.sysroot.to_string_lossy().into_owned();
    let sdk = job.sdk.dir.to_string_lossy().into_owned();
    let mut cmd = Command::new("timeout");
    cmd.args(["-s", "KILL", &format!("{}s", job.opts.timeout_secs)])
        .arg(job.sdk.sysroot.join("bin/rustc"))
        .args(rustc_args(
            job,
            &sysroot,
            &sdk,
            &job.source.to_string_lossy(),
            &job.out_dir.to_string_lossy(),
        ))
        .env_clear()
        .env("LD_LIBRARY_PATH", job.sdk.sysroot.join("lib"))
        .current_dir(job.source.parent().unwrap_or(Path::new("/")));
    finish(cmd)
}

fn finish(mut cmd: Command) -> std::io::Result<Outcome> {
    let out = cmd.stdin(Stdio::null()).output()?;
    let code = out.status.code();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // `timeout -s KILL` exits 137 when it kills; a signal-killed compiler has no code.
    let killed = code.is_none() || code == Some(137) || code == Some(124);
    Ok(Outcome {
        success: out.status.success(),
        killed,
        stderr,
    })
}
