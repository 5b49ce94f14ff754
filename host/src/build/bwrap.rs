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
    /// Stopped by the host because stdout or stderr passed the output cap.
    pub flooded: bool,
    /// The first `cap` bytes of stderr (and of stdout, appended).
    pub stderr: String,
}

/// What bubblewrap can do here.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Support {
    /// Everything the compile sandbox uses works.
    Full,
    /// `bwrap` is missing or cannot create a sandbox at all.
    Missing,
    /// `bwrap` runs but lacks a feature we use (the message says which).
    Lacking(String),
}

/// Whether bubblewrap is installed and can create the sandbox we use (probed once).
pub(super) fn support() -> Support {
    static OK: OnceLock<Support> = OnceLock::new();
    OK.get_or_init(|| {
        let probe = |extra: &[&str]| {
            Command::new("bwrap")
                .args(["--unshare-all"])
                .args(extra)
                .args(["--ro-bind", "/", "/", "--", "/bin/true"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !probe(&[]) {
            Support::Missing
        } else if !probe(&[
            "--unshare-user",
            "--disable-userns",
            "--assert-userns-disabled",
        ]) {
            Support::Lacking(
                "`bwrap --disable-userns` does not work here (bubblewrap 0.8 or newer is needed, \
                 and the kernel must allow a user namespace)"
                    .into(),
            )
        } else {
            Support::Full
        }
    })
    .clone()
}

/// Shared libraries the toolchain's executables (and `extra`) load, as (path seen by the
/// loader, real file).
fn system_libs(sysroot: &Path, extra: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut bins = vec![sysroot.join("bin/rustc"), extra.to_path_buf()];
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

fn cached_libs(sysroot: &Path, extra: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    static LIBS: OnceLock<Result<Vec<(String, PathBuf)>, String>> = OnceLock::new();
    LIBS.get_or_init(|| system_libs(sysroot, extra).map_err(|e| e.to_string()))
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

/// `prlimit` on the host: run inside the sandbox to set the process count (see
/// [`run_sandboxed`]).
fn prlimit_path() -> std::io::Result<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("prlimit"))
        .find(|p| p.is_file())
        .ok_or_else(|| std::io::Error::other("`prlimit` (util-linux) is not on PATH"))
}

/// Where `prlimit` appears inside the sandbox.
const PRLIMIT: &str = "/usr/bin/prlimit";

/// Compile inside bubblewrap: private namespaces (no network, no nested user namespaces), a
/// seccomp filter, a read-only toolchain, the SDK and the source; a writable output folder;
/// nothing else of the host; no environment.
///
/// Address space, file size and open files are limited outside bubblewrap (they bound
/// bubblewrap too); the process count is limited inside, by `prlimit` as the sandbox's first
/// command, because `RLIMIT_NPROC` counts every process of the user on the host while the
/// sandbox's user namespace is being created, and only the sandbox's own once inside it.
/// (The kernel never applies `RLIMIT_NPROC` to processes that are root on the host, so a host
/// running as root gets no process limit from it: the seccomp filter and the hard kill still
/// hold.)
pub(super) fn run_sandboxed(job: &Job<'_>) -> std::io::Result<Outcome> {
    let rustc = format!("{RUST}/bin/rustc");
    let args = rustc_args(job, RUST, SDK, "lib.rs", "out");
    let cmd = sandbox_command(job, &[], &rustc, &args)?;
    finish(cmd, job.opts.max_compiler_output_bytes)
}

/// The sandbox of [`run_sandboxed`] around `program` (a path inside it) with `args`; `extra`
/// binds more host files read-only (tests run probes in the very same sandbox).
fn sandbox_command(
    job: &Job<'_>,
    extra: &[(&Path, &str)],
    program: &str,
    args: &[String],
) -> std::io::Result<Command> {
    let sysroot = &job.sdk.sysroot;
    let o = job.opts;
    let prlimit = prlimit_path()?;
    let mut cmd = Command::new("timeout");
    cmd.args(["-s", "KILL", &format!("{}s", o.timeout_secs)])
        .arg("prlimit")
        .arg(format!("--as={}", o.memory_bytes))
        .arg(format!("--fsize={}", o.max_output_bytes))
        .args(["--nofile=256", "--core=0", "--"])
        .arg("bwrap")
        .args([
            "--unshare-all",
            // Explicit, so that the next two options are accepted and hold.
            "--unshare-user",
            "--disable-userns",
            "--assert-userns-disabled",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
        ])
        // The filter comes on standard input (fd 0), which bubblewrap reads and closes.
        .args(["--seccomp", "0"])
        .args(["--uid", "65534", "--gid", "65534"])
        .arg("--ro-bind")
        .arg(sysroot)
        .arg(RUST)
        .arg("--ro-bind")
        .arg(std::fs::canonicalize(&prlimit)?)
        .arg(PRLIMIT);
    let mut lib_dirs = BTreeSet::new();
    for (seen, real) in cached_libs(sysroot, &prlimit)? {
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
        .args(["--chdir", JOB]);
    for (host, inside) in extra {
        cmd.arg("--ro-bind").arg(host).arg(inside);
    }
    cmd.arg(PRLIMIT)
        .arg(format!("--nproc={}", o.max_processes))
        .arg("--")
        .arg(program)
        .args(args);
    let filter = job.out_dir.with_file_name("seccomp.bpf");
    std::fs::write(&filter, super::seccomp::bpf())?;
    cmd.stdin(std::fs::File::open(&filter)?);
    Ok(cmd)
}

/// Compile directly on the host (trusted source only), with the same flags, time limit and
/// output cap.
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
        .current_dir(job.source.parent().unwrap_or(Path::new("/")))
        .stdin(Stdio::null());
    finish(cmd, job.opts.max_compiler_output_bytes)
}

/// Run `cmd` in its own process group, reading stdout and stderr through pipes of at most
/// `cap` bytes each: the first stream to pass its cap kills the whole group, so a flood of
/// diagnostics costs the host `2 × cap` bytes and no more time than it took to print them.
fn finish(mut cmd: Command, cap: usize) -> std::io::Result<Outcome> {
    use std::os::unix::process::CommandExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn()?;
    let group = child.id() as libc::pid_t;
    let flooded = Arc::new(AtomicBool::new(false));
    let read_capped = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        let flooded = flooded.clone();
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let Some(mut pipe) = pipe else {
                return kept;
            };
            let mut chunk = [0u8; 64 * 1024];
            loop {
                let n = match pipe.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                let room = cap - kept.len();
                kept.extend_from_slice(&chunk[..n.min(room)]);
                if n > room {
                    flooded.store(true, Ordering::SeqCst);
                    // SAFETY: kill(2) with a negative pid signals the process group we created
                    // for this child (`process_group(0)`); no memory is involved.
                    unsafe { libc::kill(-group, libc::SIGKILL) };
                    break;
                }
            }
            kept
        })
    };
    let out = read_capped(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let err = read_capped(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let status = child.wait()?;
    let mut bytes = err.join().unwrap_or_default();
    bytes.extend(out.join().unwrap_or_default());
    let code = status.code();
    // `timeout -s KILL` exits 137 when it kills; a signal-killed compiler has no code.
    let killed = code.is_none() || code == Some(137) || code == Some(124);
    Ok(Outcome {
        success: status.success(),
        killed,
        flooded: flooded.load(Ordering::SeqCst),
        stderr: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::ArtifactCache;

    /// A native probe, built with the host's rustc, that makes the calls the sandbox must
    /// refuse and prints `name errno` for each, plus its own process limit.
    fn probe(dir: &Path) -> PathBuf {
        let calls = [
            ("ptrace", libc::SYS_ptrace, 0i64), // PTRACE_TRACEME
            (
                "unshare_user",
                libc::SYS_unshare,
                libc::CLONE_NEWUSER as i64,
            ),
            ("unshare_mount", libc::SYS_unshare, libc::CLONE_NEWNS as i64),
            ("mount", libc::SYS_mount, 0),
            ("bpf", libc::SYS_bpf, 0),
            ("perf_event_open", libc::SYS_perf_event_open, 0),
            ("keyctl", libc::SYS_keyctl, 0),
            (
                "clone_newuser",
                libc::SYS_clone,
                (libc::CLONE_NEWUSER | libc::SIGCHLD) as i64,
            ),
            ("getpid", libc::SYS_getpid, 0),
        ];
        let body: String = calls
            .iter()
            .map(|(name, nr, a0)| format!("    call(\"{name}\", {nr}, {a0});\n"))
            .collect();
        let src = format!(
            r#"extern "C" {{
    fn syscall(n: i64, ...) -> i64;
    fn getrlimit(resource: i32, limit: *mut [u64; 2]) -> i32;
}}
fn call(name: &str, nr: i64, a0: i64) {{
    let r = unsafe {{ syscall(nr, a0, 0i64, 0i64, 0i64, 0i64, 0i64) }};
    let e = if r < 0 {{ std::io::Error::last_os_error().raw_os_error().unwrap_or(-1) }} else {{ 0 }};
    println!("{{name}} {{e}}");
}}
fn main() {{
{body}    let mut l = [0u64; 2];
    unsafe {{ getrlimit({nproc}, &mut l) }};
    println!("nproc {{}}", l[0]);
}}
"#,
            nproc = libc::RLIMIT_NPROC
        );
        let (src_path, bin) = (dir.join("probe.rs"), dir.join("probe"));
        std::fs::write(&src_path, src).unwrap();
        let rustc = super::super::sysroot().unwrap().join("bin/rustc");
        let out = Command::new(rustc)
            .args(["-O", "-o"])
            .arg(&bin)
            .arg(&src_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        bin
    }

    /// Inside the compile sandbox: ptrace, namespaces (nested user namespaces included), mount,
    /// BPF, perf events and key rings fail with EPERM; ordinary calls work; the process limit
    /// is the builder's.
    #[test]
    fn the_sandbox_refuses_what_a_compiler_never_needs() {
        // Every build needs the full sandbox (./setup.sh installs bubblewrap 0.8), so this is
        // a requirement, not a skip.
        assert!(
            support() == Support::Full,
            "bubblewrap 0.8+ with --disable-userns is required"
        );
        let ws = super::super::workspace_dir();
        let cache = ArtifactCache::open(ws.join("target/test-cache")).unwrap();
        let sdk = Sdk::prepare(&cache).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let bin = probe(dir.path());
        let (source, out_dir) = (dir.path().join("lib.rs"), dir.path().join("out"));
        std::fs::write(&source, "").unwrap();
        std::fs::create_dir(&out_dir).unwrap();
        let opts = BuildOptions {
            max_processes: 77,
            ..BuildOptions::default()
        };
        let job = Job {
            source,
            out_dir,
            sdk: &sdk,
            flags: &[],
            opts: &opts,
        };
        let cmd = sandbox_command(&job, &[(&bin, "/job/probe")], "/job/probe", &[]).unwrap();
        let res = finish(cmd, 1 << 20).unwrap();
        assert!(res.success, "{}", res.stderr);
        let seen: std::collections::HashMap<&str, i64> = res
            .stderr
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k, v.trim().parse().unwrap()))
            .collect();
        for call in [
            "ptrace",
            "unshare_user",
            "unshare_mount",
            "mount",
            "bpf",
            "perf_event_open",
            "keyctl",
            "clone_newuser",
        ] {
            assert_eq!(
                seen.get(call),
                Some(&(libc::EPERM as i64)),
                "{call}: {}",
                res.stderr
            );
        }
        assert_eq!(seen.get("getpid"), Some(&0));
        assert_eq!(seen.get("nproc"), Some(&77));
    }
}
