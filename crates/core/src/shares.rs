//! How keyless traffic is split between a topic's partitions, and where moved keys go.
//!
//! Two models. When the monitor knows how fast consumers drain ([`capacity_plan`]), traffic
//! follows capacity; otherwise ([`keyless_shares`]) it follows the health score under a cap of
//! twice the fair share. `docs/routing.md` derives both.

use crate::health::PartitionHealth;

/// Weight units per unit of share: shares of keyless traffic are resolved to a millionth.
pub(crate) const WEIGHT_SCALE: f64 = 1_000_000.0;

/// No partition gets more than this many times its fair share of keyless traffic, and keys
/// only move off unhealthy partitions when the healthy ones can take them within it.
pub(crate) const MAX_SHARE_OF_FAIR: f64 = 2.0;

/// Shares of keyless traffic by health score (the model without rates): routable partitions by score, each capped at
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

/// The rule for moving keys without rates: at least half the partitions with a leader are
/// routable, so that moving every key gives none more than twice its fair share.
pub(crate) fn half_are_routable(partitions: &[PartitionHealth]) -> bool {
    let eligible = partitions.iter().filter(|h| h.lag.leader_available).count();
    let routable = partitions.iter().filter(|h| h.is_routable()).count();
    routable as f64 * MAX_SHARE_OF_FAIR >= eligible as f64
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

/// The horizon over which a backlog is planned away: a partition whose predicted time-lag is
/// `τ` can take new messages at `capacity × (1 − τ / H)`, so one `H` behind or more takes
/// nothing new until it has caught up.
pub(crate) const DRAIN_HORIZON_SECS: f64 = 5.0;

/// Until a consumer has been seen under backlog only a lower bound of its capacity is known
/// (what it drains while caught up); the plan assumes it can drain this many times that, so
/// that it is offered more and its real capacity shows (and is then measured).
pub(crate) const PROBE_FACTOR: f64 = 2.0;

/// Keyless shares and key placement from drain rates.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CapacityPlan {
    /// Share of keyless traffic per partition (sums to 1).
    pub(crate) shares: Vec<f64>,
    /// Whether the routable partitions together can drain everything that arrives, so keys of
    /// unroutable partitions may move onto them.
    pub(crate) absorbs_moved_keys: bool,
    /// Per partition: spare capacity (msg/s) left at the current arrival rate, the weight of a
    /// partition in the choice of a moved key's detour.
    pub(crate) headroom: Vec<f64>,
}

/// The per-partition figures the plan works from.
#[derive(Debug, Clone, Copy)]
struct Drain {
    index: usize,
    /// Messages per second it can drain (0 for a stopped consumer).
    capacity: f64,
    /// Predicted seconds to drain what waits.
    time_lag: f64,
}

impl Drain {
    /// What it can take over the horizon after draining its backlog: `μ (1 − τ / H)`.
    fn spare(&self) -> f64 {
        self.capacity * (1.0 - self.time_lag / DRAIN_HORIZON_SECS)
    }
}

/// The capacity plan, or `None` when rates are missing (the first rounds, a collector that
/// reports only lag, no consumer ever seen under backlog) and the score model applies.
///
/// With `μ_i` each partition's capacity, `τ_i` its predicted time-lag, `μ'_i = μ_i (1 − τ_i / H)`
/// what it can take after draining its backlog over the horizon `H`, and `Λ` the topic's
/// arrival rate:
///
/// 1. If the routable partitions can take `Λ` (`Σ μ'_i > Λ`), the square-root rule (Bell &
///    Stidham's optimal split of a Poisson stream over parallel queues): `λ_i = μ'_i − √μ'_i · K`
///    with `K` such that `Σ λ_i = Λ`, over the partitions where that is positive. It minimises
///    the mean time a message waits, gives fast consumers more than their proportional share
///    and slow ones less (none at all when `μ'_i ≤ K²`), and never more than `μ'_i`.
/// 2. Else, the same over every partition with a leader (the unroutable ones have room).
/// 3. Else nobody can keep up: every partition gets what brings all time-lags to one common
///    level `T` over the horizon, `λ_i = max(0, μ_i (1 + (T − τ_i) / H))`.
pub(crate) fn capacity_plan(partitions: &[PartitionHealth]) -> Option<CapacityPlan> {
    let eligible: Vec<&PartitionHealth> = partitions
        .iter()
        .filter(|h| h.lag.leader_available)
        .collect();
    // A measured capacity somewhere (someone was seen under backlog), and a planning rate
    // everywhere.
    if eligible.is_empty()
        || !eligible
            .iter()
            .any(|h| h.lag.rates.is_some_and(|r| r.capacity.is_some()))
    {
        return None;
    }
    let known_max = eligible
        .iter()
        .filter_map(|h| h.lag.rates.and_then(|r| r.capacity))
        .fold(0.0f64, f64::max);
    // Consumers never seen under backlog: only a lower bound is known (what they drain). All
    // of them are planned alike, as fast as the fastest might be: optimistic, so that they
    // are offered more and show their speed, and alike, so that one that happened to drain a
    // little more is not offered ever more (rich get richer) until it saturates.
    let mut unmeasured = known_max;
    for h in &eligible {
        let rates = h.lag.rates?;
        let planned = rates.planning_capacity()?;
        if rates.capacity.is_none() && !rates.state.is_stopped() {
            unmeasured = unmeasured.max(planned * PROBE_FACTOR);
        }
    }
    let mut drains = Vec::with_capacity(eligible.len());
    for h in &eligible {
        let rates = h.lag.rates?;
        let planned = rates.planning_capacity()?;
        let capacity = if rates.capacity.is_none() && !rates.state.is_stopped() {
            unmeasured
        } else {
            planned
        };
        let time_lag = if rates.state.is_stopped() {
            f64::INFINITY
        } else {
            rates.time_lag.map_or(0.0, |t| t.as_secs_f64())
        };
        drains.push((
            h.is_routable(),
            Drain {
                index: h.partition as usize,
                capacity: capacity.max(0.0),
                time_lag,
            },
        ));
    }
    let arrival: f64 = partitions
        .iter()
        .filter_map(|h| h.lag.rates.and_then(|r| r.arrival_rate))
        .filter(|a| a.is_finite())
        .sum();
    let total_capacity: f64 = drains.iter().map(|(_, d)| d.capacity).sum();
    if total_capacity <= 0.0 {
        return None;
    }
    // Without traffic the split matters little; plan for half the capacity.
    let load = if arrival > 0.0 {
        arrival
    } else {
        total_capacity / 2.0
    };

    let routable: Vec<Drain> = drains.iter().filter(|(r, _)| *r).map(|(_, d)| *d).collect();
    let all: Vec<Drain> = drains.iter().map(|(_, d)| *d).collect();
    let mut rates = vec![0.0; partitions.len()];
    let spare = |set: &[Drain]| set.iter().map(|d| d.spare().max(0.0)).sum::<f64>();
    if !routable.is_empty() && spare(&routable) > load {
        square_root_split(&routable, load, &mut rates);
    } else if spare(&all) > load {
        square_root_split(&all, load, &mut rates);
    } else {
        level_time_lags(&all, load, &mut rates);
    }
    cap_by_capacity(&all, total_capacity, &mut rates);
    let sum: f64 = rates.iter().sum();
    if sum <= 0.0 || !sum.is_finite() {
        return None;
    }
    let routable_capacity: f64 = routable.iter().map(|d| d.capacity).sum();
    let mut headroom = vec![0.0; partitions.len()];
    for (h, (_, d)) in eligible.iter().zip(&drains) {
        let arriving = h
            .lag
            .rates
            .and_then(|r| r.arrival_rate)
            .filter(|a| a.is_finite())
            .unwrap_or(0.0);
        let room = d.capacity - arriving;
        headroom[d.index] = if room.is_finite() { room.max(0.0) } else { 0.0 };
    }
    // Keys move when the routable consumers can drain everything. A routable consumer never
    // seen under backlog has only a lower bound; with one among them, the rule without rates
    // (half the partitions routable) may also allow it: a burst read as a high arrival rate
    // must not pin every key home because nobody has been measured yet.
    let unmeasured_routable = eligible
        .iter()
        .any(|h| h.is_routable() && h.lag.rates.is_some_and(|r| r.capacity.is_none()));
    let absorbs_moved_keys =
        routable_capacity >= arrival || (unmeasured_routable && half_are_routable(partitions));
    Some(CapacityPlan {
        shares: rates.iter().map(|r| r / sum).collect(),
        absorbs_moved_keys,
        headroom,
    })
}

/// No partition gets more than this many times its share of the consumers' capacity.
///
/// The square-root rule gives fast consumers more than their proportional share, the more so
/// the lower the load (at 100 msg/s for consumers of 200 + 7 × 100, 65 % to the first); a
/// capacity estimate that is a little high, or the optimistic one of a consumer never seen
/// under backlog, then draws too much. The cap keeps what one estimate can attract bounded.
pub(crate) const MAX_SHARE_OF_CAPACITY: f64 = 1.5;

/// Caps each partition's rate at [`MAX_SHARE_OF_CAPACITY`] × its share of `total` capacity,
/// handing the excess to the partitions under their cap that already take some, in
/// proportion to what they take. When every taker is at its cap the excess stays where it is.
fn cap_by_capacity(set: &[Drain], total: f64, rates: &mut [f64]) {
    let load: f64 = rates.iter().sum();
    if load <= 0.0 || total <= 0.0 {
        return;
    }
    let cap = |d: &Drain| MAX_SHARE_OF_CAPACITY * load * d.capacity / total;
    for _ in 0..set.len() {
        let mut excess = 0.0;
        let mut open = 0.0;
        for d in set {
            let r = rates[d.index];
            if r > cap(d) {
                excess += r - cap(d);
                rates[d.index] = cap(d);
            } else if r > 0.0 && r < cap(d) {
                open += r;
            }
        }
        if excess <= load * 1e-12 || open <= 0.0 {
            return;
        }
        for d in set {
            let r = rates[d.index];
            if r > 0.0 && r < cap(d) {
                rates[d.index] = r + excess * r / open;
            }
        }
    }
}

/// The square-root rule over `set`: `λ_i = μ'_i − √μ'_i · K`, `Σ λ_i = load`, over the
/// largest set where every `λ_i` is positive (a prefix of `set` by decreasing `μ'`).
fn square_root_split(set: &[Drain], load: f64, rates: &mut [f64]) {
    let mut active: Vec<(usize, f64)> = set
        .iter()
        .map(|d| (d.index, d.spare()))
        .filter(|(_, s)| *s > 0.0)
        .collect();
    active.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    while !active.is_empty() {
        let spare: f64 = active.iter().map(|(_, s)| s).sum();
        let roots: f64 = active.iter().map(|(_, s)| s.sqrt()).sum();
        let k = (spare - load).max(0.0) / roots;
        let last = active[active.len() - 1].1;
        if last - last.sqrt() * k > 0.0 || active.len() == 1 {
            for &(i, s) in &active {
                rates[i] = (s - s.sqrt() * k).max(0.0);
            }
            return;
        }
        active.pop();
    }
}

/// Overload: `λ_i = max(0, μ_i (1 + (T − τ_i) / H))` with the common level `T` set so that
/// `Σ λ_i = load`, found by bisection (the sum grows with `T`).
fn level_time_lags(set: &[Drain], load: f64, rates: &mut [f64]) {
    let total = |level: f64| -> f64 {
        set.iter()
            .filter(|d| d.time_lag.is_finite())
            .map(|d| (d.capacity * (1.0 + (level - d.time_lag) / DRAIN_HORIZON_SECS)).max(0.0))
            .sum()
    };
    let (mut low, mut high) = (0.0, DRAIN_HORIZON_SECS);
    let mut rounds = 0;
    while total(high) < load && rounds < 64 {
        high *= 2.0;
        rounds += 1;
    }
    for _ in 0..64 {
        let mid = (low + high) / 2.0;
        if total(mid) < load {
            low = mid;
        } else {
            high = mid;
        }
    }
    for d in set.iter().filter(|d| d.time_lag.is_finite()) {
        rates[d.index] = (d.capacity * (1.0 + (high - d.time_lag) / DRAIN_HORIZON_SECS)).max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{ConsumerState, PartitionLag, PartitionRates};

    /// A partition whose consumer drains `capacity` msg/s, `arrival` arriving, `time_lag`
    /// seconds behind.
    fn part(partition: i32, capacity: f64, arrival: f64, time_lag: f64) -> PartitionHealth {
        rated(
            partition,
            PartitionRates::new()
                .with_capacity(capacity)
                .with_drain_rate(capacity.min(arrival))
                .with_arrival_rate(arrival)
                .with_time_lag(Duration::from_secs_f64(time_lag)),
            true,
        )
    }

    fn rated(partition: i32, rates: PartitionRates, healthy: bool) -> PartitionHealth {
        let mut lag = PartitionLag::from_lag(partition, 0);
        lag.rates = Some(rates);
        PartitionHealth::new(lag, if healthy { 1.0 } else { 0.0 }, healthy)
    }

    fn plan(parts: &[PartitionHealth]) -> CapacityPlan {
        capacity_plan(parts).expect("rates are known")
    }

    #[test]
    fn a_fast_consumer_gets_more_than_its_capacity_share_and_nobody_more_than_it_drains() {
        // The simulator's "seven slow, one fast": 2 400 msg/s of capacity for 2 000.
        let mut parts = vec![part(0, 600.0, 250.0, 0.0)];
        parts.extend((1..8).map(|p| part(p, 257.0, 250.0, 0.0)));
        let plan = plan(&parts);
        let total: f64 = plan.shares.iter().sum();
        assert!((total - 1.0).abs() < 1e-9, "{:?}", plan.shares);
        // Proportional would be 600 / 2399 = 0.250; the square-root rule gives the fast one
        // more (528.5 msg/s, 0.264), so that the slow queues stay short.
        assert!(plan.shares[0] > 0.26, "{:?}", plan.shares);
        assert!(plan.shares[1] < 257.0 / 2399.0, "{:?}", plan.shares);
        for (p, share) in plan.shares.iter().enumerate() {
            let capacity = if p == 0 { 600.0 } else { 257.0 };
            assert!(share * 2000.0 < capacity, "partition {p} gets {share}");
        }
        // The slow ones alike.
        assert!(
            plan.shares[1..]
                .iter()
                .all(|s| (s - plan.shares[1]).abs() < 1e-12)
        );
        assert!(plan.absorbs_moved_keys);
    }

    #[test]
    fn a_stopped_consumer_gets_nothing_and_its_keys_may_move() {
        let mut parts: Vec<_> = (0..4).map(|p| part(p, 500.0, 250.0, 0.0)).collect();
        parts[2] = rated(
            2,
            PartitionRates::new()
                .with_capacity(500.0)
                .with_arrival_rate(250.0)
                .with_state(ConsumerState::Stalled),
            false,
        );
        let plan = plan(&parts);
        assert_eq!(plan.shares[2], 0.0);
        assert!(
            plan.shares
                .iter()
                .enumerate()
                .all(|(p, s)| p == 2 || *s > 0.3)
        );
        // Three consumers at 500 take the 1 000 msg/s.
        assert!(plan.absorbs_moved_keys);
        assert_eq!(plan.headroom[2], 0.0);
    }

    #[test]
    fn a_backlog_takes_a_smaller_share_until_it_is_drained() {
        let parts = [part(0, 500.0, 250.0, 0.0), part(1, 500.0, 250.0, 2.5)];
        let plan = plan(&parts);
        assert!(plan.shares[1] < plan.shares[0], "{:?}", plan.shares);
        // One horizon behind or more: nothing new until it catches up.
        let parts = [
            part(0, 500.0, 100.0, 0.0),
            part(1, 500.0, 100.0, DRAIN_HORIZON_SECS + 1.0),
        ];
        assert_eq!(plan_of(&parts)[1], 0.0);
    }

    fn plan_of(parts: &[PartitionHealth]) -> Vec<f64> {
        plan(parts).shares
    }

    #[test]
    fn overload_brings_every_time_lag_to_one_level() {
        // 1 500 msg/s for 1 000 of capacity: nobody keeps up; every partition gets its
        // capacity less what its extra backlog needs, the most behind the least.
        let parts = [part(0, 500.0, 750.0, 1.0), part(1, 500.0, 750.0, 3.0)];
        let plan = plan(&parts);
        assert!(plan.shares[0] > plan.shares[1], "{:?}", plan.shares);
        assert!(plan.shares[1] > 0.0);
        assert!(!plan.absorbs_moved_keys);
        // λ_i = μ (1 + (T − τ_i) / H) with Σ = 1 500: T = 4.5 s, λ = 850 and 650.
        assert!(
            (plan.shares[0] - 850.0 / 1500.0).abs() < 1e-6,
            "{:?}",
            plan.shares
        );
    }

    #[test]
    fn without_a_measured_capacity_there_is_no_plan() {
        // Drain rates only: every consumer caught up, nobody seen under backlog.
        let parts: Vec<_> = (0..3)
            .map(|p| {
                rated(
                    p,
                    PartitionRates::new()
                        .with_drain_rate(100.0)
                        .with_arrival_rate(100.0)
                        .with_time_lag(Duration::ZERO),
                    true,
                )
            })
            .collect();
        assert_eq!(capacity_plan(&parts), None);
        // One partition without rates at all (a collector that reports only lag).
        let mut parts: Vec<_> = (0..3).map(|p| part(p, 500.0, 100.0, 0.0)).collect();
        parts[1].lag.rates = None;
        assert_eq!(capacity_plan(&parts), None);
    }

    #[test]
    fn consumers_never_seen_under_backlog_are_planned_alike_and_optimistically() {
        // Partition 0 measured at 300; 1 and 2 only ever drained what they got (80 and 120).
        let mut parts = vec![part(0, 300.0, 100.0, 0.0)];
        for (p, drained) in [(1, 80.0), (2, 120.0)] {
            parts.push(rated(
                p,
                PartitionRates::new()
                    .with_drain_rate(drained)
                    .with_arrival_rate(drained)
                    .with_time_lag(Duration::ZERO),
                true,
            ));
        }
        let plan = plan(&parts);
        // Planned at max(300, 2 × 120) = 300 each: an even split.
        assert!(
            (plan.shares[1] - plan.shares[2]).abs() < 1e-12,
            "{:?}",
            plan.shares
        );
        assert!(
            (plan.shares[0] - plan.shares[1]).abs() < 1e-12,
            "{:?}",
            plan.shares
        );
    }

    #[test]
    fn no_leader_means_no_share_even_with_capacity() {
        let mut parts: Vec<_> = (0..3).map(|p| part(p, 500.0, 100.0, 0.0)).collect();
        parts[0].lag.leader_available = false;
        parts[0] = PartitionHealth::new(parts[0].lag.clone(), 0.0, false);
        let plan = plan(&parts);
        assert_eq!(plan.shares[0], 0.0);
        assert_eq!(plan.headroom[0], 0.0);
    }

    #[test]
    fn keys_move_only_when_the_routable_consumers_can_drain_everything() {
        // Measured everywhere: 3 routable consumers at 200 for 1 000 msg/s arriving.
        let mut parts: Vec<_> = (0..4).map(|p| part(p, 200.0, 250.0, 0.0)).collect();
        parts[3] = rated(
            3,
            PartitionRates::new()
                .with_capacity(200.0)
                .with_arrival_rate(250.0)
                .with_time_lag(Duration::from_secs(30)),
            false,
        );
        assert!(!plan(&parts).absorbs_moved_keys);
        // At 400 each they can.
        let mut parts: Vec<_> = (0..4).map(|p| part(p, 400.0, 250.0, 0.0)).collect();
        parts[3] = PartitionHealth::new(parts[3].lag.clone(), 0.0, false);
        assert!(plan(&parts).absorbs_moved_keys);
    }

    #[test]
    fn a_burst_does_not_pin_keys_home_while_the_routable_consumers_are_unmeasured() {
        // Partition 0, measured and behind, just received a burst (7 000 msg/s); the routable
        // ones never had a backlog, so only a lower bound of their speed is known.
        let mut parts = vec![rated(
            0,
            PartitionRates::new()
                .with_capacity(50.0)
                .with_arrival_rate(7_000.0)
                .with_time_lag(Duration::from_secs(100)),
            false,
        )];
        for p in 1..4 {
            parts.push(rated(
                p,
                PartitionRates::new()
                    .with_drain_rate(100.0)
                    .with_arrival_rate(100.0)
                    .with_time_lag(Duration::ZERO),
                true,
            ));
        }
        assert!(plan(&parts).absorbs_moved_keys);
        // Fewer than half routable: the rule without rates says no as well.
        parts[1] = PartitionHealth::new(parts[1].lag.clone(), 0.0, false);
        parts[2] = PartitionHealth::new(parts[2].lag.clone(), 0.0, false);
        assert!(!plan(&parts).absorbs_moved_keys);
    }

    #[test]
    fn at_low_load_no_partition_takes_more_than_one_and_a_half_times_its_capacity_share() {
        // 100 msg/s for consumers of 200 + 7 × 100: the square-root rule alone gives the
        // first 65 %.
        let mut parts = vec![part(0, 200.0, 12.5, 0.0)];
        parts.extend((1..8).map(|p| part(p, 100.0, 12.5, 0.0)));
        let plan = plan(&parts);
        let cap = MAX_SHARE_OF_CAPACITY * 200.0 / 900.0;
        assert!(plan.shares[0] <= cap + 1e-9, "{:?}", plan.shares);
        assert!((plan.shares.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert!(
            plan.shares[1..].iter().all(|s| *s > 0.05),
            "{:?}",
            plan.shares
        );
    }
}
