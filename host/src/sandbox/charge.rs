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
//! changes.

use super::bindings::v0_1_1::{host, logging, types};
use super::state::HostState;
use wasmtime::component::Linker;
use wasmtime::StoreContextMut;
use wasmtime::Trap;

/// The interface names the charged functions are defined under. Components built against
/// 0.1.0 resolve to the 0.1.1 definitions, so shadowing these covers both.
const HOST: &str = "autoprune:metric/host@0.1.1";
const LOGGING: &str = "autoprune:metric/logging@0.1.1";

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

/// Bytes of a channel-statistics record (five `f32` lists and the token count).
fn stats_bytes(s: &types::ChannelStats) -> usize {
    4 * (s.l2_norm.len() + s.sum.len() + s.mean.len() + s.variance.len() + s.max_abs.len()) + 8
}

/// Bytes of a read result.
fn read_bytes(r: &Result<Vec<f32>, types::Error>) -> usize {
    r.as_ref().map_or(0, |v| 4 * v.len())
}

type Store<'a> = StoreContextMut<'a, HostState>;

/// Re-link the metric world's `host` interface with charged functions.
pub(crate) fn metric(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut i = linker.instance(HOST)?;
    i.func_wrap("activation-stats", |mut s: Store<'_>, (): ()| {
        let r = host::Host::activation_stats(s.data_mut())?;
        charge(&mut s, stats_bytes(&r))?;
        Ok((r,))
    })?;
    i.func_wrap("read-weights", |mut s: Store<'_>, (r0, n): (u32, u32)| {
        let r = host::Host::read_weights(s.data_mut(), r0, n)?;
        charge(&mut s, read_bytes(&r))?;
        Ok((r,))
    })?;
    i.func_wrap("read-gradient", |mut s: Store<'_>, (r0, n): (u32, u32)| {
        let r = host::Host::read_gradient(s.data_mut(), r0, n)?;
        charge(&mut s, read_bytes(&r))?;
        Ok((r,))
    })?;
    i.func_wrap(
        "write-scores",
        |mut s: Store<'_>, (r0, scores): (u32, Vec<f32>)| {
            let bytes = 4 * scores.len();
            let r = host::Host::write_scores(s.data_mut(), r0, scores)?;
            charge(&mut s, bytes)?;
            Ok((r,))
        },
    )?;
    i.func_wrap(
        "log",
        |mut s: Store<'_>, (level, msg): (types::LogLevel, String)| {
            let bytes = msg.len();
            host::Host::log(s.data_mut(), level, msg)?;
            charge(&mut s, bytes)
        },
    )?;
    i.func_wrap("report-panic", |mut s: Store<'_>, (msg,): (String,)| {
        let bytes = msg.len();
        host::Host::report_panic(s.data_mut(), msg)?;
        charge(&mut s, bytes)
    })?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Re-link the allocator world's `logging` interface with charged functions.
pub(crate) fn allocator(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut i = linker.instance(LOGGING)?;
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
