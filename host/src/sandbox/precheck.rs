//! Limits on a component's shape, checked with `wasmparser` before Cranelift sees it.
//!
//! The size cap alone ([`Policy::max_component_bytes`](super::Policy::max_component_bytes))
//! does not bound compile time: 16 MiB of wasm can be one function whose body makes Cranelift
//! work for minutes, or hundreds of thousands of tiny functions. A metric compiled by our
//! builder is a few hundred functions of at most a few KiB; these limits leave room for
//! metrics far larger than any of ours and stop what no compiler emits for a metric.

use super::verdict::Failure;
use wasmparser::{Parser, Payload};

/// Core functions in the whole component (every nested module together). Why 20,000: our
/// candidates compile to 100–400 (the SDK, the bindings and `core`/`alloc` included).
pub const MAX_FUNCTIONS: u64 = 20_000;
/// Bytes of one function body. Why 256 KiB: the largest body rustc emits for our metrics is a
/// few KiB (fully inlined score loops included); Cranelift's time grows faster than linearly
/// with a body's size.
pub const MAX_BODY_BYTES: usize = 256 << 10;
/// Locals of one function. Why 10,000: LLVM output declares tens to hundreds; each local is
/// register-allocation work for Cranelift (wasmparser's own cap is 50,000).
pub const MAX_LOCALS: u64 = 10_000;
/// Data segments in the whole component. Why 1,000: LLVM emits one per data section
/// (`.rodata`, `.data`, …), a handful in all.
pub const MAX_DATA_SEGMENTS: u64 = 1_000;
/// Core modules and nested components. Why 32: `wit-component` emits the main module plus a
/// few adapter shims.
pub const MAX_MODULES: u64 = 32;
/// Globals, element segments, tables, memories, imports and exports of every module and
/// component together. Why 10,000: our components have tens of each.
pub const MAX_ITEMS: u64 = 10_000;

fn reject(reason: String) -> Failure {
    Failure::Rejected { reason }
}

fn over(what: &str, got: u64, max: u64) -> Result<(), Failure> {
    if got > max {
        return Err(reject(format!(
            "the component has {got} {what}; the limit is {max}"
        )));
    }
    Ok(())
}

/// Refuse a component whose shape is beyond the limits above (or that does not parse).
pub fn check(bytes: &[u8]) -> Result<(), Failure> {
    let malformed = |e: wasmparser::BinaryReaderError| reject(format!("malformed component: {e}"));
    let (mut functions, mut data, mut modules, mut items) = (0u64, 0u64, 0u64, 0u64);
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(malformed)? {
            Payload::FunctionSection(r) => {
                functions += u64::from(r.count());
                over("core functions", functions, MAX_FUNCTIONS)?;
            }
            Payload::CodeSectionStart { count, .. } => {
                over("function bodies", u64::from(count), MAX_FUNCTIONS)?;
            }
            Payload::CodeSectionEntry(body) => {
                let size = body.range().len();
                if size > MAX_BODY_BYTES {
                    return Err(reject(format!(
                        "a function body is {size} bytes; the limit is {MAX_BODY_BYTES}"
                    )));
                }
                let mut locals = body.get_locals_reader().map_err(malformed)?;
                let mut total = 0u64;
                for _ in 0..locals.get_count() {
                    total += u64::from(locals.read().map_err(malformed)?.0);
                    over("locals in one function", total, MAX_LOCALS)?;
                }
            }
            Payload::DataSection(r) => {
                data += u64::from(r.count());
                over("data segments", data, MAX_DATA_SEGMENTS)?;
            }
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => {
                modules += 1;
                over("nested modules and components", modules, MAX_MODULES)?;
            }
            Payload::GlobalSection(r) => items += u64::from(r.count()),
            Payload::ElementSection(r) => items += u64::from(r.count()),
            Payload::TableSection(r) => items += u64::from(r.count()),
            Payload::MemorySection(r) => items += u64::from(r.count()),
            Payload::ImportSection(r) => items += u64::from(r.count()),
            Payload::ExportSection(r) => items += u64::from(r.count()),
            Payload::ComponentImportSection(r) => items += u64::from(r.count()),
            Payload::ComponentExportSection(r) => items += u64::from(r.count()),
            _ => {}
        }
        over(
            "globals, tables, memories, imports and exports",
            items,
            MAX_ITEMS,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component(core_funcs: &str) -> Vec<u8> {
        wat::parse_str(format!("(component (core module {core_funcs}))")).unwrap()
    }

    #[test]
    fn ordinary_components_pass_and_hostile_shapes_are_refused_before_compiling() {
        assert!(check(&component("(func) (func (local i32))")).is_ok());
        let many = "(func)".repeat(MAX_FUNCTIONS as usize + 1);
        // `check` only parses (it never compiles), so the refusal comes before any compilation.
        let err = check(&component(&many)).unwrap_err();
        assert!(
            matches!(&err, Failure::Rejected { reason } if reason.contains("core functions")),
            "{err}"
        );
        let locals = format!("(func (local {}))", "i64 ".repeat(MAX_LOCALS as usize + 1));
        let err = check(&component(&locals)).unwrap_err();
        assert!(
            matches!(&err, Failure::Rejected { reason } if reason.contains("locals")),
            "{err}"
        );
        let body = format!("(func {})", "(nop)".repeat(MAX_BODY_BYTES + 1));
        let err = check(&component(&body)).unwrap_err();
        assert!(
            matches!(&err, Failure::Rejected { reason } if reason.contains("body")),
            "{err}"
        );
        let data = format!(
            "(memory 1) {}",
            "(data (i32.const 0) \"x\")".repeat(MAX_DATA_SEGMENTS as usize + 1)
        );
        let err = check(&component(&data)).unwrap_err();
        assert!(
            matches!(&err, Failure::Rejected { reason } if reason.contains("data")),
            "{err}"
        );
        assert!(check(b"\0asm\x0d\0\x01\0\xff").is_err());
    }
}
