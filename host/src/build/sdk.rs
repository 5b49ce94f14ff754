//! The prebuilt guest SDK: rlibs for `wasm32-unknown-unknown` that every candidate links.
//!
//! Built once with Cargo from this workspace (trusted code) into its own target directory,
//! then copied into a flat, content-stamped folder of the artifact cache. Candidates are
//! compiled by plain `rustc` against that folder, never by Cargo.
//!
//! The folder is authenticated before rustc loads anything from it (the SDK rlib, and the
//! proc-macro library rustc executes): its `ready` file holds the content fingerprint and an
//! HMAC of it under the cache's key; every [`Sdk::prepare`] hashes the files again and
//! restages a folder whose content or tag does not match.

use super::BuildError;
use crate::sandbox::ArtifactCache;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the guest SDK's rlibs are, and what they were built with.
#[derive(Debug, Clone)]
pub struct Sdk {
    /// Flat folder with the SDK rlib, its dependencies and the bindgen proc-macro.
    pub dir: PathBuf,
    /// File name of the `autoprune_sdk` rlib inside `dir`.
    pub rlib: String,
    /// Content fingerprint of the folder (part of every build cache key).
    pub fingerprint: String,
    /// Sysroot of the toolchain that built it (and builds candidates).
    pub sysroot: PathBuf,
}

/// The workspace this binary was built from (`AUTOPRUNE_WORKSPACE` overrides).
pub fn workspace_dir() -> PathBuf {
    std::env::var_os("AUTOPRUNE_WORKSPACE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).to_path_buf())
}

fn run(cmd: &mut Command, what: &str) -> Result<String, BuildError> {
    let out = cmd
        .output()
        .map_err(|e| BuildError::Toolchain(format!("cannot run {what}: {e}")))?;
    if !out.status.success() {
        return Err(BuildError::Toolchain(format!(
            "{what} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn rustc() -> Command {
    Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
}

/// The toolchain's sysroot (`rustc --print sysroot`).
pub fn sysroot() -> Result<PathBuf, BuildError> {
    let s = run(
        rustc().args(["--print", "sysroot"]),
        "rustc --print sysroot",
    )?;
    let p = PathBuf::from(s.trim());
    if !p.join("lib/rustlib/wasm32-unknown-unknown").is_dir() {
        return Err(BuildError::Toolchain(
            "the wasm32-unknown-unknown target is not installed: run `rustup target add wasm32-unknown-unknown` (or ./setup.sh)".into(),
        ));
    }
    Ok(p)
}

/// Hash of everything the SDK build depends on: its sources, the WIT, the lock file, the
/// Cargo configuration and the compiler version.
fn source_stamp(ws: &Path) -> Result<String, BuildError> {
    let mut files = Vec::new();
    for dir in ["wit", "guest-sdk"] {
        collect(&ws.join(dir), &mut files);
    }
    files.push(ws.join("Cargo.lock"));
    files.push(ws.join(".cargo/config.toml"));
    files.sort();
    let mut h = Sha256::new();
    for f in &files {
        h.update(f.strip_prefix(ws).unwrap_or(f).to_string_lossy().as_bytes());
        h.update(std::fs::read(f).unwrap_or_default());
    }
    h.update(run(rustc().arg("-vV"), "rustc -vV")?);
    Ok(hex::encode(h.finalize())[..24].to_string())
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "target") {
                collect(&p, out);
            }
        } else {
            out.push(p);
        }
    }
}

fn find_rlib(dir: &Path) -> Result<String, BuildError> {
    std::fs::read_dir(dir)
        .map_err(|e| BuildError::Toolchain(format!("SDK folder {}: {e}", dir.display())))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libautoprune_sdk") && n.ends_with(".rlib"))
        .ok_or_else(|| {
            BuildError::Toolchain(format!("no libautoprune_sdk*.rlib in {}", dir.display()))
        })
}

/// The file that marks a staged folder complete: `<fingerprint>\n<tag>`.
const READY: &str = "ready";

fn fingerprint(dir: &Path) -> Result<String, BuildError> {
    let mut names: Vec<PathBuf> = Vec::new();
    collect(dir, &mut names);
    names.retain(|p| p != &dir.join(READY));
    names.sort();
    let mut h = Sha256::new();
    for p in names {
        h.update(p.file_name().unwrap_or_default().as_encoded_bytes());
        h.update(std::fs::read(&p).map_err(|e| BuildError::Toolchain(e.to_string()))?);
    }
    Ok(hex::encode(h.finalize())[..24].to_string())
}

impl Sdk {
    /// Use the SDK folder named by `AUTOPRUNE_SDK_DIR`, or build and stage one under
    /// `cache_dir/sdk/<stamp>` (reused while sources and compiler are unchanged).
    pub fn prepare(cache: &ArtifactCache) -> Result<Sdk, BuildError> {
        let cache_dir = cache.dir();
        let sysroot = sysroot()?;
        if let Some(dir) = std::env::var_os("AUTOPRUNE_SDK_DIR").map(PathBuf::from) {
            let rlib = find_rlib(&dir)?;
            let fingerprint = fingerprint(&dir)?;
            return Ok(Sdk {
                dir,
                rlib,
                fingerprint,
                sysroot,
            });
        }
        let ws = workspace_dir();
        if !ws.join("guest-sdk/Cargo.toml").is_file() {
            return Err(BuildError::Toolchain(format!(
                "guest SDK sources not found at {} (set AUTOPRUNE_WORKSPACE or AUTOPRUNE_SDK_DIR)",
                ws.display()
            )));
        }
        let stamp = source_stamp(&ws)?;
        let dir = cache_dir.join("sdk").join(&stamp);
        // One staging per process at a time (tests build in parallel threads); other processes
        // are handled by the atomic rename in `stage`.
        static STAGING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = STAGING.lock().unwrap_or_else(|p| p.into_inner());
        let fingerprint = match Self::verify(cache, &dir) {
            Some(fp) => fp,
            None => {
                if dir.exists() {
                    // Unfinished, edited or from another cache key: never loaded, staged anew.
                    std::fs::remove_dir_all(&dir)?;
                }
                Self::stage(cache, &ws, &dir)?;
                Self::verify(cache, &dir).ok_or_else(|| {
                    BuildError::Toolchain(format!(
                        "the SDK staged in {} does not verify",
                        dir.display()
                    ))
                })?
            }
        };
        let rlib = find_rlib(&dir)?;
        Ok(Sdk {
            dir,
            rlib,
            fingerprint,
            sysroot,
        })
    }

    /// The fingerprint of a staged folder whose content and tag verify; `None` otherwise.
    fn verify(cache: &ArtifactCache, dir: &Path) -> Option<String> {
        let ready = crate::files::read_nofollow(&dir.join(READY), 4096).ok()?;
        let ready = String::from_utf8(ready).ok()?;
        let (fp, tag) = ready.trim().split_once('\n')?;
        (tag == cache.tag(fp.as_bytes()) && fingerprint(dir).ok()? == fp).then(|| fp.to_string())
    }

    /// Build the SDK with Cargo and copy its artifacts into `dir`.
    fn stage(cache: &ArtifactCache, ws: &Path, dir: &Path) -> Result<(), BuildError> {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = run(
            Command::new(cargo)
                .current_dir(ws)
                .args([
                    "build",
                    "--release",
                    "--quiet",
                    "-p",
                    "autoprune-sdk",
                    "--target",
                    "wasm32-unknown-unknown",
                    "--message-format=json",
                    "--target-dir",
                ])
                .arg(ws.join("target/sdk")),
            "cargo build of the guest SDK",
        )?;
        let parent = dir.parent().expect("sdk dir has a parent");
        std::fs::create_dir_all(parent)?;
        let tmp = tempfile::Builder::new()
            .prefix(".staging-")
            .tempdir_in(parent)?;
        let tmp = tmp.keep();
        for line in out.lines() {
            let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if msg["reason"] != "compiler-artifact" {
                continue;
            }
            for f in msg["filenames"].as_array().into_iter().flatten() {
                let Some(f) = f.as_str().map(Path::new) else {
                    continue;
                };
                let ext = f.extension().and_then(|e| e.to_str()).unwrap_or("");
                // Guest rlibs and the bindgen proc-macros (host .so); not the proc-macros' own deps.
                let guest = f
                    .components()
                    .any(|c| c.as_os_str() == "wasm32-unknown-unknown");
                if (ext == "rlib" && guest) || ext == "so" {
                    let name = f.file_name().expect("artifact has a file name");
                    std::fs::copy(f, tmp.join(name))
                        .map_err(|e| BuildError::Toolchain(format!("{}: {e}", f.display())))?;
                }
            }
        }
        find_rlib(&tmp)?;
        let fp = fingerprint(&tmp)?;
        let ready = format!("{fp}\n{}\n", cache.tag(fp.as_bytes()));
        std::fs::write(tmp.join(READY), ready).map_err(|e| BuildError::Toolchain(e.to_string()))?;
        if let Err(e) = std::fs::rename(&tmp, dir) {
            let _ = std::fs::remove_dir_all(&tmp);
            // Another process staged the same stamp first: theirs is as good as ours.
            if Self::verify(cache, dir).is_none() {
                return Err(BuildError::Toolchain(format!("{}: {e}", dir.display())));
            }
        }
        Ok(())
    }
}
