//! The heap allocator's own count of the memory this process holds.
//!
//! A process's resident memory (RSS) holds, besides what the program allocated and has not
//! freed, what the heap allocator keeps for later. glibc's `malloc` keeps freed memory in
//! each of its arenas (up to eight per core, one per thread that needed one) and gives back to
//! the system only the top of each, so that part grows with how allocations and frees
//! interleave across threads, not with what the program holds. A leak shows in the
//! allocator's count of the memory in use.

use std::sync::OnceLock;

/// What the heap allocator holds for this process, by its own count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeapUse {
    /// Bytes allocated and not freed, with the allocator's overhead per allocation.
    pub in_use: u64,
    /// Bytes the allocator holds free for later allocations (resident or not).
    pub kept_free: u64,
}

/// The heap allocator's count now: glibc's (`malloc_info`), or why there is none.
///
/// Whether glibc's `malloc` serves this process's allocations is checked at the first call,
/// by allocating 64 MiB (not touched, so not resident) and seeing glibc's count grow by it:
/// it does not with another allocator in its place (jemalloc through `LD_PRELOAD`, say).
/// Call it once before the work to count starts, so that the check runs in a quiet moment.
pub(crate) fn heap_use() -> Result<HeapUse, NoCount> {
    static GLIBC_SERVES: OnceLock<bool> = OnceLock::new();
    if !*GLIBC_SERVES.get_or_init(|| (0..3).any(|_| glibc_serves())) {
        return Err(NoCount::NotGlibc);
    }
    glibc::count()
}

/// The `GLIBC_TUNABLES` setting that turns glibc's per-thread caches off.
///
/// Each thread's cache keeps up to 7 freed chunks of each small size (to 1 KiB) for the
/// thread's next allocations. `malloc_info` does not list them as free, so what they hold
/// counts as in use: it grows with the threads alive and with how full their caches are,
/// not with what the program holds. A program that judges the heap in use runs with them off
/// (the soak example sets this and runs itself again).
pub const NO_THREAD_CACHES: &str = "glibc.malloc.tcache_count=0";

/// Whether this process runs with glibc's per-thread caches off ([`NO_THREAD_CACHES`]).
pub fn thread_caches_off() -> bool {
    std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.split(':').any(|s| s == NO_THREAD_CACHES))
}

/// Why there is no count of the heap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NoCount {
    /// glibc's `malloc` does not serve this process's allocations.
    #[error("glibc's malloc does not serve this process")]
    NotGlibc,
    /// glibc's `malloc_info` failed.
    #[error("glibc's malloc_info failed: {0}")]
    Failed(String),
}

fn glibc_serves() -> bool {
    const PROBE: usize = 64 << 20;
    let Ok(before) = glibc::count() else {
        return false;
    };
    // Above glibc's largest mmap threshold (32 MiB on 64-bit), so mapped on its own, whatever
    // the heap holds: it shows in glibc's count only if glibc's `malloc` served it.
    let mut probe: Vec<u8> = Vec::new();
    if probe.try_reserve_exact(PROBE).is_err() {
        return false;
    }
    let probe = std::hint::black_box(probe);
    let after = glibc::count();
    drop(probe);
    after.is_ok_and(|after| after.in_use >= before.in_use + (PROBE as u64) * 7 / 8)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    use malloc_info::info::{SystemType, TotalType};

    use super::{HeapUse, NoCount};

    /// From `malloc_info`'s totals over every arena: the memory its arenas took from the
    /// system, less their free chunks (the top chunk among them), plus the chunks mapped on
    /// their own.
    pub(super) fn count() -> Result<HeapUse, NoCount> {
        let info = malloc_info::malloc_info().map_err(|e| NoCount::Failed(e.to_string()))?;
        let total = |kind: TotalType| {
            info.total
                .iter()
                .filter(|t| t.r#type == kind)
                .map(|t| t.size as u64)
                .sum::<u64>()
        };
        let system: u64 = info
            .system
            .iter()
            .filter(|s| s.r#type == SystemType::Current)
            .map(|s| s.size as u64)
            .sum();
        let free = total(TotalType::Fast) + total(TotalType::Rest);
        Ok(HeapUse {
            in_use: system.saturating_sub(free) + total(TotalType::Mmap),
            kept_free: free,
        })
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod glibc {
    use super::{HeapUse, NoCount};

    pub(super) fn count() -> Result<HeapUse, NoCount> {
        Err(NoCount::NotGlibc)
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use std::hint::black_box;

    use super::*;

    #[test]
    fn glibc_counts_what_this_process_holds_and_frees() {
        // 64 MiB in 64 KiB blocks (from the arenas, not mapped one by one), against a margin
        // of 32 MiB for what other tests in this process allocate or free meanwhile.
        const HELD: u64 = 64 << 20;
        const MARGIN: u64 = 32 << 20;
        let before = heap_use().expect("glibc's malloc serves the test binary");
        let blocks: Vec<Vec<u8>> = (0..1024).map(|_| vec![1u8; 64 << 10]).collect();
        let blocks = black_box(blocks);
        let held = heap_use().unwrap();
        assert!(
            held.in_use >= before.in_use + HELD - MARGIN,
            "{before:?} then {held:?} while holding 64 MiB"
        );
        drop(blocks);
        let freed = heap_use().unwrap();
        assert!(
            freed.in_use + HELD - MARGIN <= held.in_use,
            "{held:?} then {freed:?} after freeing 64 MiB"
        );
    }
}
