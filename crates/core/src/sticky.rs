//! [`StickyCursor`]: which sticky batch a keyless message belongs to.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// Sticky batch state for keyless routing: the current batch number, the bytes routed in it and
/// when it started.
///
/// The router reports each keyless message; a batch ends once it holds `batch_bytes` (Kafka's
/// KIP-794 idea: stay on one partition for about a batch, then switch) or once it is older
/// than `max_age` (librdkafka's `sticky.partitioning.linger.ms`; a producer's router uses its
/// `linger.ms` unless told otherwise), whichever comes first. The
/// router maps each batch number to a partition. This keeps batches full at high rates without
/// sending bursts of hundreds of messages to one partition at low rates, and unlike a random
/// partition per message it never breaks batching.
///
/// Time is whatever monotonic unit the caller uses (a TSC reading, simulated milliseconds…).
#[derive(Debug)]
pub struct StickyCursor {
    /// High 32 bits: batch number; low 32 bits: bytes routed in the batch.
    state: AtomicU64,
    /// When the current batch started, in the caller's time unit.
    started: AtomicU64,
}

const BYTES_MASK: u64 = 0xffff_ffff;
/// `started` holds the low 16 bits of the batch number above 48 bits of its start time, so a
/// reader can tell the start of the batch it sees from the previous batch's.
const TIME_MASK: u64 = (1 << 48) - 1;

fn start_stamp(batch: u32, now: u64) -> u64 {
    (u64::from(batch & 0xffff) << 48) | (now & TIME_MASK)
}

impl StickyCursor {
    /// A cursor starting at a random batch number.
    pub fn new() -> Self {
        let seed = std::hash::RandomState::new().build_hasher().finish();
        Self::starting_at(seed as u32)
    }

    /// A cursor starting at a given batch number (for deterministic simulations).
    pub fn starting_at(batch: u32) -> Self {
        Self {
            state: AtomicU64::new(u64::from(batch) << 32),
            // Started long ago: the first message starts a batch of its own.
            started: AtomicU64::new(start_stamp(batch, 0)),
        }
    }

    /// Accounts a message of `bytes` bytes sent at time `now` and returns the batch number it
    /// belongs to.
    ///
    /// A message joins the current batch if it fits in what is left of `batch_bytes`, as
    /// librdkafka fills a batch; one that does not fit starts a new batch (a message larger
    /// than `batch_bytes` gets a batch of its own). A message arriving when the batch is
    /// `max_age` old or older starts a new batch itself. Lock-free: a compare-and-swap per
    /// message, and a message only ever joins a batch it fits in, so under any contention no
    /// batch holds more than `batch_bytes` (callers that find a batch full switch it over and
    /// try again).
    #[inline]
    pub fn advance(&self, bytes: usize, batch_bytes: u32, now: u64, max_age: u64) -> u32 {
        // Clamped so that a single huge message cannot carry into the batch number.
        let bytes = bytes.min(1 << 30) as u64;
        let limit = u64::from(batch_bytes.max(1));
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            let batch = (current >> 32) as u32;
            let used = current & BYTES_MASK;
            // A batch whose start this caller cannot see yet (the caller that started it has
            // not stored it) has just started: not aged.
            let started = self.started.load(Ordering::Acquire);
            let aged = started >> 48 == u64::from(batch & 0xffff)
                && (now & TIME_MASK).wrapping_sub(started) & TIME_MASK >= max_age;
            let fits = used == 0 || used.saturating_add(bytes) <= limit;
            let (next, joined) = if !fits || used >= limit || aged {
                let batch = batch.wrapping_add(1);
                ((u64::from(batch) << 32) | bytes, batch)
            } else {
                (current + bytes, batch)
            };
            match self.state.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    if joined != batch {
                        self.started
                            .store(start_stamp(joined, now), Ordering::Release);
                    }
                    return joined;
                }
                Err(actual) => current = actual,
            }
        }
    }
}

impl Default for StickyCursor {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// No time limit.
    const FOREVER: u64 = u64::MAX;

    #[test]
    fn cursor_switches_batch_after_batch_bytes() {
        let c = StickyCursor::starting_at(7);
        assert_eq!(c.advance(40, 100, 0, FOREVER), 7);
        assert_eq!(c.advance(40, 100, 0, FOREVER), 7);
        // This one does not fit (120 > 100): it starts batch 8, as librdkafka would.
        assert_eq!(c.advance(40, 100, 0, FOREVER), 8);
        // Exactly full still fits.
        assert_eq!(c.advance(60, 100, 0, FOREVER), 8);
        assert_eq!(c.advance(1, 100, 0, FOREVER), 9);
        // A message larger than a batch gets one of its own.
        assert_eq!(c.advance(500, 100, 0, FOREVER), 10);
        assert_eq!(c.advance(1, 100, 0, FOREVER), 11);
    }

    #[test]
    fn cursor_switches_batch_when_it_is_old() {
        let c = StickyCursor::starting_at(0);
        // The first batch started at time 0; max age 10.
        assert_eq!(c.advance(1, 1000, 3, 10), 0);
        assert_eq!(c.advance(1, 1000, 9, 10), 0);
        // At age 10 the message starts a new batch itself.
        assert_eq!(c.advance(1, 1000, 10, 10), 1);
        assert_eq!(c.advance(1, 1000, 19, 10), 1);
        // Long idle: the next message starts a fresh batch, not the stale one.
        assert_eq!(c.advance(1, 1000, 500, 10), 2);
        // Bytes still end a batch before its time is up.
        assert_eq!(c.advance(999, 1000, 501, 10), 2);
        assert_eq!(c.advance(1, 1000, 502, 10), 3);
        assert_eq!(c.advance(1, 1000, 503, 10), 3);
    }

    #[test]
    fn cursor_with_zero_max_age_switches_every_message() {
        let c = StickyCursor::starting_at(0);
        let batches: Vec<u32> = (0..4).map(|t| c.advance(1, 1000, t, 0)).collect();
        assert_eq!(batches, [1, 2, 3, 4]);
    }

    #[test]
    fn cursor_batch_number_wraps() {
        let c = StickyCursor::starting_at(u32::MAX);
        assert_eq!(c.advance(10, 10, 0, FOREVER), u32::MAX);
        assert_eq!(c.advance(1, 10, 0, FOREVER), 0);
    }

    #[test]
    fn cursor_under_contention_loses_no_batch_boundary() {
        let c = Arc::new(StickyCursor::starting_at(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        c.advance(10, 1000, 0, FOREVER);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // 400 000 bytes in batches of exactly 1 000 bytes: no message joins a full batch, so
        // batches 0 to 399 are full and the next message starts batch 400.
        let batch = c.advance(0, 1000, 0, FOREVER);
        assert_eq!(batch, 400);
    }

    /// Regression: when a batch started because the previous one aged out, its first message's
    /// bytes were counted without the crossing check, so a message of at least `batch_bytes`
    /// never ended its batch by bytes; with `sticky_batch_bytes = 1` a burst stayed on one
    /// partition until the linger ran out.
    #[test]
    fn sticky_batch_started_by_age_still_ends_at_batch_bytes() {
        let c = StickyCursor::starting_at(0);
        // Batch 0 is old at time 10: this message starts batch 1 and fills it on its own.
        assert_eq!(c.advance(500, 100, 10, 10), 1);
        assert_eq!(c.advance(500, 100, 11, 10), 2);
        assert_eq!(c.advance(500, 100, 12, 10), 3);
        // One-byte batches: every message is a batch of its own, aged out or not.
        let c = StickyCursor::starting_at(0);
        let batches: Vec<u32> = (0..5).map(|t| c.advance(1, 1, 100 + t, 50)).collect();
        assert_eq!(batches, [1, 2, 3, 4, 5]);
    }
}
