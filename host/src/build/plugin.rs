//! Plugin files into loaded plugins: each file read with the limit of its kind, source built
//! in the compile sandbox, the component loaded through the sandbox's one load path; and the
//! sandbox policy file.

use super::{default_cache, is_source, BuildError, BuildOptions, Builder};
use crate::files::{read_limited, FileError};
use crate::hash::sha256_hex;
use crate::sandbox::{
    AllocatorPlugin, AnyPlugin, ArtifactCache, CacheError, Failure, Plugin, Policy,
};
use std::path::{Path, PathBuf};

/// Why a plugin or policy file could not be used: a host-side error, not a candidate's verdict
/// (those are the `Failure` inside `Ok`).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error(transparent)]
    File(#[from] FileError),
    /// A source file is not UTF-8 text.
    #[error("{} is not UTF-8 text", .0.display())]
    NotUtf8(PathBuf),
    /// The compile sandbox could not be set up.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The artifact cache could not be opened.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The policy file could not be read.
    #[error("cannot read policy {}: {error}", .path.display())]
    PolicyRead {
        /// The file.
        path: PathBuf,
        /// The cause.
        error: std::io::Error,
    },
    /// The policy file is not a valid policy (unknown fields are refused).
    #[error("invalid policy {}: {error}", .path.display())]
    PolicyInvalid {
        /// The file.
        path: PathBuf,
        /// The cause.
        error: serde_json::Error,
    },
    /// A plugin file expected to load failed its verdict.
    #[error("{}: {failure}", .path.display())]
    Verdict {
        /// The file.
        path: PathBuf,
        /// The verdict.
        failure: Failure,
    },
}

/// A policy file, or the defaults.
pub fn load_policy(path: Option<&Path>) -> Result<Policy, LoadError> {
    match path {
        None => Ok(Policy::default()),
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|error| LoadError::PolicyRead {
                path: p.to_path_buf(),
                error,
            })?;
            serde_json::from_str(&text).map_err(|error| LoadError::PolicyInvalid {
                path: p.to_path_buf(),
                error,
            })
        }
    }
}

/// The bytes of a plugin file, read with the limit of its kind (a source at most the
/// builder's `max_source_bytes`, a component at most the policy's `max_component_bytes`): the
/// size is checked before anything is read. A file over its limit is the candidate's verdict
/// (`Ok(Err)`: `compile` for a source, `rejected` for a component).
pub fn read_plugin_file(
    path: &Path,
    policy: &Policy,
) -> Result<Result<Vec<u8>, Failure>, LoadError> {
    let source = is_source(path);
    let limit = if source {
        BuildOptions::default().max_source_bytes as u64
    } else {
        policy.max_component_bytes
    };
    match read_limited(path, limit) {
        Ok(bytes) => Ok(Ok(bytes)),
        Err(e @ FileError::TooLarge { .. }) if source => Ok(Err(Failure::Compile {
            diagnostics: e.to_string(),
        })),
        Err(e @ FileError::TooLarge { .. }) => Ok(Err(Failure::Rejected {
            reason: e.to_string(),
        })),
        Err(e) => Err(e.into()),
    }
}

/// SHA-256 of a plugin file that loaded (for reports), read with its limit.
pub fn plugin_sha256(path: &Path, policy: &Policy) -> Result<String, LoadError> {
    match read_plugin_file(path, policy)? {
        Ok(bytes) => Ok(sha256_hex(&bytes)),
        Err(failure) => Err(LoadError::Verdict {
            path: path.to_path_buf(),
            failure,
        }),
    }
}

/// The component bytes of `path`: `.rs` source is built with `build` and the default cache (a
/// compile failure is `Ok(Err)`), anything else is read as a component.
pub fn component_bytes(
    path: &Path,
    build: &BuildOptions,
    policy: &Policy,
) -> Result<Result<Vec<u8>, Failure>, LoadError> {
    let bytes = match read_plugin_file(path, policy)? {
        Ok(b) => b,
        Err(f) => return Ok(Err(f)),
    };
    if !is_source(path) {
        return Ok(Ok(bytes));
    }
    let source = String::from_utf8(bytes).map_err(|_| LoadError::NotUtf8(path.to_path_buf()))?;
    let builder = Builder::new(default_cache()?, build.clone())?;
    Ok(builder.build(&source).map(|b| b.wasm))
}

/// The component bytes of `path`, loaded by `load` with the default cache; a candidate's
/// failure is `Ok(Err)`.
fn load_with<T>(
    path: &Path,
    build: &BuildOptions,
    policy: &Policy,
    load: impl FnOnce(&[u8], &Policy, Option<&ArtifactCache>) -> Result<T, Failure>,
) -> Result<Result<T, Failure>, LoadError> {
    let cache = default_cache()?;
    Ok(component_bytes(path, build, policy)?.and_then(|b| load(&b, policy, Some(&cache))))
}

/// A metric plugin from `.rs` (building it) or `.wasm`; a candidate's failure is `Ok(Err)`.
pub fn load_plugin(
    path: &Path,
    build: &BuildOptions,
    policy: &Policy,
) -> Result<Result<Plugin, Failure>, LoadError> {
    load_with(path, build, policy, Plugin::load)
}

/// A plugin of either world from `.rs` (building it) or `.wasm`; a candidate's failure is
/// `Ok(Err)`.
pub fn load_any(
    path: &Path,
    build: &BuildOptions,
    policy: &Policy,
) -> Result<Result<AnyPlugin, Failure>, LoadError> {
    load_with(path, build, policy, AnyPlugin::load)
}

/// An allocator plugin (world `autoprune:metric/allocator`) from `.rs` (building it) or
/// `.wasm`. A candidate's failure is `Ok(Err)`; a metric component is `Ok(Err(Rejected))`.
pub fn load_allocator(
    path: &Path,
    build: &BuildOptions,
    policy: &Policy,
) -> Result<Result<AllocatorPlugin, Failure>, LoadError> {
    Ok(load_any(path, build, policy)?.and_then(|p| match p {
        AnyPlugin::Allocator(a) => Ok(a),
        AnyPlugin::Metric(m) => Err(Failure::Rejected {
            reason: format!(
                "{} is a metric (`{}`), not an allocator: it exports `score`, not `allocate`",
                path.display(),
                m.info().name
            ),
        }),
    }))
}
