//! Host calls are charged in fuel.
//!
//! Wasm fuel counts the guest's instructions, not the host's work: a plugin that re-reads the
//! same tile in a loop spends host time at almost no fuel. Every host function is therefore
//! re-linked here (shadowing the `bindgen!` definitions) to charge, before it returns to the
//! guest, [`Policy::hostcall_fuel_per_call`](super::Policy::hostcall_fuel_per_call) plus
//! [`Policy::hostcall_fuel_per_byte`](super::Policy::hostcall_fuel_per_byte) for every byte it
//! moved (tiles read, scores written, statistics, log text). A call the fuel left cannot pay
//! for traps as out of fuel, so a layer's whole cost — wasm and host — is bounded by its fuel
//! grant. Charges depend only on the call's arguments: fuel stays deterministic, and no score
//! changes. Every published version of the contract is charged alike (0.2.0's Hessian and
//! output statistics by the bytes they return).

use super::bindings::{v0_1_1, v0_2_0, Version};
use super::state::HostState;
use wasmtime::component::Linker;
use wasmtime::StoreContextMut;
use wasmtime::Trap;

/// Take the price of a call that moved `bytes` from the store's fuel, or trap.
fn charge(store: &mut StoreContextMut<'_, HostState>, bytes: usize) -> wasmtime::Result<()> {
    let (per_call, per_byte) = store.data().hostcall_prices();
    let cost = per_call.saturating_add(per_byte.saturating_mul(bytes as u64));
    let left = store.get_fuel()?;
    if cost > left {
        store.set_fuel(0)?;
        return Err(Trap::OutOfFuel.into());
    }
    store.set_fuel(left - cost)?;
    Ok(())
}

/// Bytes of a result list (`f32`s).
fn list_bytes<E>(r: &Result<Vec<f32>, E>) -> usize {
    r.as_ref().map_or(0, |v| 4 * v.len())
}

type Store<'a> = StoreContextMut<'a, HostState>;

/// The charged `host` and `logging` functions of one version's bindings (`$v`), defined under
/// the interface names of that package version; `$extra` charges the functions it added.
macro_rules! charged {
    ($v:ident, $metric:ident, $allocator:ident, |$i:ident| $extra:block) => {
        fn $metric(linker: &mut Linker<HostState>, package: &str) -> wasmtime::Result<()> {
            use $v::{host, types};
            let stats_bytes = |s: &types::ChannelStats| {
                4 * (s.l2_norm.len()
                    + s.sum.len()
                    + s.mean.len()
                    + s.variance.len()
                    + s.max_abs.len())
                    + 8
            };
            linker.allow_shadowing(true);
            let mut $i = linker.instance(&format!("autoprune:metric/host@{package}"))?;
            $i.func_wrap("activation-stats", move |mut s: Store<'_>, (): ()| {
                let r = host::Host::activation_stats(s.data_mut())?;
                charge(&mut s, stats_bytes(&r))?;
                Ok((r,))
            })?;
            $i.func_wrap("read-weights", |mut s: Store<'_>, (r0, n): (u32, u32)| {
                let r = host::Host::read_weights(s.data_mut(), r0, n)?;
                charge(&mut s, list_bytes(&r))?;
                Ok((r,))
            })?;
            $i.func_wrap("read-gradient", |mut s: Store<'_>, (r0, n): (u32, u32)| {
                let r = host::Host::read_gradient(s.data_mut(), r0, n)?;
                charge(&mut s, list_bytes(&r))?;
                Ok((r,))
            })?;
            $i.func_wrap(
                "write-scores",
                |mut s: Store<'_>, (r0, scores): (u32, Vec<f32>)| {
                    let bytes = 4 * scores.len();
                    let r = host::Host::write_scores(s.data_mut(), r0, scores)?;
                    charge(&mut s, bytes)?;
                    Ok((r,))
                },
            )?;
            $i.func_wrap(
                "log",
                |mut s: Store<'_>, (level, msg): (types::LogLevel, String)| {
                    let bytes = msg.len();
                    host::Host::log(s.data_mut(), level, msg)?;
                    charge(&mut s, bytes)
                },
            )?;
            $i.func_wrap("report-panic", |mut s: Store<'_>, (msg,): (String,)| {
                let bytes = msg.len();
                host::Host::report_panic(s.data_mut(), msg)?;
                charge(&mut s, bytes)
            })?;
            $extra
            linker.allow_shadowing(false);
            Ok(())
        }

        fn $allocator(linker: &mut Linker<HostState>, package: &str) -> wasmtime::Result<()> {
            use $v::{logging, types};
            linker.allow_shadowing(true);
            let mut i = linker.instance(&format!("autoprune:metric/logging@{package}"))?;
            i.func_wrap(
                "log",
                |mut s: Store<'_>, (level, msg): (types::LogLevel, String)| {
                    let bytes = msg.len();
                    logging::Host::log(s.data_mut(), level, msg)?;
                    charge(&mut s, bytes)
                },
            )?;
            i.func_wrap("report-panic", |mut s: Store<'_>, (msg,): (String,)| {
                let bytes = msg.len();
                logging::Host::report_panic(s.data_mut(), msg)?;
                charge(&mut s, bytes)
            })?;
            linker.allow_shadowing(false);
            Ok(())
        }
    };
}

charged!(v0_1_1, metric_0_1, allocator_0_1, |i| {});

charged!(v0_2_0, metric_0_2, allocator_0_2, |i| {
    i.func_wrap("hessian-inverse-diagonal", |mut s: Store<'_>, (): ()| {
        let r = v0_2_0::host::Host::hessian_inverse_diagonal(s.data_mut())?;
        charge(&mut s, list_bytes(&r))?;
        Ok((r,))
    })?;
    i.func_wrap("output-stats", |mut s: Store<'_>, (): ()| {
        let r = v0_2_0::host::Host::output_stats(s.data_mut())?;
        let bytes = r.as_ref().map_or(0, |o| {
            4 * (o.l2_norm.len() + o.mean.len() + o.variance.len()) + 8
        });
        charge(&mut s, bytes)?;
        Ok((r,))
    })?;
});

/// Re-link the metric world's `host` interface of `version` with charged functions. Components
/// built against 0.1.0 resolve to the 0.1.1 definitions, so shadowing those covers both.
pub(crate) fn metric(linker: &mut Linker<HostState>, version: Version) -> wasmtime::Result<()> {
    match version {
        Version::V0_1 => metric_0_1(linker, version.package()),
        Version::V0_2 => metric_0_2(linker, version.package()),
    }
}

/// Re-link the allocator world's `logging` interface of `version` with charged functions.
pub(crate) fn allocator(linker: &mut Linker<HostState>, version: Version) -> wasmtime::Result<()> {
    match version {
        Version::V0_1 => allocator_0_1(linker, version.package()),
        Version::V0_2 => allocator_0_2(linker, version.package()),
    }
}
