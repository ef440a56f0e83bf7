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

/// The heap allocator's count now: glibc's (`malloc_info`), or `None` when glibc's `malloc`
/// does not serve this process's allocations (another allocator in its place, such as
/// jemalloc through `LD_PRELOAD`; another C library; another system).
///
/// Whether glibc's `malloc` serves the process is checked once, by allocating 64 MiB (not
/// touched, so not resident) and seeing glibc's count grow by it.
pub(crate) fn heap_use() -> Option<HeapUse> {
    static GLIBC_SERVES: OnceLock<bool> = OnceLock::new();
    if !*GLIBC_SERVES.get_or_init(glibc_serves) {
        return None;
    }
    glibc::count()
}

fn glibc_serves() -> bool {
    const PROBE: usize = 64 << 20;
    let Some(before) = glibc::count() else {
        return false;
    };
    // Above glibc's largest mmap threshold (32 MiB on 64-bit), so mapped on its own, whatever
    // the heap holds: it shows in glibc's count only if glibc's `malloc` served it.
    let probe: Vec<u8> = std::hint::black_box(Vec::with_capacity(PROBE));
    let after = glibc::count();
    drop(probe);
    after.is_some_and(|after| after.in_use >= before.in_use + (PROBE as u64) * 7 / 8)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    use malloc_info::info::{SystemType, TotalType};

    use super::HeapUse;

    /// From `malloc_info`'s totals over every arena: the memory its arenas took from the
    /// system, less their free chunks (the top chunk among them), plus the chunks mapped on
    /// their own.
    pub(super) fn count() -> Option<HeapUse> {
        let info = malloc_info::malloc_info().ok()?;
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
        Some(HeapUse {
            in_use: system.saturating_sub(free) + total(TotalType::Mmap),
            kept_free: free,
        })
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod glibc {
    use super::HeapUse;

    pub(super) fn count() -> Option<HeapUse> {
        None
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    #[test]
    fn glibc_counts_what_this_process_holds_and_frees() {
        let before = heap_use().expect("glibc's malloc serves the test binary");
        // 8 MiB in 8 KiB blocks: from the arenas, not mapped one by one.
        let blocks: Vec<Vec<u8>> = (0..1024).map(|_| vec![1u8; 8 << 10]).collect();
        let held = heap_use().unwrap();
        assert!(
            held.in_use >= before.in_use + (7 << 20),
            "{before:?} then {held:?} while holding 8 MiB"
        );
        drop(blocks);
        let freed = heap_use().unwrap();
        assert!(
            freed.in_use + (7 << 20) <= held.in_use,
            "{held:?} then {freed:?} after freeing 8 MiB"
        );
    }
}
