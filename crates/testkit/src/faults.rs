//! Fault scenarios on the embedded cluster: a steady load through the smart producer while a
//! fault is injected, with everything needed to check that nothing was lost.
//!
//! The tests assert on a [`FaultRun`]; the `fault_matrix` example prints one row per fault.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ksp_monitor::{MonitorConfig, MonitorStats};
use ksp_producer::AsyncSmartProducer;
use rdkafka::mocking::MockCoordinator;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use crate::{
    Consumed, DrainingConsumer, LagScenario, Ledger, Load, MockKafka, Reconciliation, TestkitError,
    TestkitResult, read_topic,
};

/// Errors queued for a request fault (here and in the soak): more than its requests in a few
/// seconds, and few, since the embedded broker moves the whole queue down by one for every
/// request it fails, on the one thread that serves every broker (100 000 made that 1.6 MB per
/// request).
pub(crate) const REQUEST_ERRORS: usize = 5_000;

/// The consumer group of the scenarios.
pub const GROUP: &str = "processors";
/// The topic: 6 partitions; leader of partition `p` is broker `p % 3 + 1`.
pub const TOPIC: &str = "orders";
/// The partition whose consumer lags 5000 messages, so fresh health steers around it.
pub const LAGGING: i32 = 2;
/// Partitions led by broker 2.
pub const ON_BROKER_2: [i32; 2] = [1, 4];
/// Messages the scenario's setup writes (5 × 10 + 5000).
pub const SETUP_MESSAGES: usize = 5050;

/// A fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Nothing goes wrong (the baseline).
    None,
    /// Broker 2 (leader of partitions 1 and 4) goes down, then up.
    BrokerDown,
    /// Every `ListOffsets` request fails with `NOT_LEADER_OR_FOLLOWER`.
    ListOffsetsErrors,
    /// Every `OffsetFetch` request fails with `GROUP_AUTHORIZATION_FAILED`.
    OffsetFetchErrors,
    /// The topic's metadata reports `LEADER_NOT_AVAILABLE` (librdkafka's mock ignores
    /// injected errors on Metadata requests themselves).
    MetadataErrors,
    /// Every broker answers 800 ms late.
    SlowBrokers,
    /// Every partition's leader moves to another broker (twice).
    LeaderMoves,
}

impl Fault {
    /// Every fault, in matrix order.
    pub const ALL: [Fault; 7] = [
        Fault::None,
        Fault::BrokerDown,
        Fault::ListOffsetsErrors,
        Fault::OffsetFetchErrors,
        Fault::MetadataErrors,
        Fault::SlowBrokers,
        Fault::LeaderMoves,
    ];

    fn start(self, kafka: &MockKafka) -> TestkitResult<()> {
        let cluster = kafka.cluster();
        let e =
            |r: rdkafka::error::KafkaResult<()>| r.map_err(crate::kafka_error("injecting a fault"));
        match self {
            Fault::None => {}
            Fault::BrokerDown => e(cluster.broker_down(2))?,
            Fault::ListOffsetsErrors => cluster.request_errors(
                RDKafkaApiKey::ListOffsets,
                &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; REQUEST_ERRORS],
            ),
            Fault::OffsetFetchErrors => cluster.request_errors(
                RDKafkaApiKey::OffsetFetch,
                &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED; REQUEST_ERRORS],
            ),
            Fault::MetadataErrors => e(cluster.topic_error(
                TOPIC,
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
            ))?,
            Fault::SlowBrokers => {
                for broker in 1..=3 {
                    e(cluster.broker_round_trip_time(broker, Duration::from_millis(800)))?;
                }
            }
            Fault::LeaderMoves => move_leaders(kafka, 1)?,
        }
        Ok(())
    }

    /// Halfway through the fault (only leader moves do anything here: they move again).
    fn middle(self, kafka: &MockKafka) -> TestkitResult<()> {
        match self {
            Fault::LeaderMoves => move_leaders(kafka, 2),
            _ => Ok(()),
        }
    }

    fn stop(self, kafka: &MockKafka) -> TestkitResult<()> {
        let cluster = kafka.cluster();
        let e =
            |r: rdkafka::error::KafkaResult<()>| r.map_err(crate::kafka_error("ending a fault"));
        match self {
            Fault::None | Fault::LeaderMoves => {}
            Fault::BrokerDown => e(cluster.broker_up(2))?,
            Fault::ListOffsetsErrors => cluster.clear_request_errors(RDKafkaApiKey::ListOffsets),
            Fault::OffsetFetchErrors => cluster.clear_request_errors(RDKafkaApiKey::OffsetFetch),
            Fault::MetadataErrors => {
                e(cluster.topic_error(TOPIC, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR))?
            }
            Fault::SlowBrokers => {
                for broker in 1..=3 {
                    e(cluster.broker_round_trip_time(broker, Duration::ZERO))?;
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::None => "no fault (baseline)",
            Fault::BrokerDown => "a broker down (leader of 2 of 6 partitions)",
            Fault::ListOffsetsErrors => "ListOffsets requests fail",
            Fault::OffsetFetchErrors => "OffsetFetch requests fail",
            Fault::MetadataErrors => "topic metadata says LEADER_NOT_AVAILABLE",
            Fault::SlowBrokers => "every broker 800 ms slow",
            Fault::LeaderMoves => "every leader moves, twice",
        })
    }
}

fn move_leaders(kafka: &MockKafka, shift: i32) -> TestkitResult<()> {
    for p in 0..6 {
        kafka
            .cluster()
            .partition_leader(TOPIC, p, Some((p + shift) % 3 + 1))
            .map_err(crate::kafka_error("moving a leader"))?;
    }
    Ok(())
}

/// How to run a fault scenario.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FaultSpec {
    /// The fault.
    pub fault: Fault,
    /// How long the load runs.
    pub load: Duration,
    /// When the fault starts, from the start of the load.
    pub fault_at: Duration,
    /// How long it lasts.
    pub fault_for: Duration,
    /// The producer's `message.timeout.ms`.
    pub message_timeout: Duration,
    /// The monitor's refresh interval.
    pub refresh: Duration,
    /// Health older than this is ignored.
    pub max_staleness: Duration,
}

impl FaultSpec {
    /// A 6 s load, the fault from 1 s to 3.5 s, 30 s message timeout, refresh every 200 ms,
    /// stale after 1 s.
    pub fn new(fault: Fault) -> Self {
        Self {
            fault,
            load: Duration::from_secs(6),
            fault_at: Duration::from_secs(1),
            fault_for: Duration::from_millis(2500),
            message_timeout: Duration::from_secs(30),
            refresh: Duration::from_millis(200),
            max_staleness: Duration::from_secs(1),
        }
    }

    /// Sets the fault's timing.
    #[must_use]
    pub fn timing(mut self, load: Duration, fault_at: Duration, fault_for: Duration) -> Self {
        self.load = load;
        self.fault_at = fault_at;
        self.fault_for = fault_for;
        self
    }

    /// Sets `message.timeout.ms`.
    #[must_use]
    pub fn message_timeout(mut self, timeout: Duration) -> Self {
        self.message_timeout = timeout;
        self
    }

    /// Runs it: a keyless load (300 msg/s) and a keyed one (200 msg/s over 500 keys) through
    /// an idempotent smart producer, the fault injected and removed on schedule, the topic
    /// read back at the end.
    pub async fn run(&self) -> TestkitResult<FaultRun> {
        let kafka = MockKafka::start(3)?;
        LagScenario::new(TOPIC, 6)
            .lag(LAGGING as usize, 5000)
            .create(&kafka, GROUP)
            .await?;
        move_leaders(&kafka, 0)?;
        // The group's coordinator stays up whatever broker goes down.
        kafka
            .cluster()
            .coordinator(MockCoordinator::Group(GROUP.into()), 1)
            .map_err(crate::kafka_error("placing the coordinator"))?;
        // Consumers that keep up on every partition but the lagging one, which they never
        // read: without them the load would raise every lag past the health threshold.
        let consumer = DrainingConsumer::builder(&kafka.client_config(), GROUP, TOPIC, 6)
            .partition_rate(LAGGING, 0.0)
            .start()?;
        let mut config = kafka.client_config();
        config.set("enable.idempotence", "true").set(
            "message.timeout.ms",
            self.message_timeout.as_millis().to_string(),
        );
        let producer = AsyncSmartProducer::builder(config)
            .consumer_group(GROUP)
            .topics([TOPIC])
            .monitor(
                MonitorConfig::default()
                    .with_refresh_interval(self.refresh)
                    .with_collect_timeout(Duration::from_millis(300).min(self.refresh * 2))
                    .with_max_staleness(self.max_staleness),
            )
            .build()
            .map_err(|e| TestkitError::Demo(e.to_string()))?;
        producer
            .refresh_health()
            .await
            .map_err(|e| TestkitError::Demo(e.to_string()))?;

        let keyless = Ledger::new();
        let keyed = Ledger::new();
        let loads = {
            let (producer, keyless, keyed, duration) =
                (producer.clone(), keyless.clone(), keyed.clone(), self.load);
            tokio::spawn(async move {
                let (a, b) = (
                    Load::new(TOPIC, 300, duration),
                    Load::new(TOPIC, 200, duration).keyed(500),
                );
                futures::join!(a.run(&producer, &keyless), b.run(&producer, &keyed));
            })
        };
        let health = Arc::new(Mutex::new(HealthTrace::default()));
        let start = Instant::now();
        let watcher = {
            let (producer, health) = (producer.clone(), health.clone());
            tokio::spawn(async move {
                loop {
                    let stale = producer.topic_summary(TOPIC).is_none_or(|s| s.stale);
                    health
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .record(start.elapsed(), stale);
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            })
        };
        tokio::time::sleep_until((start + self.fault_at).into()).await;
        self.fault.start(&kafka)?;
        tokio::time::sleep_until((start + self.fault_at + self.fault_for / 2).into()).await;
        self.fault.middle(&kafka)?;
        tokio::time::sleep_until((start + self.fault_at + self.fault_for).into()).await;
        self.fault.stop(&kafka)?;
        tokio::time::timeout(
            self.message_timeout + self.load + Duration::from_secs(30),
            loads,
        )
        .await
        .map_err(|_| TestkitError::Demo("a produce did not resolve".into()))?
        .map_err(|e| TestkitError::Demo(format!("load failed: {e}")))?;
        // Let health recover if the fault outlived the load.
        let recovered = crate::wait_for(Duration::from_secs(10), || {
            producer.topic_summary(TOPIC).is_some_and(|s| !s.stale)
        })
        .await;
        watcher.abort();
        let monitor = producer.monitor_stats().unwrap_or_default();
        producer
            .close(Duration::from_secs(30))
            .await
            .map_err(|e| TestkitError::Demo(e.to_string()))?;
        consumer.stop();
        let consumed = read_topic(&kafka.client_config(), TOPIC, Duration::from_secs(30)).await?;
        let health = health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Ok(FaultRun {
            spec: self.clone(),
            ledgers: [keyless, keyed],
            consumed,
            health,
            recovered,
            monitor,
        })
    }
}

/// When the topic's health was stale during a run.
#[derive(Debug, Clone, Default)]
pub struct HealthTrace {
    /// `(from, to)` spans of stale health, from the start of the load.
    pub stale: Vec<(Duration, Duration)>,
}

impl HealthTrace {
    fn record(&mut self, at: Duration, stale: bool) {
        match (stale, self.stale.last_mut()) {
            (true, Some((_, to))) if at.saturating_sub(*to) < Duration::from_millis(100) => {
                *to = at
            }
            (true, _) => self.stale.push((at, at)),
            (false, _) => {}
        }
    }

    /// Total time the health was seen stale.
    pub fn stale_time(&self) -> Duration {
        self.stale.iter().map(|(from, to)| *to - *from).sum()
    }
}

/// What happened in a fault scenario.
#[derive(Debug)]
#[non_exhaustive]
pub struct FaultRun {
    /// What was run.
    pub spec: FaultSpec,
    /// The keyless and the keyed load.
    pub ledgers: [Arc<Ledger>; 2],
    /// The whole topic, read back after the run.
    pub consumed: Vec<Consumed>,
    /// When health was stale.
    pub health: HealthTrace,
    /// Whether health was fresh again at the end.
    pub recovered: bool,
    /// The monitor's counters at the end.
    pub monitor: MonitorStats,
}

/// The figures of one fault-matrix row.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FaultSummary {
    /// Messages handed to `produce`.
    pub sent: usize,
    /// Delivered.
    pub delivered: usize,
    /// Failed, handed back to the caller.
    pub failed: usize,
    /// Delivered but not in the topic, or never resolved: must be 0.
    pub lost: usize,
    /// Found in the topic more than once: must be 0.
    pub duplicated: usize,
    /// Send latency of the messages sent during the fault: p50, p99, max.
    pub latency: (Duration, Duration, Duration),
    /// Messages sent during the fault that the router steered (not a fallback).
    pub steered: usize,
    /// Messages sent during the fault.
    pub during: usize,
}

impl FaultRun {
    /// Reconciles one ledger with the topic.
    pub fn reconcile(&self, ledger: usize) -> Reconciliation {
        self.ledgers[ledger].reconcile(&self.consumed)
    }

    /// The entries sent while the fault was on.
    pub fn during_fault(&self) -> impl Iterator<Item = crate::Entry> + '_ {
        let (from, to) = (self.spec.fault_at, self.spec.fault_at + self.spec.fault_for);
        self.ledgers
            .iter()
            .flat_map(|l| l.entries().into_values())
            .filter(move |e| e.sent_at >= from && e.sent_at < to)
    }

    /// The row of the fault matrix.
    pub fn summary(&self) -> FaultSummary {
        let mut summary = FaultSummary {
            sent: 0,
            delivered: 0,
            failed: 0,
            lost: 0,
            duplicated: 0,
            latency: (Duration::ZERO, Duration::ZERO, Duration::ZERO),
            steered: 0,
            during: 0,
        };
        for (i, ledger) in self.ledgers.iter().enumerate() {
            let tally = ledger.tally();
            let check = self.reconcile(i);
            summary.sent += tally.sent;
            summary.delivered += tally.delivered;
            summary.failed += tally.failed;
            // The embedded broker's own departures count here as before, as what the topic
            // holds: this table does not tell them apart.
            summary.lost += tally.pending
                + check.lost.len()
                + check.misplaced.len()
                + check.acknowledged_unwritten.len();
            summary.duplicated += check.duplicated.len() + check.retry_copies.len();
        }
        let mut latencies: Vec<Duration> = Vec::new();
        for entry in self.during_fault() {
            summary.during += 1;
            if matches!(
                entry.route,
                Some(
                    ksp_producer::Route::Sticky
                        | ksp_producer::Route::Home
                        | ksp_producer::Route::Moved
                )
            ) {
                summary.steered += 1;
            }
            if let Some(latency) = entry.latency {
                latencies.push(latency);
            }
        }
        latencies.sort();
        let at = |q: f64| {
            latencies
                .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        summary.latency = (
            at(0.5),
            at(0.99),
            latencies.last().copied().unwrap_or_default(),
        );
        summary
    }
}

/// The full-local-queue scenario: one broker answering 300 ms late, a producer whose local
/// queue holds 50 messages, and a burst of 200 sends at once.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct QueueBurst {
    /// `queue.buffering.max.messages`.
    pub queue: usize,
    /// Sends in the burst.
    pub burst: usize,
    /// The broker's round trip.
    pub rtt: Duration,
    /// The producer's `queue_timeout`.
    pub queue_timeout: Duration,
}

/// One send of a [`QueueBurst`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BurstSend {
    /// Its payload.
    pub payload: Vec<u8>,
    /// How long `produce` took.
    pub latency: Duration,
    /// `Ok(partition)`, or `Err((queue full?, the payload handed back))`.
    pub result: Result<i32, (bool, Option<Vec<u8>>)>,
}

/// What a [`QueueBurst`] did.
#[derive(Debug)]
#[non_exhaustive]
pub struct BurstRun {
    /// Every send.
    pub sends: Vec<BurstSend>,
    /// The deepest librdkafka's queue got (`in_flight_count`: messages plus pending report
    /// events), sampled every 5 ms.
    pub deepest: i32,
    /// The topic afterwards.
    pub consumed: Vec<Consumed>,
    /// The producer's free queue room once everything resolved.
    pub room_after: Option<usize>,
}

impl QueueBurst {
    /// 200 sends into a 50-message queue behind a 300 ms round trip, with `queue_timeout`.
    pub fn new(queue_timeout: Duration) -> Self {
        Self {
            queue: 50,
            burst: 200,
            rtt: Duration::from_millis(300),
            queue_timeout,
        }
    }

    /// Sets the burst size.
    #[must_use]
    pub fn burst(mut self, burst: usize) -> Self {
        self.burst = burst;
        self
    }

    /// Runs it.
    pub async fn run(&self) -> TestkitResult<BurstRun> {
        use rdkafka::Message;
        use rdkafka::producer::{FutureRecord, Producer};

        let kafka = MockKafka::start(1)?;
        kafka.create_topic(TOPIC, 2)?;
        kafka
            .cluster()
            .broker_round_trip_time(1, self.rtt)
            .map_err(crate::kafka_error("slowing the broker"))?;
        let mut config = kafka.client_config();
        config
            .set("queue.buffering.max.messages", self.queue.to_string())
            .set("linger.ms", "0");
        let producer = AsyncSmartProducer::builder(config)
            .smart_enabled(false)
            .queue_timeout(self.queue_timeout)
            .build()
            .map_err(|e| TestkitError::Demo(e.to_string()))?;
        let deepest = Arc::new(std::sync::atomic::AtomicI32::new(0));
        let sampler = {
            let (producer, deepest) = (producer.clone(), deepest.clone());
            tokio::spawn(async move {
                loop {
                    deepest.fetch_max(
                        producer.inner().in_flight_count(),
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        let sends = (0..self.burst).map(|i| {
            let producer = producer.clone();
            async move {
                let payload = format!("burst-{i}").into_bytes();
                let started = Instant::now();
                let result = producer
                    .produce(FutureRecord::<(), _>::to(TOPIC).payload(&payload))
                    .await
                    .map(|d| d.partition)
                    .map_err(|e| {
                        let full = e.is_queue_full();
                        (
                            full,
                            e.into_message()
                                .and_then(|m| m.payload().map(<[u8]>::to_vec)),
                        )
                    });
                BurstSend {
                    payload,
                    latency: started.elapsed(),
                    result,
                }
            }
        });
        let sends = futures::future::join_all(sends).await;
        sampler.abort();
        let room_after = producer.queue_room();
        let consumed = read_topic(&kafka.client_config(), TOPIC, Duration::from_secs(30)).await?;
        Ok(BurstRun {
            sends,
            deepest: deepest.load(std::sync::atomic::Ordering::Relaxed),
            consumed,
            room_after,
        })
    }
}
