//! A deterministic simulator of routing quality.
//!
//! No Kafka: partitions are queues of produce timestamps, consumers drain them at scripted
//! rates, lag is observed every refresh interval and published after a collection delay. The
//! policy under test decides each message's partition. "Ours" is the library's real code: the
//! real [`Router`] (with a mock clock), the real calculator and the real
//! [`ksp_core::TopicHealth`] tables.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ksp_core::{
    HealthPublisher, HealthSnapshot, HotPartitionCalculator, PartitionLag, RelativeCalculator,
    ThresholdCalculator, TopicLag, health_channel,
};
use ksp_monitor::{DampingConfig, MonitorConfig, TopicTracker};
use ksp_producer::{KeyOrderConfig, KeyStep, Partitioner, Router, RouterConfig};

const TOPIC: &str = "sim";

/// Keyed traffic: keys drawn from a Zipf distribution.
#[derive(Debug, Clone, Copy)]
pub struct Keys {
    /// Distinct keys.
    pub count: usize,
    /// Zipf exponent (1.0 ≈ a few keys carry most traffic).
    pub exponent: f64,
}

/// A scenario.
pub struct Scenario {
    /// Short name (file names).
    pub name: &'static str,
    /// What it shows.
    pub title: &'static str,
    /// Simulated seconds.
    pub seconds: u32,
    /// Partitions at the start.
    pub partitions: usize,
    /// Messages produced per second at time `t` seconds.
    pub rate: Box<dyn Fn(f64) -> f64 + Send + Sync>,
    /// Consumer speed of `partition` at time `t` seconds, in messages per second.
    pub drain: Box<dyn Fn(usize, f64) -> f64 + Send + Sync>,
    /// At `.0` seconds the partition count becomes `.1`.
    pub grow: Option<(f64, usize)>,
    /// Keyed traffic, or keyless.
    pub keys: Option<Keys>,
    /// Lag collection interval.
    pub refresh: Duration,
    /// Time from reading lag to publishing health.
    pub collect_delay: Duration,
    /// Payload bytes per message (paces sticky batches).
    pub payload: usize,
    /// How often consumers commit what they consumed (the lag collector sees committed
    /// offsets, so lag includes what was consumed since the last commit).
    pub commit_interval: Duration,
    /// The partitions of interest (drawn bold, reported).
    pub watched: Vec<usize>,
}

/// Which built-in calculator "ours" runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Calc {
    /// [`ThresholdCalculator::default`]: unhealthy past a lag of 500.
    Threshold,
    /// [`ksp_core::RelativeCalculator::default`]: unhealthy past 2 × the others' mean lag.
    Relative,
}

/// Who decides the partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// librdkafka's default partitioner: sticky for 10 ms among all partitions when keyless,
    /// CRC32 of the key otherwise.
    Librdkafka,
    /// The Python library's rule: each message to a random partition among those scoring at
    /// least 0.5 (threshold calculator, max lag 1000); keys cached on first use (LRU of 1000,
    /// 300 s TTL) and never re-checked.
    PythonPeer,
    /// This library, with the given calculator and otherwise default settings.
    Ours(Calc),
    /// This library under strict key order (`KeyOrder::Strict`, default bounds): a key whose
    /// partition changes waits until its old partition's consumer committed past it.
    OursStrict(Calc),
    /// Knows every consumer's true speed at every moment and splits traffic in proportion
    /// to it (sticky batches of 10 ms, like librdkafka; keys ignored): a reference for a
    /// capacity-aware router without a measurement delay, not a bound (a proportional split
    /// is not the best one).
    Oracle,
}

impl Policy {
    /// Every policy, in report order.
    pub const ALL: [Policy; 5] = [
        Policy::Librdkafka,
        Policy::PythonPeer,
        Policy::Ours(Calc::Threshold),
        Policy::Ours(Calc::Relative),
        Policy::Oracle,
    ];

    /// A label for tables and plots.
    pub fn label(self) -> &'static str {
        match self {
            Policy::Librdkafka => "librdkafka default",
            Policy::PythonPeer => "Python peer",
            Policy::Ours(Calc::Threshold) => "ours, threshold calculator",
            Policy::Ours(Calc::Relative) => "ours, relative calculator",
            Policy::OursStrict(Calc::Threshold) => "ours strict key order, threshold",
            Policy::OursStrict(Calc::Relative) => "ours strict key order, relative",
            Policy::Oracle => "oracle (true speeds, proportional split)",
        }
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

/// What one policy did in one scenario.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The policy.
    pub policy: Policy,
    /// End-to-end latency of every message produced (messages still queued at the end count
    /// with their age then, so a policy cannot hide latency in a backlog).
    pub latency: Latency,
    /// `(t, lag of each partition)` every 500 ms.
    pub lags: Vec<(f64, Vec<u64>)>,
    /// Health flips (routable ↔ not) per partition per minute, for policies that have health.
    pub flips_per_minute: Vec<f64>,
    /// Each partition's share of all messages, × the partition count (1 = fair).
    pub shares: Vec<f64>,
    /// The largest share any partition got in any 10 s window after the first, × fair.
    pub max_window_share: f64,
    /// The largest share any partition got in any 10 s window after the first, ÷ its share of
    /// the consumers' capacity, over windows where the consumers together could drain what
    /// arrived and another partition had room (its consumer drained what it got and kept less
    /// than a second of backlog), and partitions whose consumer drains at all: above 1, a
    /// partition got more than its proportional part; far above, herding.
    pub max_share_over_capacity: f64,
    /// When (end of the window, seconds) and on which partition that was.
    pub max_share_over_capacity_at: (f64, usize),
    /// Share of keyed messages that went to another partition than the key's previous
    /// message.
    pub keyed_moved: Option<f64>,
    /// Keyed messages consumed before an older message of the same key (each one counted
    /// once, when consumed after a newer one).
    pub reorderings: u64,
    /// Keyed messages that waited in the producer (strict key order).
    pub held: u64,
    /// How long those waited, in milliseconds.
    pub hold_wait: Latency,
    /// Keyed messages sent to their key's old partition because a bound was hit.
    pub pinned: u64,
}

impl Outcome {
    /// Lag of `partition` at the end.
    pub fn final_lag(&self, partition: usize) -> u64 {
        self.lags
            .last()
            .and_then(|(_, l)| l.get(partition).copied())
            .unwrap_or(0)
    }

    /// Highest lag `partition` reached.
    pub fn max_lag(&self, partition: usize) -> u64 {
        self.lags
            .iter()
            .filter_map(|(_, l)| l.get(partition).copied())
            .max()
            .unwrap_or(0)
    }
}

/// Settings of "ours" besides the calculator: the library's defaults unless changed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ours {
    /// Flap damping.
    pub damping: DampingConfig,
    /// Print every published health to stderr.
    pub trace: bool,
    /// Strict key order's `max_hold` (default 30 s).
    pub max_hold: Option<Duration>,
}

impl fmt::Debug for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scenario")
            .field("name", &self.name)
            .field("seconds", &self.seconds)
            .field("partitions", &self.partitions)
            .field("rate", &(self.rate)(0.0))
            .finish_non_exhaustive()
    }
}

/// Zipf sampler over `count` keys.
struct Zipf {
    cdf: Vec<f64>,
    names: Vec<Vec<u8>>,
}

impl Zipf {
    fn new(keys: Keys) -> Self {
        let weights: Vec<f64> = (1..=keys.count)
            .map(|k| 1.0 / (k as f64).powf(keys.exponent))
            .collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let cdf = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        let names = (0..keys.count)
            .map(|k| format!("key-{k}").into_bytes())
            .collect();
        Self { cdf, names }
    }

    fn sample(&self, rng: &mut fastrand::Rng) -> usize {
        let u = rng.f64();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

/// The Python peer's key cache: LRU of 1000 entries, 300 s TTL.
struct PeerCache {
    entries: HashMap<usize, (i32, u64 /* inserted ms */, u64 /* last used */)>,
}

impl PeerCache {
    const CAPACITY: usize = 1000;
    const TTL_MS: u64 = 300_000;

    fn get(&mut self, key: usize, now: u64) -> Option<i32> {
        let entry = self.entries.get_mut(&key)?;
        if now - entry.1 > Self::TTL_MS {
            self.entries.remove(&key);
            return None;
        }
        entry.2 = now;
        Some(entry.0)
    }

    fn insert(&mut self, key: usize, partition: i32, now: u64) {
        if self.entries.len() >= Self::CAPACITY
            && !self.entries.contains_key(&key)
            && let Some((&oldest, _)) = self.entries.iter().min_by_key(|(k, e)| (e.2, **k))
        {
            self.entries.remove(&oldest);
        }
        self.entries.insert(key, (partition, now, now));
    }
}

/// The state one policy routes with.
#[expect(clippy::large_enum_variant, reason = "one per simulated run")]
enum Decider {
    Librdkafka {
        sticky: i32,
        since_ms: u64,
    },
    Oracle {
        sticky: i32,
        since_ms: u64,
    },
    Peer {
        healthy: Vec<i32>,
        cache: PeerCache,
        sticky: i32,
        since_ms: u64,
    },
    Ours {
        router: Router,
        /// Strict key order: the bounds of the waits.
        strict: Option<KeyOrderConfig>,
        publisher: HealthPublisher,
        mock: Arc<quanta::Mock>,
        calculator: Arc<dyn HotPartitionCalculator>,
        tracker: TopicTracker,
        /// librdkafka's own sticky state, for messages the router leaves to it.
        sticky: i32,
        since_ms: u64,
    },
}

/// Runs `scenario` under `policy`, with `seed` for every random choice.
pub fn run(scenario: &Scenario, policy: Policy, ours: &Ours, seed: u64) -> Outcome {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut partitions = scenario.partitions;
    let final_partitions = scenario.grow.map_or(partitions, |(_, n)| n.max(partitions));
    let mut queues: Vec<VecDeque<Msg>> = vec![VecDeque::new(); final_partitions];
    // High watermarks, consumed offsets, and committed offsets (consumed, as of the last
    // commit).
    let mut produced = vec![0u64; final_partitions];
    let mut consumed = vec![0u64; final_partitions];
    let mut committed = vec![0u64; final_partitions];
    let commit_ms = (scenario.commit_interval.as_millis() as u64).max(1);
    let mut budget = vec![0.0f64; final_partitions];
    let mut produced_owed = 0.0;
    let mut latencies: Vec<u32> = Vec::new();
    let mut lags = Vec::new();
    let mut counts = vec![0u64; final_partitions];
    let mut window = vec![0u64; final_partitions];
    let mut max_window_share = 0.0f64;
    let mut max_share_over_capacity = 0.0f64;
    let mut max_share_over_capacity_at = (0.0, 0);
    let mut flips = vec![0u32; final_partitions];
    let mut last_routable: Vec<Option<bool>> = vec![None; final_partitions];
    let zipf = scenario.keys.map(Zipf::new);
    let mut last_partition_of_key: HashMap<usize, i32> = HashMap::new();
    let (mut keyed_total, mut keyed_moved) = (0u64, 0u64);
    let mut pending_publish: VecDeque<(u64, Vec<(u64, u64)>)> = VecDeque::new();
    let key_count = scenario.keys.map_or(0, |k| k.count);
    let mut next_seq = vec![0u32; key_count];
    let mut last_consumed: Vec<Option<u32>> = vec![None; key_count];
    let mut reorderings = 0u64;
    // Strict key order: each waiting key's messages (produced at, sequence) and since when.
    let mut held: std::collections::BTreeMap<u32, (u64, VecDeque<(u64, u32)>)> =
        std::collections::BTreeMap::new();
    let mut held_now = 0u64;
    let (mut held_total, mut pinned) = (0u64, 0u64);
    let mut hold_waits: Vec<u32> = Vec::new();

    let mut decider = match policy {
        Policy::Librdkafka => Decider::Librdkafka {
            sticky: 0,
            since_ms: 0,
        },
        Policy::Oracle => Decider::Oracle {
            sticky: 0,
            since_ms: 0,
        },
        Policy::PythonPeer => Decider::Peer {
            healthy: (0..partitions as i32).collect(),
            cache: PeerCache {
                entries: HashMap::new(),
            },
            sticky: 0,
            since_ms: 0,
        },
        Policy::Ours(calc) | Policy::OursStrict(calc) => {
            let calculator: Arc<dyn HotPartitionCalculator> = match calc {
                Calc::Threshold => Arc::new(ThresholdCalculator::default()),
                Calc::Relative => Arc::new(RelativeCalculator::default()),
            };
            let (publisher, feed) = health_channel();
            let (clock, mock) = quanta::Clock::mock();
            let strict = matches!(policy, Policy::OursStrict(_)).then(|| {
                let strict = KeyOrderConfig::strict();
                match ours.max_hold {
                    Some(max_hold) => strict.with_max_hold(max_hold),
                    None => strict,
                }
            });
            // Runs as long as the librdkafka policy's, so that they compare like for like. A
            // producer with librdkafka's default `linger.ms` (5 ms) makes its runs 5 ms; the
            // simulator has no linger, and shorter runs would only flatter ours here.
            let config = RouterConfig::default()
                .with_sticky_batch_bytes(1_000_000)
                .with_sticky_linger(Duration::from_millis(10))
                .with_key_order(strict.clone().unwrap_or_default());
            Decider::Ours {
                router: Router::with_clock(feed, &config, clock).expect("valid router config"),
                strict,
                publisher,
                mock,
                calculator,
                tracker: TopicTracker::new(&MonitorConfig::default().with_damping(ours.damping)),
                sticky: 0,
                since_ms: 0,
            }
        }
    };

    let refresh_ms = scenario.refresh.as_millis() as u64;
    let delay_ms = scenario.collect_delay.as_millis() as u64;
    let end_ms = u64::from(scenario.seconds) * 1000;
    for now in 0..end_ms {
        let t = now as f64 / 1000.0;
        if let Some((at, n)) = scenario.grow
            && partitions < n
            && t >= at
        {
            partitions = n;
        }
        if now % commit_ms == 0 {
            committed.copy_from_slice(&consumed);
        }
        // Offsets are read at each refresh and published after the collection delay.
        if now % refresh_ms == 0 {
            let observed: Vec<(u64, u64)> = (0..partitions)
                .map(|p| (committed[p], produced[p]))
                .collect();
            pending_publish.push_back((now + delay_ms, observed));
        }
        let mut changed = false;
        while pending_publish.front().is_some_and(|(at, _)| *at <= now) {
            changed = true;
            let (at, observed) = pending_publish.pop_front().unwrap_or_default();
            // Simulated time, not the wall clock: strict key order tells collections apart by
            // when their lag was read.
            let read_at = SystemTime::UNIX_EPOCH + Duration::from_millis(at - delay_ms);
            let report = TopicLag::new(
                TOPIC,
                observed
                    .iter()
                    .enumerate()
                    .map(|(p, &(committed, high))| {
                        PartitionLag::from_offsets(
                            p as i32,
                            Some(committed as i64),
                            None,
                            high as i64,
                        )
                    })
                    .collect(),
                read_at,
            );
            let routable: Vec<bool> = match &mut decider {
                Decider::Librdkafka { .. } | Decider::Oracle { .. } => Vec::new(),
                Decider::Peer { healthy, .. } => {
                    let health = ThresholdCalculator::default().calculate(&report);
                    *healthy = health
                        .iter()
                        .filter(|h| h.healthy)
                        .map(|h| h.partition)
                        .collect();
                    health.iter().map(|h| h.healthy).collect()
                }
                Decider::Ours {
                    publisher,
                    calculator,
                    tracker,
                    ..
                } => {
                    let health = tracker
                        .update_with_age(
                            Duration::from_millis(now),
                            scenario.collect_delay,
                            report,
                            &**calculator,
                        )
                        .with_sticky_start(rng.u32(..));
                    let routable = (0..health.partition_count())
                        .map(|p| health.is_routable(p))
                        .collect();
                    if ours.trace {
                        trace(policy, now, &health);
                    }
                    publisher.publish(HealthSnapshot::new([Arc::new(health)]));
                    router_of(&decider).observe_health();
                    routable
                }
            };
            for (p, &r) in routable.iter().enumerate() {
                if last_routable[p].is_some_and(|was| was != r) {
                    flips[p] += 1;
                }
                last_routable[p] = Some(r);
            }
        }

        // Sends a message to partition `$p` (what the broker appends).
        macro_rules! append {
            ($p:expr, $msg:expr) => {{
                let p = $p as usize;
                let msg: Msg = $msg;
                queues[p].push_back(msg);
                produced[p] += 1;
                counts[p] += 1;
                window[p] += 1;
                if msg.key != NO_KEY {
                    keyed_total += 1;
                    if last_partition_of_key
                        .insert(msg.key as usize, $p)
                        .is_some_and(|previous| previous != $p)
                    {
                        keyed_moved += 1;
                    }
                }
            }};
        }

        // Strict key order: waiting keys go when their old partition drained (checked when
        // health changes, and every 100 ms for the time bound).
        if let Decider::Ours {
            router,
            strict: Some(bounds),
            ..
        } = &decider
            && !held.is_empty()
            && (changed || now % 100 == 0)
        {
            let max_hold = bounds.max_hold.as_millis() as u64;
            let keys: Vec<u32> = held.keys().copied().collect();
            for key in keys {
                let name = &zipf
                    .as_ref()
                    .map(|z| z.names[key as usize].clone())
                    .unwrap_or_default();
                let since = held[&key].0;
                let target = match router.route_in_order(TOPIC, name) {
                    KeyStep::Go(decision) => decision.partition.or_else(|| {
                        Partitioner::ConsistentRandom.home(Some(name), partitions as i32)
                    }),
                    KeyStep::Wait { partition } if now >= since + max_hold => {
                        pinned += held[&key].1.len() as u64;
                        Some(
                            router
                                .pin(TOPIC, name, partition)
                                .partition
                                .unwrap_or(partition),
                        )
                    }
                    KeyStep::Wait { .. } => None,
                };
                if let Some(p) = target
                    && let Some((_, messages)) = held.remove(&key)
                {
                    held_now -= messages.len() as u64;
                    for (at, seq) in messages {
                        hold_waits.push((now - at) as u32);
                        append!(p, Msg { at, key, seq });
                    }
                }
            }
        }

        // Produce.
        produced_owed += (scenario.rate)(t) / 1000.0;
        while produced_owed >= 1.0 {
            produced_owed -= 1.0;
            let key = zipf.as_ref().map(|z| z.sample(&mut rng));
            let key_bytes = key.and_then(|k| zipf.as_ref().map(|z| z.names[k].as_slice()));
            let msg = Msg {
                at: now,
                key: key.map_or(NO_KEY, |k| k as u32),
                seq: key.map_or(0, |k| {
                    next_seq[k] += 1;
                    next_seq[k]
                }),
            };
            if let (
                Decider::Ours {
                    router,
                    strict: Some(bounds),
                    ..
                },
                Some(name),
            ) = (&decider, key_bytes)
            {
                if let Some((_, waiting)) = held.get_mut(&msg.key) {
                    waiting.push_back((msg.at, msg.seq));
                    held_total += 1;
                    held_now += 1;
                    continue;
                }
                match router.route_in_order(TOPIC, name) {
                    KeyStep::Go(decision) => {
                        let p = decision.partition.or_else(|| {
                            Partitioner::ConsistentRandom.home(Some(name), partitions as i32)
                        });
                        append!(p.unwrap_or(0), msg);
                    }
                    KeyStep::Wait { partition } if held_now >= bounds.max_held_messages => {
                        pinned += 1;
                        router.pin(TOPIC, name, partition);
                        append!(partition, msg);
                    }
                    KeyStep::Wait { .. } => {
                        held.insert(msg.key, (now, VecDeque::from([(msg.at, msg.seq)])));
                        held_total += 1;
                        held_now += 1;
                    }
                }
                continue;
            }
            let partition = decide(
                &mut decider,
                &mut rng,
                now,
                partitions,
                key,
                key_bytes,
                scenario.payload,
                &|p| (scenario.drain)(p, t),
            );
            append!(partition, msg);
        }

        // Consume.
        for p in 0..partitions {
            budget[p] += (scenario.drain)(p, t) / 1000.0;
            while budget[p] >= 1.0 {
                match queues[p].pop_front() {
                    Some(msg) => {
                        latencies.push((now - msg.at) as u32);
                        if msg.key != NO_KEY {
                            let last = &mut last_consumed[msg.key as usize];
                            if last.is_some_and(|l| l > msg.seq) {
                                reorderings += 1;
                            } else {
                                *last = Some(msg.seq);
                            }
                        }
                        consumed[p] += 1;
                        budget[p] -= 1.0;
                    }
                    None => {
                        // An idle consumer does not save up reads.
                        budget[p] = budget[p].min(1.0);
                        break;
                    }
                }
            }
        }

        if now % 500 == 0 {
            lags.push((
                t,
                queues
                    .iter()
                    .take(partitions)
                    .map(|q| q.len() as u64)
                    .collect(),
            ));
        }
        if now % 10_000 == 9_999 {
            let total: u64 = window.iter().sum();
            if now >= 19_999 && total > 0 {
                for &w in window.iter().take(partitions) {
                    max_window_share =
                        max_window_share.max(w as f64 * partitions as f64 / total as f64);
                }
                // Capacities over the window, averaged second by second.
                let capacities: Vec<f64> = (0..partitions)
                    .map(|p| {
                        (0..10)
                            .map(|s| (scenario.drain)(p, t - 9.5 + f64::from(s)))
                            .sum::<f64>()
                            / 10.0
                    })
                    .collect();
                let capacity: f64 = capacities.iter().sum();
                // A partition has room when its consumer drained what it got in the window
                // and is left with less than a second of backlog.
                let room: Vec<bool> = (0..partitions)
                    .map(|q| {
                        capacities[q] > 0.0
                            && (window[q] as f64) < capacities[q] * 10.0
                            && (queues[q].len() as f64) <= capacities[q]
                    })
                    .collect();
                if capacity > total as f64 / 10.0 {
                    for (p, &w) in window.iter().take(partitions).enumerate() {
                        let others_have_room = (0..partitions).any(|q| q != p && room[q]);
                        if capacities[p] > 0.0 && others_have_room {
                            let ratio = (w as f64 / total as f64) / (capacities[p] / capacity);
                            if ratio > max_share_over_capacity {
                                max_share_over_capacity = ratio;
                                max_share_over_capacity_at = (t, p);
                            }
                        }
                    }
                }
            }
            window.iter_mut().for_each(|w| *w = 0);
        }
        if let Decider::Ours { mock, .. } = &decider {
            mock.increment(Duration::from_millis(1));
        }
    }
    for queue in &queues {
        latencies.extend(queue.iter().map(|m| (end_ms - m.at) as u32));
    }
    for (_, waiting) in held.values() {
        latencies.extend(waiting.iter().map(|&(at, _)| (end_ms - at) as u32));
        hold_waits.extend(waiting.iter().map(|&(at, _)| (end_ms - at) as u32));
    }
    hold_waits.sort_unstable();
    latencies.sort_unstable();
    let total: u64 = counts.iter().sum();
    let minutes = f64::from(scenario.seconds) / 60.0;
    Outcome {
        policy,
        latency: percentiles(&latencies),
        lags,
        flips_per_minute: flips.iter().map(|&f| f64::from(f) / minutes).collect(),
        shares: counts
            .iter()
            .map(|&c| c as f64 * final_partitions as f64 / total.max(1) as f64)
            .collect(),
        max_window_share,
        max_share_over_capacity,
        max_share_over_capacity_at,
        keyed_moved: (keyed_total > 0).then(|| keyed_moved as f64 / keyed_total as f64),
        reorderings,
        held: held_total,
        hold_wait: percentiles(&hold_waits),
        pinned,
    }
}

/// A message in a simulated partition.
#[derive(Debug, Clone, Copy)]
struct Msg {
    /// When it was produced (ms).
    at: u64,
    /// Its key, or [`NO_KEY`].
    key: u32,
    /// Its number among its key's messages, from 1.
    seq: u32,
}

const NO_KEY: u32 = u32::MAX;

fn router_of(decider: &Decider) -> &Router {
    match decider {
        Decider::Ours { router, .. } => router,
        _ => unreachable!("only ours publishes health"),
    }
}

fn percentiles(sorted: &[u32]) -> Latency {
    let at = |q: f64| {
        sorted
            .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
            .map_or(0.0, |&v| f64::from(v))
    };
    Latency {
        p50: at(0.5),
        p99: at(0.99),
        max: sorted.last().map_or(0.0, |&v| f64::from(v)),
    }
}

/// One line per partition of a published health, for `ksp-bench sim --trace`.
fn trace(policy: Policy, now: u64, health: &ksp_core::TopicHealth) {
    let shares = health.keyless_shares();
    eprintln!(
        "{} t={:.1}s capacity-planned={} absorbs-keys={}",
        policy.label(),
        now as f64 / 1000.0,
        health.is_capacity_planned(),
        health.can_absorb_moved_keys()
    );
    for (p, h) in health.partitions().iter().enumerate() {
        let r = h.lag.rates.unwrap_or_default();
        let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
        eprintln!(
            "  p{p} lag={} routable={} score={:.2} share={:.3} drain={} capacity={} arrival={} time_lag={} state={}",
            h.lag.lag.unwrap_or(-1),
            h.is_routable(),
            h.score,
            shares[p],
            f(r.drain_rate),
            f(r.capacity),
            f(r.arrival_rate),
            r.time_lag
                .map_or("-".to_owned(), |t| format!("{:.2}", t.as_secs_f64())),
            r.state.as_str(),
        );
    }
}

/// librdkafka's sticky rule: keep the partition for 10 ms, then a random one.
fn sticky(
    current: &mut i32,
    since: &mut u64,
    now: u64,
    partitions: usize,
    rng: &mut fastrand::Rng,
) -> i32 {
    if now >= *since + 10 || *current as usize >= partitions {
        *current = rng.i32(0..partitions as i32);
        *since = now;
    }
    *current
}

#[expect(
    clippy::too_many_arguments,
    reason = "one simulated message and what decides it"
)]
fn decide(
    decider: &mut Decider,
    rng: &mut fastrand::Rng,
    now: u64,
    partitions: usize,
    key: Option<usize>,
    key_bytes: Option<&[u8]>,
    payload: usize,
    speed: &dyn Fn(usize) -> f64,
) -> i32 {
    let count = partitions as i32;
    match decider {
        Decider::Oracle {
            sticky: s,
            since_ms,
        } => {
            if now >= *since_ms + 10 || *s as usize >= partitions {
                let speeds: Vec<f64> = (0..partitions).map(speed).collect();
                let total: f64 = speeds.iter().sum();
                let mut pick = rng.f64() * total;
                *s = (partitions - 1) as i32;
                for (p, v) in speeds.iter().enumerate() {
                    if pick < *v {
                        *s = p as i32;
                        break;
                    }
                    pick -= v;
                }
                *since_ms = now;
            }
            *s
        }
        Decider::Librdkafka {
            sticky: s,
            since_ms,
        } => match Partitioner::ConsistentRandom.home(key_bytes, count) {
            Some(home) => home,
            None => sticky(s, since_ms, now, partitions, rng),
        },
        Decider::Peer {
            healthy,
            cache,
            sticky: s,
            since_ms,
        } => {
            let healthy: Vec<i32> = healthy.iter().copied().filter(|&p| p < count).collect();
            let pick = |rng: &mut fastrand::Rng| {
                (!healthy.is_empty()).then(|| healthy[rng.usize(..healthy.len())])
            };
            match key {
                Some(key) => {
                    if let Some(p) = cache.get(key, now) {
                        return p;
                    }
                    let p = pick(rng)
                        .or_else(|| Partitioner::ConsistentRandom.home(key_bytes, count))
                        .unwrap_or(0);
                    cache.insert(key, p, now);
                    p
                }
                None => pick(rng).unwrap_or_else(|| sticky(s, since_ms, now, partitions, rng)),
            }
        }
        Decider::Ours {
            router,
            sticky: s,
            since_ms,
            ..
        } => {
            let size = payload + key_bytes.map_or(0, <[u8]>::len);
            let decision = router.route(TOPIC, None, key_bytes, size);
            match decision.partition {
                Some(p) => p,
                // No partition set: librdkafka's partitioner decides, as in production.
                None => match Partitioner::ConsistentRandom.home(key_bytes, count) {
                    Some(home) => home,
                    None => sticky(s, since_ms, now, partitions, rng),
                },
            }
        }
    }
}
