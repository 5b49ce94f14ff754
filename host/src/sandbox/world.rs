//! The one load path every world shares: the size check, compilation (or the artifact
//! cache), the allowed imports, the package version, linking, and the one `describe` call.
//!
//! A world ([`WitWorld`]) supplies only what differs: its allowed imports, its linker
//! definitions, its `bindgen!` pre-instance types and how its `describe` is called.

use super::bindings::Version;
use super::cache::ArtifactCache;
use super::engine::{classify, compile, engine, new_store};
use super::policy::Policy;
use super::state::{Allowed, HostState};
use super::verdict::{Failure, InvalidOutput};
use std::time::Duration;
use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::Store;

/// A value for each published package version: a linked component typed by the bindings of
/// the version it imports.
pub(crate) enum Versioned<A, B> {
    /// Built against 0.1.0 or 0.1.1.
    V0_1(A),
    /// Built against 0.2.0.
    V0_2(B),
}

impl<A, B> Versioned<A, B> {
    /// The package version.
    pub(crate) fn version(&self) -> Version {
        match self {
            Versioned::V0_1(_) => Version::V0_1,
            Versioned::V0_2(_) => Version::V0_2,
        }
    }
}

/// What `describe` returned, in either version's types and either world's.
pub(crate) struct Described {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) description: String,
    /// The optional inputs declared (always none for an allocator).
    pub(crate) needs: Allowed,
}

/// One world of the `autoprune:metric` package, as the shared load path needs it.
pub(crate) trait WitWorld {
    /// The pre-instance of the 0.1.1 bindings.
    type Pre01;
    /// The pre-instance of the 0.2.0 bindings.
    type Pre02;
    /// Interface names a component of this world may import; anything else is rejected.
    const ALLOWED_IMPORTS: &'static [&'static str];
    /// What a component links against, as the refusal names it (`autoprune:metric`).
    const LINKS_AGAINST: &'static str;
    /// The world, as the refusal of a component that does not export it names it.
    fn exports(version: Version) -> String;
    /// Define the world's imports of `version`: the `bindgen!` ones, then the charged ones.
    fn add_to_linker(linker: &mut Linker<HostState>, version: Version) -> wasmtime::Result<()>;
    /// Type a linked 0.1.1 component.
    fn pre_0_1(pre: InstancePre<HostState>) -> wasmtime::Result<Self::Pre01>;
    /// Type a linked 0.2.0 component.
    fn pre_0_2(pre: InstancePre<HostState>) -> wasmtime::Result<Self::Pre02>;
    /// Instantiate in `store` and call `describe`.
    fn describe(pre: &Pre<Self>, store: &mut Store<HostState>) -> wasmtime::Result<Described>;
}

/// A linked component of world `W`.
pub(crate) type Pre<W> = Versioned<<W as WitWorld>::Pre01, <W as WitWorld>::Pre02>;

/// Compile `bytes` (or fetch the artifact from `cache`) after the size check.
pub(crate) fn component_of(
    bytes: &[u8],
    policy: &Policy,
    cache: Option<&ArtifactCache>,
) -> Result<Component, Failure> {
    if bytes.len() as u64 > policy.max_component_bytes {
        return Err(Failure::Rejected {
            reason: format!(
                "component is {} bytes; the limit is {}",
                bytes.len(),
                policy.max_component_bytes
            ),
        });
    }
    match cache {
        Some(c) => c.component(bytes),
        None => compile(bytes),
    }
}

/// The package version a component was built against, from its imports: `@0.1.0`/`@0.1.1`
/// names or `@0.2.0` names, never both. A component that imports nothing is taken as current.
fn version_of(component: &Component) -> Result<Version, Failure> {
    let ty = component.component_type();
    let mut found: Option<Version> = None;
    for (name, _) in ty.imports(engine()) {
        let Some(v) = Version::of_import(name) else {
            continue;
        };
        if found.is_some_and(|f| f != v) {
            return Err(Failure::Rejected {
                reason: format!(
                    "the component imports `{name}` next to names of another package version; a component is built against one version"
                ),
            });
        }
        found = Some(v);
    }
    Ok(found.unwrap_or(Version::V0_2))
}

/// Reject a component that imports anything not in `allowed`.
pub(crate) fn check_imports_against(
    component: &Component,
    allowed: &[&str],
) -> Result<(), Failure> {
    let ty = component.component_type();
    for (name, _) in ty.imports(engine()) {
        if !allowed.contains(&name) {
            return Err(Failure::Rejected {
                reason: format!(
                    "the component imports `{name}`; only {} are allowed",
                    allowed.join(", ")
                ),
            });
        }
    }
    Ok(())
}

/// Check, link and describe a compiled component as a plugin of world `W`.
pub(crate) fn load<W: WitWorld>(
    component: &Component,
    policy: &Policy,
) -> Result<(Pre<W>, Described), Failure> {
    check_imports_against(component, W::ALLOWED_IMPORTS)?;
    let version = version_of(component)?;
    let mut linker = Linker::new(engine());
    W::add_to_linker(&mut linker, version).map_err(|e| Failure::Rejected {
        reason: format!("host linker: {e}"),
    })?;
    let pre = linker
        .instantiate_pre(component)
        .map_err(|e| Failure::Rejected {
            reason: format!(
                "cannot link the component against {}@{}: {e:#}",
                W::LINKS_AGAINST,
                version.package()
            ),
        })?;
    let not_exported = |e: wasmtime::Error| Failure::Rejected {
        reason: format!(
            "the component does not export {}: {e:#}",
            W::exports(version)
        ),
    };
    let pre = match version {
        Version::V0_1 => Versioned::V0_1(W::pre_0_1(pre).map_err(not_exported)?),
        Version::V0_2 => Versioned::V0_2(W::pre_0_2(pre).map_err(not_exported)?),
    };
    let described = describe::<W>(&pre, policy)?;
    Ok((pre, described))
}

/// Call `describe` once in a fresh store (describe timeout, base fuel) and check the limits
/// on the self-description.
fn describe<W: WitWorld>(pre: &Pre<W>, policy: &Policy) -> Result<Described, Failure> {
    let timeout = Duration::from_millis(policy.describe_timeout_ms);
    let fuel = policy.fuel_base;
    let mut store = new_store(policy, Allowed::default(), fuel, timeout);
    store.set_hostcall_fuel(64 * 1024);
    let info = W::describe(pre, &mut store).map_err(|e| classify(e, &store, fuel, timeout))?;
    check_info(&info.name, &info.version, &info.description)?;
    Ok(info)
}

/// The limits on a plugin's self-description.
fn check_info(name: &str, version: &str, description: &str) -> Result<(), Failure> {
    let bad = |what: &str| Failure::InvalidOutput(InvalidOutput::BadInfo(what.into()));
    if name.is_empty() || name.len() > 128 {
        return Err(bad("name must be 1..=128 bytes"));
    }
    if version.len() > 64 || description.len() > 4096 {
        return Err(bad(
            "version (≤64 bytes) or description (≤4096 bytes) too long",
        ));
    }
    Ok(())
}
