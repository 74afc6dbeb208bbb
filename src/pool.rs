//! The buffer pool of a context: size classes, free lists with a cap and idle release, and
//! allocation statistics. `LossContext::alloc` serves requests from it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Allocation statistics of a context: device bytes held, and how they were obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AllocStats {
    /// Bytes of every device buffer the context created and still holds (live or pooled).
    pub allocated_bytes: u64,
    /// Of those, bytes sitting in the pool, ready for reuse.
    pub pooled_bytes: u64,
    /// Buffers created since the context was made.
    pub buffers_created: u64,
    /// Requests served from the pool instead of creating a buffer.
    pub pool_hits: u64,
    /// Pooled buffers released back to the device (over the pool's cap, or unused for a while).
    pub buffers_released: u64,
}

/// Requests of this many allocations without use release a pooled buffer.
pub(crate) const POOL_IDLE_ALLOCS: u64 = 16384;
/// The pool looks for idle buffers every this many allocations.
pub(crate) const POOL_TRIM_EVERY: u64 = 256;
/// The default cap on pooled bytes is twice the most bytes ever live at once, plus this.
pub(crate) const POOL_SLACK: u64 = 4 << 20;

/// The size a request of `size` bytes is served with: four classes per power of two (at most
/// 25% over), so that shapes that vary a little share buffers. A class over the device's binding
/// limit falls back to the limit; requests over a quarter of the device's buffer limit are served
/// exactly (a huge buffer is rarely one of many shapes, and some drivers fail allocations right
/// at their limit: SwiftShader's 1 GiB).
pub(crate) fn size_class(size: u64, limits: &wgpu::Limits) -> u64 {
    let size = size.max(4).div_ceil(4) * 4;
    if size > limits.max_buffer_size / 4 {
        return size;
    }
    let class = if size <= 64 {
        64
    } else {
        let p = 1u64 << (63 - (size - 1).leading_zeros());
        let q = p / 4;
        p + (size - p).div_ceil(q) * q
    };
    let binding = limits.max_storage_buffer_binding_size / 4 * 4;
    if class > limits.max_buffer_size {
        size
    } else if size <= binding && class > binding {
        binding
    } else {
        class
    }
}

/// The pool: free buffers by (size, usage), each stamped with the allocation count at which it
/// came back. Bounded two ways, both applied at each allocation: pooled bytes are brought under
/// a cap (`ContextOptions::pool_cap`, by default twice the most bytes ever live at once plus
/// 4 MiB), releasing the least recently returned first; and a buffer not reused within
/// `POOL_IDLE_ALLOCS` allocations is released.
pub(crate) struct Pool {
    pub(crate) free: Mutex<FreeList>,
    pub(crate) allocated: AtomicU64,
    pub(crate) pooled: AtomicU64,
    pub(crate) created: AtomicU64,
    pub(crate) hits: AtomicU64,
    pub(crate) released: AtomicU64,
    pub(crate) cap: Option<u64>,
}

#[derive(Default)]
pub(crate) struct FreeList {
    pub(crate) by_key: HashMap<(u64, u32), Vec<(u64, wgpu::Buffer)>>,
    /// Allocations so far: the pool's clock.
    pub(crate) clock: u64,
    /// The most bytes live (allocated, not pooled) at once.
    pub(crate) live_high: u64,
}

impl Pool {
    pub(crate) fn new(cap: Option<u64>) -> Pool {
        Pool {
            free: Mutex::new(FreeList::default()),
            allocated: AtomicU64::new(0),
            pooled: AtomicU64::new(0),
            created: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            released: AtomicU64::new(0),
            cap,
        }
    }

    pub(crate) fn cap(&self, free: &FreeList) -> u64 {
        self.cap
            .unwrap_or_else(|| free.live_high.saturating_mul(2).saturating_add(POOL_SLACK))
    }

    /// Releases the least recently returned buffers until the pooled bytes are at most `cap`.
    pub(crate) fn evict_to(&self, free: &mut FreeList, cap: u64) {
        while self.pooled.load(Ordering::Relaxed) > cap {
            let oldest = free
                .by_key
                .iter()
                .filter_map(|(k, v)| v.first().map(|(stamp, _)| (*stamp, *k)))
                .min();
            let Some((_, key)) = oldest else { break };
            self.release_first(free, key);
        }
    }

    /// Releases the oldest buffer of `key` (lists are in return order).
    pub(crate) fn release_first(&self, free: &mut FreeList, key: (u64, u32)) {
        if let Some(list) = free.by_key.get_mut(&key) {
            if !list.is_empty() {
                let (_, b) = list.remove(0);
                self.pooled.fetch_sub(b.size(), Ordering::Relaxed);
                self.allocated.fetch_sub(b.size(), Ordering::Relaxed);
                self.released.fetch_add(1, Ordering::Relaxed);
                // Dropped, not destroyed: wgpu frees it once queued work no longer uses it.
                drop(b);
            }
            if list.is_empty() {
                free.by_key.remove(&key);
            }
        }
    }

    /// Releases every buffer returned before `stamp`.
    pub(crate) fn release_older_than(&self, free: &mut FreeList, stamp: u64) {
        let keys: Vec<(u64, u32)> = free.by_key.keys().copied().collect();
        for key in keys {
            while free
                .by_key
                .get(&key)
                .and_then(|l| l.first())
                .is_some_and(|(s, _)| *s < stamp)
            {
                self.release_first(free, key);
            }
        }
    }
}

/// A buffer made by the context. Dropping it returns it to the pool; a caller's wrapped buffer
/// (`pool: None`) is only released.
pub(crate) struct PoolBuf {
    pub(crate) buffer: wgpu::Buffer,
    pub(crate) pool: Option<Arc<Pool>>,
}

impl Drop for PoolBuf {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            let size = self.buffer.size();
            let key = (size, self.buffer.usage().bits());
            if let Ok(mut free) = pool.free.lock() {
                pool.pooled.fetch_add(size, Ordering::Relaxed);
                let stamp = free.clock;
                free.by_key
                    .entry(key)
                    .or_default()
                    .push((stamp, self.buffer.clone()));
                // Releases happen in `alloc`, on a thread that talks to the device (GL).
            } else {
                pool.allocated.fetch_sub(size, Ordering::Relaxed);
            }
        }
    }
}

impl PoolBuf {
    pub(crate) fn wrap(buffer: wgpu::Buffer) -> Self {
        PoolBuf { buffer, pool: None }
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_are_at_most_a_quarter_over_and_within_the_limits() {
        let limits = wgpu::Limits {
            max_buffer_size: 2047 << 20,
            max_storage_buffer_binding_size: 128 << 20,
            ..wgpu::Limits::default()
        };
        let mut classes = std::collections::BTreeSet::new();
        let mut last = 0;
        for size in (1..=4096u64).chain((1..2000).map(|k| k * 65_537)) {
            let c = size_class(size, &limits);
            assert!(c >= size && c.is_multiple_of(4), "{size} -> {c}");
            assert!(
                c <= (size.max(64) as f64 * 1.25).ceil() as u64 + 4,
                "{size} -> {c}"
            );
            assert!(c >= last, "classes grow with the request");
            last = c;
            if size <= 128 << 20 {
                assert!(c <= 128 << 20, "{size} -> {c} is over the binding limit");
            }
            classes.insert(c);
        }
        // Four classes per power of two, not one per request.
        assert!(classes.len() < 120, "{} classes", classes.len());
        // Requests over a quarter of the buffer limit are served exactly.
        assert_eq!(size_class(1000 << 20, &limits), 1000 << 20);
    }
}
