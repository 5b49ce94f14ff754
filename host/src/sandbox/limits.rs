//! The memory limiter of every store: wasmtime's caps plus a record of the peak and of a hit cap.

use wasmtime::{ResourceLimiter, StoreLimits};

/// Memory limiter: wasmtime's `StoreLimits` (cap, trap on grow failure) plus a record of the
/// peak size and a typed marker when the cap was hit.
pub(crate) struct Limiter {
    inner: StoreLimits,
    pub(crate) peak_bytes: usize,
    pub(crate) hit_cap: bool,
}

impl Limiter {
    pub(crate) fn new(memory_bytes: u64) -> Self {
        let inner = wasmtime::StoreLimitsBuilder::new()
            .memory_size(memory_bytes as usize)
            .memories(1)
            .tables(4)
            .table_elements(100_000)
            .instances(16)
            .trap_on_grow_failure(true)
            .build();
        Self {
            inner,
            peak_bytes: 0,
            hit_cap: false,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let r = self.inner.memory_growing(current, desired, maximum);
        match &r {
            Ok(true) => self.peak_bytes = self.peak_bytes.max(desired),
            _ => self.hit_cap = true,
        }
        r
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }
    fn tables(&self) -> usize {
        self.inner.tables()
    }
    fn memories(&self) -> usize {
        self.inner.memories()
    }
}
