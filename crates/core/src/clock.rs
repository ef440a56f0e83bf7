//! The clock that times health's deadlines (and the router's sticky batches): quanta's, read
//! raw (the TSC where quanta finds it reliable, calibrated once against the monotonic clock;
//! the monotonic clock otherwise). A raw reading is a few instructions; comparing two needs
//! no conversion.

use std::sync::OnceLock;
use std::time::Duration;

/// The process's clock for health deadlines, calibrated on first use (up to 200 ms of busy
/// work: call it once at start-up, off any runtime worker).
pub fn global() -> &'static quanta::Clock {
    static CLOCK: OnceLock<quanta::Clock> = OnceLock::new();
    CLOCK.get_or_init(quanta::Clock::new)
}

/// The number of raw ticks of `clock` that make up `duration` (the clock only converts the
/// other way, so search for it).
pub fn ticks_for(clock: &quanta::Clock, duration: Duration) -> u64 {
    let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
    let (mut low, mut high) = (0u64, u64::MAX / 2);
    while low < high {
        let mid = low + (high - low) / 2;
        if clock.delta_as_nanos(0, mid) >= nanos {
            high = mid;
        } else {
            low = mid + 1;
        }
    }
    low
}
