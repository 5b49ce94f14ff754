//! The builder: one untrusted `.rs` file → a metric component, compiled inside a sandbox.
//!
//! The host writes everything around the candidate: the crate is the file itself, compiled by
//! plain `rustc` (no Cargo, no build script, no dependency but the prebuilt SDK) for
//! `wasm32-unknown-unknown` with `+simd128`, inside bubblewrap (no network, no host files but
//! the toolchain and the SDK, empty environment, rlimits, a hard wall-clock kill). The core
//! module is componentized in-process and rejected if it imports anything outside our
//! interface. Results are cached by content.

mod bwrap;
pub mod lint;
pub mod plugin;
mod sdk;
pub mod seccomp;

pub use sdk::{sysroot, workspace_dir, Sdk};

use crate::sandbox::{
    sha256_hex, ArtifactCache, Failure, World, ALLOWED_ALLOCATOR_IMPORTS, ALLOWED_IMPORTS,
};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// A problem with the build environment (not the candidate's fault).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// bubblewrap is missing and the source is not marked trusted.
    #[error("bubblewrap (`bwrap`) is not installed, so untrusted source cannot be compiled safely. Install it (`apt-get install bubblewrap`, or run ./setup.sh), or pass --trusted for source you wrote yourself")]
    NoSandbox,
    /// bubblewrap is there but cannot build the sandbox we need.
    #[error("the compile sandbox cannot be built here: {0}")]
    SandboxUnsupported(String),
    /// A build option is out of range.
    #[error("build options: {0}")]
    Options(String),
    /// The toolchain or SDK is missing or broken.
    #[error("toolchain: {0}")]
    Toolchain(String),
    /// An I/O error in the build folder or cache.
    #[error("build I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// How candidate source is isolated while it compiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// Inside bubblewrap (the default; required for untrusted source).
    Bwrap,
    /// Directly on the host: only for source the user vouches for (`--trusted`).
    Trusted,
}

/// Builder settings; the numbers bound a hostile compile.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuildOptions {
    /// Isolation of the compiler.
    pub isolation: Isolation,
    /// Run the token-level lint first (a second layer; tests turn it off to prove the sandbox
    /// holds on its own).
    pub lint: bool,
    /// Hard wall-clock kill, in seconds. Why 60: a 60-line candidate compiles in ~0.5 s;
    /// endless const evaluation must not hold a search worker for long.
    pub timeout_secs: u64,
    /// Address-space cap of the compiler, in bytes. Why 4 GiB: rustc+LLVM on one small file
    /// peaks at a few hundred MiB; `include_bytes!("/dev/zero")`-style bombs stop here.
    pub memory_bytes: u64,
    /// Largest source accepted, in bytes. Why 256 KiB: a metric is one small function.
    pub max_source_bytes: usize,
    /// Largest file the compiler may write, in bytes (also the largest module the host reads
    /// back). Why 32 MiB: a metric module is < 1 MiB.
    pub max_output_bytes: u64,
    /// Longest diagnostics text returned, in bytes (the rest is cut).
    pub max_diagnostics_bytes: usize,
    /// Most bytes the host reads from the compiler's stdout and from its stderr while it runs;
    /// one byte more kills the compile. Why 1 MiB: rustc's diagnostics of a 256 KiB source with
    /// real errors stay far below it, while nested macros around `compile_error!` print
    /// hundreds of MiB; only the first `max_diagnostics_bytes` are shown anyway.
    pub max_compiler_output_bytes: usize,
    /// Processes and threads inside the sandbox (`RLIMIT_NPROC`). Why 64 + 4 per core: rustc
    /// runs a thread per codegen unit (at most the core count at once) and the linker a thread
    /// per core, plus a few helpers; a fork bomb is stopped long before it matters.
    pub max_processes: u64,
    /// Where build folders are made (`None`: the system's temporary folder).
    pub work_dir: Option<std::path::PathBuf>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            isolation: Isolation::Bwrap,
            lint: true,
            timeout_secs: 60,
            memory_bytes: 4 << 30,
            max_source_bytes: 256 << 10,
            max_output_bytes: 32 << 20,
            max_diagnostics_bytes: 32 << 10,
            max_compiler_output_bytes: 1 << 20,
            max_processes: 64
                + 4 * std::thread::available_parallelism().map_or(1, |n| n.get()) as u64,
            work_dir: None,
        }
    }
}

/// Why a build produced no component: the candidate's verdict, or a failure of the host (its
/// build folder, starting the sandbox) that says nothing about the candidate.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BuildFailure {
    /// The candidate's verdict (compile errors, limits, lint).
    #[error(transparent)]
    Candidate(#[from] Failure),
    /// The host could not run the compiler.
    #[error("the host could not run the compiler: {0}")]
    Host(String),
}

impl BuildFailure {
    /// As one verdict, for callers that report rather than retry: a host failure becomes a
    /// compile failure whose diagnostics start with `host:`.
    pub fn into_failure(self) -> Failure {
        match self {
            BuildFailure::Candidate(f) => f,
            BuildFailure::Host(m) => Failure::Compile {
                diagnostics: format!("host: {m}"),
            },
        }
    }
}

/// A built component.
#[derive(Debug, Clone)]
pub struct Built {
    /// The component bytes.
    pub wasm: Vec<u8>,
    /// SHA-256 of the source.
    pub source_hash: String,
    /// Cache key (source hash + SDK fingerprint + flags + engine).
    pub key: String,
    /// Whether it came from the cache.
    pub cached: bool,
    /// Wall time of the build, in seconds.
    pub seconds: f64,
    /// Compiler warnings (empty when cached).
    pub warnings: String,
}

/// Compiles candidate sources into metric components.
#[derive(Debug, Clone)]
pub struct Builder {
    sdk: Sdk,
    cache: ArtifactCache,
    opts: BuildOptions,
}

/// The rustc flags every candidate is compiled with (part of the cache key).
const RUSTC_FLAGS: &[&str] = &[
    "--edition=2021",
    "--crate-type=cdylib",
    "--crate-name=candidate",
    "--target=wasm32-unknown-unknown",
    "-Copt-level=3",
    "-Cpanic=abort",
    "-Ctarget-feature=+simd128",
    "-Cdebuginfo=0",
    "-Cstrip=debuginfo",
    // The SDK's export macro passes this; a candidate never needs `unsafe`.
    "-Funsafe-code",
    "--color=never",
];

impl Builder {
    /// A builder using the artifact cache and an SDK staged in it.
    pub fn new(cache: ArtifactCache, opts: BuildOptions) -> Result<Self, BuildError> {
        opts.check()?;
        if opts.isolation == Isolation::Bwrap {
            match bwrap::support() {
                bwrap::Support::Full => {}
                bwrap::Support::Missing => return Err(BuildError::NoSandbox),
                bwrap::Support::Lacking(why) => return Err(BuildError::SandboxUnsupported(why)),
            }
        }
        let sdk = Sdk::prepare(&cache)?;
        Ok(Self { sdk, cache, opts })
    }

    /// The SDK candidates are built against.
    pub fn sdk(&self) -> &Sdk {
        &self.sdk
    }

    /// Build options in force.
    pub fn options(&self) -> &BuildOptions {
        &self.opts
    }

    fn cache_key(&self, source_hash: &str) -> String {
        let desc = format!(
            "{source_hash}\n{}\n{}\n{:?}",
            self.sdk.fingerprint,
            RUSTC_FLAGS.join(" "),
            self.opts.isolation
        );
        sha256_hex(desc.as_bytes())
    }

    /// Build `source` into a component, or fetch it from the cache; a failure of the host is
    /// reported as a compile failure (see [`Builder::try_build`] to tell them apart).
    pub fn build(&self, source: &str) -> Result<Built, Failure> {
        self.try_build(source).map_err(BuildFailure::into_failure)
    }

    /// Build `source` into a component, or fetch it from the cache, telling the candidate's
    /// verdict from a failure of the host (which a search must not record as the candidate's).
    pub fn try_build(&self, source: &str) -> Result<Built, BuildFailure> {
        let start = Instant::now();
        if source.len() > self.opts.max_source_bytes {
            return Err(Failure::Compile {
                diagnostics: format!(
                    "the source is {} bytes; the limit is {}",
                    source.len(),
                    self.opts.max_source_bytes
                ),
            }
            .into());
        }
        let source_hash = sha256_hex(source.as_bytes());
        let key = self.cache_key(&source_hash);
        if let Some(wasm) = self.cache.get(&key, "wasm") {
            return Ok(Built {
                wasm,
                source_hash,
                key,
                cached: true,
                seconds: start.elapsed().as_secs_f64(),
                warnings: String::new(),
            });
        }
        if self.opts.lint {
            let findings = lint::lint(source);
            if !findings.is_empty() {
                let diagnostics = findings
                    .iter()
                    .map(|f| format!("error: line {}: {}", f.line, f.message))
                    .collect::<Vec<_>>()
                    .join("\n");
                return Err(Failure::Compile { diagnostics }.into());
            }
        }
        let (core, warnings) = self.compile_core(source)?;
        let wasm = componentize(&core)?;
        let _ = self.cache.put(&key, "wasm", &wasm);
        Ok(Built {
            wasm,
            source_hash,
            key,
            cached: false,
            seconds: start.elapsed().as_secs_f64(),
            warnings,
        })
    }

    /// Run rustc on the source; returns the core module and the compiler's warnings.
    fn compile_core(&self, source: &str) -> Result<(Vec<u8>, String), BuildFailure> {
        let io = |e: std::io::Error| BuildFailure::Host(format!("build folder: {e}"));
        let mut folder = tempfile::Builder::new();
        folder.prefix("autoprune-build-");
        let job = match &self.opts.work_dir {
            Some(dir) => folder.tempdir_in(dir),
            None => folder.tempdir(),
        }
        .map_err(io)?;
        let src = job.path().join("lib.rs");
        let out = job.path().join("out");
        std::fs::write(&src, source).map_err(io)?;
        std::fs::create_dir(&out).map_err(io)?;
        let job_spec = bwrap::Job {
            source: src,
            out_dir: out.clone(),
            sdk: &self.sdk,
            flags: RUSTC_FLAGS,
            opts: &self.opts,
        };
        let res = match self.opts.isolation {
            Isolation::Bwrap => bwrap::run_sandboxed(&job_spec),
            Isolation::Trusted => bwrap::run_trusted(&job_spec),
        }
        .map_err(|e| BuildFailure::Host(e.to_string()))?;
        let diagnostics = clip(&res.stderr, self.opts.max_diagnostics_bytes);
        if res.flooded {
            return Err(Failure::Compile {
                diagnostics: format!(
                    "the compiler was stopped: its output passed {} bytes (the host reads no more)\n{diagnostics}",
                    self.opts.max_compiler_output_bytes
                ),
            }
            .into());
        }
        if res.killed {
            return Err(Failure::Compile {
                diagnostics: format!(
                    "the compiler was stopped after {} s (time limit) or by its memory/file limits\n{diagnostics}",
                    self.opts.timeout_secs
                ),
            }
            .into());
        }
        if !res.success {
            return Err(Failure::Compile { diagnostics }.into());
        }
        // Written inside the sandbox: not followed if it is a link, a regular file, capped.
        let module =
            crate::files::read_nofollow(&out.join("candidate.wasm"), self.opts.max_output_bytes)
                .map_err(|e| Failure::Compile {
                    diagnostics: format!(
                        "the compiler produced no usable module ({e})\n{diagnostics}"
                    ),
                })?;
        Ok((module, diagnostics))
    }
}

/// Keep at most `max` bytes of compiler output, cut at a character boundary.
fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}\n…[diagnostics truncated]", &s[..cut])
}

/// The WIT package the host builds every component against.
const WIT: &str = include_str!("../../../wit/metric.wit");

/// Wrap a core module into a component (in-process) and check its imports.
///
/// The component's type comes from the host, not from the module: the world is told from the
/// module's exports (`allocate`: allocator, `score`: metric), every `component-type` custom
/// section the module carries is dropped, and the host's own WIT for that world is embedded.
pub fn componentize(core: &[u8]) -> Result<Vec<u8>, Failure> {
    let reject = |reason: String| Failure::Rejected { reason };
    let (sections, exports) =
        core_sections(core).map_err(|e| reject(format!("malformed core module: {e}")))?;
    let world = World::from_exports(exports.iter().map(String::as_str))?;
    let mut module = core[..8].to_vec();
    for (start, end, custom) in sections {
        if !custom.is_some_and(|n| n.starts_with("component-type")) {
            module.extend_from_slice(&core[start..end]);
        }
    }
    let mut resolve = wit_parser::Resolve::default();
    let pkg = resolve
        .push_str("metric.wit", WIT)
        .map_err(|e| reject(format!("host WIT: {e:#}")))?;
    let name = match world {
        World::Metric => "metric",
        World::Allocator => "allocator",
    };
    let world_id = resolve
        .select_world(&[pkg], Some(name))
        .map_err(|e| reject(format!("host WIT: {e:#}")))?;
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world_id,
        wit_component::StringEncoding::UTF8,
    )
    .map_err(|e| reject(format!("cannot embed the {name} world: {e:#}")))?;
    let wasm = wit_component::ComponentEncoder::default()
        .validate(true)
        .module(&module)
        .and_then(|mut e| e.encode())
        .map_err(|e| Failure::Rejected {
            reason: format!("cannot make a component of the compiled module: {e:#}"),
        })?;
    let allowed = match world {
        World::Metric => ALLOWED_IMPORTS,
        World::Allocator => ALLOWED_ALLOCATOR_IMPORTS,
    };
    let imports = component_imports(&wasm)?;
    if let Some(bad) = imports.iter().find(|i| !allowed.contains(&i.as_str())) {
        return Err(Failure::Rejected {
            reason: format!(
                "the component imports `{bad}`; only {} are allowed",
                allowed.join(", ")
            ),
        });
    }
    Ok(wasm)
}

/// The world a component implements, read from its type (no native compile needed).
pub fn component_world(wasm: &[u8]) -> Result<World, Failure> {
    let decoded = wit_component::decode(wasm).map_err(|e| Failure::Rejected {
        reason: format!("cannot read the component's type: {e:#}"),
    })?;
    let wit_component::DecodedWasm::Component(resolve, world) = decoded else {
        return Err(Failure::Rejected {
            reason: "a WIT package, not a component".into(),
        });
    };
    let names: Vec<String> = resolve.worlds[world]
        .exports
        .keys()
        .map(|k| match k {
            wit_parser::WorldKey::Name(n) => n.clone(),
            wit_parser::WorldKey::Interface(id) => resolve.id_of(*id).unwrap_or_default(),
        })
        .collect();
    World::from_exports(names.iter().map(String::as_str))
}

/// A section of a core module: byte range (header included) and, for a custom section, its name.
type Section<'a> = (usize, usize, Option<&'a str>);

/// Split a core module into sections and collect its export names (a minimal reader: only
/// section framing, custom-section names and the export section are parsed).
fn core_sections(core: &[u8]) -> Result<(Vec<Section<'_>>, Vec<String>), String> {
    fn leb(b: &[u8], pos: &mut usize) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *b.get(*pos).ok_or("truncated LEB128")?;
            *pos += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("LEB128 too long".into())
    }
    fn name<'a>(b: &'a [u8], pos: &mut usize) -> Result<&'a str, String> {
        let len = leb(b, pos)? as usize;
        let end = pos
            .checked_add(len)
            .filter(|&e| e <= b.len())
            .ok_or("truncated name")?;
        let s = std::str::from_utf8(&b[*pos..end]).map_err(|_| "name is not UTF-8")?;
        *pos = end;
        Ok(s)
    }
    if core.len() < 8 || &core[..4] != b"\0asm" || core[4..8] != [1, 0, 0, 0] {
        return Err("not a core wasm module".into());
    }
    let mut pos = 8;
    let (mut sections, mut exports) = (Vec::new(), Vec::new());
    while pos < core.len() {
        let start = pos;
        let id = core[pos];
        pos += 1;
        let len = leb(core, &mut pos)? as usize;
        let end = pos
            .checked_add(len)
            .filter(|&e| e <= core.len())
            .ok_or("truncated section")?;
        let body = &core[..end];
        let mut p = pos;
        let custom = match id {
            0 => Some(name(body, &mut p)?),
            7 => {
                for _ in 0..leb(body, &mut p)? {
                    exports.push(name(body, &mut p)?.to_string());
                    p += 1; // kind
                    leb(body, &mut p)?; // index
                }
                None
            }
            _ => None,
        };
        sections.push((start, end, custom));
        pos = end;
    }
    Ok((sections, exports))
}

/// Names of the functions and interfaces a component imports, read from its type (no native
/// compile needed).
pub fn component_imports(wasm: &[u8]) -> Result<Vec<String>, Failure> {
    let decoded = wit_component::decode(wasm).map_err(|e| Failure::Rejected {
        reason: format!("cannot read the component's type: {e:#}"),
    })?;
    let wit_component::DecodedWasm::Component(resolve, world) = decoded else {
        return Err(Failure::Rejected {
            reason: "a WIT package, not a component".into(),
        });
    };
    Ok(resolve.worlds[world]
        .imports
        .iter()
        // Types a world `use`s are not capabilities; functions and interfaces are.
        .filter(|(_, item)| !matches!(item, wit_parser::WorldItem::Type { .. }))
        .map(|(k, _)| match k {
            wit_parser::WorldKey::Name(n) => n.clone(),
            wit_parser::WorldKey::Interface(id) => resolve.id_of(*id).unwrap_or_default(),
        })
        .collect())
}

/// Read a metric source or component from `path`: `.rs` files are built, anything else is
/// treated as component bytes.
pub fn is_source(path: &std::path::Path) -> bool {
    path.extension().is_some_and(|e| e == "rs")
}

/// The cache in its default place ([`ArtifactCache::default_dir`]), checked to be this user's.
pub fn default_cache() -> Result<ArtifactCache, crate::sandbox::CacheError> {
    ArtifactCache::open(ArtifactCache::default_dir()?)
}

/// Why 1 hour: `timeout` treats 0 as "no limit", and no metric needs more than minutes.
pub const MAX_BUILD_TIMEOUT_SECS: u64 = 3600;

impl BuildOptions {
    /// The wall-clock kill as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    /// Refuse limits that would switch a bound off (`timeout 0s` runs forever) or make every
    /// build fail.
    pub fn check(&self) -> Result<(), BuildError> {
        if !(1..=MAX_BUILD_TIMEOUT_SECS).contains(&self.timeout_secs) {
            return Err(BuildError::Options(format!(
                "the build timeout must be 1..={MAX_BUILD_TIMEOUT_SECS} s (got {}; 0 would mean no limit)",
                self.timeout_secs
            )));
        }
        let positive = [
            ("memory_bytes", self.memory_bytes),
            ("max_output_bytes", self.max_output_bytes),
            (
                "max_compiler_output_bytes",
                self.max_compiler_output_bytes as u64,
            ),
            ("max_processes", self.max_processes),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(BuildError::Options(format!("{name} must be positive")));
        }
        Ok(())
    }
}
