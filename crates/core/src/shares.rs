//! How keyless traffic is split between a topic's partitions.

use crate::health::PartitionHealth;

/// Weight units per unit of share: shares of keyless traffic are resolved to a millionth.
pub(crate) const WEIGHT_SCALE: f64 = 1_000_000.0;

/// No partition gets more than this many times its fair share of keyless traffic, and keys
/// only move off unhealthy partitions when the healthy ones can take them within it.
pub(crate) const MAX_SHARE_OF_FAIR: f64 = 2.0;

/// Shares of keyless traffic: routable partitions by score, each capped at
/// [`MAX_SHARE_OF_FAIR`] × fair; the remainder, if the routable ones cannot take it all, to
/// the other partitions with a leader by score, under the same cap. All zero when nothing is
/// routable (routing then falls back to librdkafka).
pub(crate) fn keyless_shares(partitions: &[PartitionHealth]) -> Vec<f64> {
    let mut shares = vec![0.0; partitions.len()];
    let eligible = partitions.iter().filter(|h| h.lag.leader_available).count();
    if eligible == 0 {
        return shares;
    }
    let cap = MAX_SHARE_OF_FAIR / eligible as f64;
    // Every routable partition gets some traffic, however low its score, so that a
    // recovering consumer is seen recovering.
    let healthy: Vec<(usize, f64)> = partitions
        .iter()
        .filter(|h| h.is_routable())
        .map(|h| (h.partition as usize, h.score.max(0.001)))
        .collect();
    if healthy.is_empty() {
        return shares;
    }
    let taken = water_fill(&healthy, 1.0, cap, &mut shares);
    if taken < 1.0 - 1e-9 {
        // What the healthy partitions cannot take goes to the others in inverse proportion to
        // their backlog, under the same cap: the most backed-up consumers get the least.
        let rest: Vec<(usize, f64)> = partitions
            .iter()
            .filter(|h| h.lag.leader_available && !h.is_routable())
            .map(|h| {
                let lag = h.lag.lag.map_or(f64::MAX, |l| l.max(0) as f64);
                (h.partition as usize, 1.0 / (1.0 + lag))
            })
            .collect();
        water_fill(&rest, 1.0 - taken, cap, &mut shares);
    }
    shares
}

/// Splits `total` among `items` (index, weight) in proportion to weight, none above `cap`;
/// adds the splits to `shares` and returns how much was handed out (less than `total` when
/// every item is at the cap).
fn water_fill(items: &[(usize, f64)], total: f64, cap: f64, shares: &mut [f64]) -> f64 {
    let mut active: Vec<(usize, f64)> = items.to_vec();
    let mut remaining = total;
    while !active.is_empty() && remaining > 1e-12 {
        let sum: f64 = active.iter().map(|(_, w)| w).sum();
        let at = remaining;
        let (over, under): (Vec<_>, Vec<_>) = active.iter().partition(|(_, w)| at * w / sum > cap);
        if over.is_empty() {
            for (i, w) in &active {
                shares[*i] += at * w / sum;
            }
            remaining = 0.0;
            break;
        }
        for (i, _) in &over {
            shares[*i] += cap;
            remaining -= cap;
        }
        active = under;
    }
    total - remaining
}
