//! The soak's producer instances: each a slot holding an async or a blocking smart producer
//! (replaced when the fleet's leader is restarted), its load, and its probes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use ksp_monitor::{MonitorConfig, MonitorStatus};
use ksp_producer::blocking::SmartProducer;
use ksp_producer::{
    AsyncSmartProducer, Fallback, KeyOrderConfig, ProduceError, Route, RouterConfig,
};
use rdkafka::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, FutureRecord};

use super::schedule::Rng;
use super::verify::{Tag, Verifier};
use super::{GROUP, SoakSpec, TOPIC};
use crate::{TestkitError, TestkitResult};

/// How late past `max_staleness` a probe may still see health fresh: health carries its
/// deadline on quanta's clock (`TopicHealth::stale_in`: the TSC, calibrated once), a probe
/// ages it by the wall clock (which NTP slews), and the two may disagree by a little: 5 ms,
/// or 1 % of `max_staleness` when that is more. Not the monitor's timer: routing does not
/// wait for it (it once did, and a stalled runtime kept 22 s old health in use).
pub(crate) fn staleness_slack(max_staleness: Duration) -> Duration {
    (max_staleness / 100).max(Duration::from_millis(5))
}

/// Local queue of each instance, in messages (`queue.buffering.max.messages`).
pub(crate) const QUEUE_MESSAGES: u64 = 2000;

/// A producer of either kind.
#[derive(Clone)]
pub(crate) enum Producer {
    Async(AsyncSmartProducer),
    Blocking(Arc<SmartProducer>),
}

impl Producer {
    pub(crate) fn monitor_status(&self) -> Option<MonitorStatus> {
        match self {
            Self::Async(p) => p.monitor_status(),
            Self::Blocking(p) => p.monitor_status(),
        }
    }

    pub(crate) fn monitor_restarts(&self) -> u64 {
        match self {
            Self::Async(p) => p.monitor_stats(),
            Self::Blocking(p) => p.monitor_stats(),
        }
        .map_or(0, |s| s.restarts)
    }

    /// The topic's health now, when fresh: when it was collected.
    pub(crate) fn fresh_health_collected_at(&self) -> Option<SystemTime> {
        let snapshot = match self {
            Self::Async(p) => p.health(),
            Self::Blocking(p) => p.health(),
        };
        snapshot
            .topic(TOPIC)
            .filter(|t| !t.is_stale())
            .map(|t| t.collected_at())
    }

    /// How a keyless message would be routed now.
    pub(crate) fn keyless_route(&self) -> Route {
        match self {
            Self::Async(p) => p.decide(&FutureRecord::<(), [u8]>::to(TOPIC).payload(&[][..])),
            Self::Blocking(p) => p.decide(&BaseRecord::<(), [u8]>::to(TOPIC).payload(&[][..])),
        }
        .route
    }

    pub(crate) fn is_fleet_leader(&self) -> bool {
        match self {
            Self::Async(p) => p.redis_status(),
            Self::Blocking(p) => p.redis_status(),
        }
        .and_then(|s| s.fleet)
        .is_some_and(|f| f.is_leader)
    }

    pub(crate) async fn close(&self, timeout: Duration) {
        match self {
            Self::Async(p) => {
                let _ = p.close(timeout).await;
            }
            Self::Blocking(p) => {
                let p = p.clone();
                let _ = tokio::task::spawn_blocking(move || p.close(timeout)).await;
            }
        }
    }
}

/// Whether a route was decided by health (not for want of fresh health).
pub(crate) fn by_health(route: Route) -> bool {
    !matches!(
        route,
        Route::Fallback(Fallback::Stale | Fallback::NoHealth | Fallback::Disabled)
    )
}

/// One producer instance of the soak, across its restarts.
pub(crate) struct Slot {
    pub(crate) index: u8,
    pub(crate) blocking: bool,
    pub(crate) strict: bool,
    current: RwLock<Option<Producer>>,
    next_id: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) resolved: AtomicU64,
    /// Sends not made because the instance was being restarted.
    pub(crate) skipped: AtomicU64,
    /// Sends refused with a full local queue.
    pub(crate) queue_full: AtomicU64,
    /// A burst asked for (messages), taken by the load when the instance is live.
    pub(crate) burst: AtomicU64,
    /// Burst messages sent.
    pub(crate) burst_sent: AtomicU64,
    /// Monitor restarts of instances already closed.
    pub(crate) closed_restarts: AtomicU64,
    /// Probe samples: total, with the monitor restarting, and with it stopped or dead.
    pub(crate) probes: AtomicU64,
    pub(crate) restarting: AtomicU64,
    pub(crate) not_running: AtomicU64,
    /// The last probe (ms from the start) whose route was not by health, and that route.
    pub(crate) last_not_by_health_ms: AtomicU64,
    last_fallback: Mutex<Option<Route>>,
    /// The last probe, ms from the start.
    pub(crate) last_probe_ms: AtomicU64,
    /// Whether that probe routed by health.
    pub(crate) last_probe_by_health: AtomicBool,
    /// Health routed by, oldest seen (µs), and probes that saw it older than `max_staleness`.
    pub(crate) oldest_fresh_us: AtomicU64,
    /// When (ms from the start) a probe saw the oldest.
    pub(crate) oldest_fresh_at_ms: AtomicU64,
    pub(crate) over_staleness: AtomicU64,
}

impl Slot {
    pub(crate) fn new(index: u8, blocking: bool, strict: bool) -> Self {
        Self {
            index,
            blocking,
            strict,
            current: RwLock::new(None),
            next_id: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            resolved: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            queue_full: AtomicU64::new(0),
            burst: AtomicU64::new(0),
            burst_sent: AtomicU64::new(0),
            closed_restarts: AtomicU64::new(0),
            probes: AtomicU64::new(0),
            restarting: AtomicU64::new(0),
            not_running: AtomicU64::new(0),
            last_not_by_health_ms: AtomicU64::new(0),
            last_fallback: Mutex::new(None),
            last_probe_ms: AtomicU64::new(0),
            last_probe_by_health: AtomicBool::new(false),
            oldest_fresh_us: AtomicU64::new(0),
            oldest_fresh_at_ms: AtomicU64::new(0),
            over_staleness: AtomicU64::new(0),
        }
    }

    pub(crate) fn current(&self) -> Option<Producer> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn put(&self, producer: Option<Producer>) -> Option<Producer> {
        std::mem::replace(
            &mut *self.current.write().unwrap_or_else(PoisonError::into_inner),
            producer,
        )
    }

    /// Builds this slot's producer.
    pub(crate) fn build(
        &self,
        spec: &SoakSpec,
        kafka: &ClientConfig,
        redis: &str,
    ) -> TestkitResult<Producer> {
        let mut config = kafka.clone();
        config
            .set("enable.idempotence", "true")
            .set("linger.ms", "25")
            .set(
                "message.timeout.ms",
                spec.message_timeout.as_millis().to_string(),
            )
            .set("queue.buffering.max.messages", QUEUE_MESSAGES.to_string());
        let mut redis = ksp_redis::RedisConfig::new(redis);
        redis.key_prefix = "soak".into();
        redis.cluster = "mock".into();
        redis.lease_ttl = Duration::from_secs(1);
        redis.command_timeout = Duration::from_millis(150);
        redis.reconnect_max_delay = Duration::from_millis(100);
        let mut breaker = ksp_redis::BreakerConfig::default();
        breaker.min_calls = 3;
        breaker.window = Duration::from_secs(2);
        breaker.cool_down = Duration::from_millis(300);
        redis.breaker = breaker;
        let order = if self.strict {
            KeyOrderConfig::strict().with_max_hold(spec.max_hold)
        } else {
            KeyOrderConfig::default()
        };
        let builder = AsyncSmartProducer::builder(config)
            .consumer_group(GROUP)
            .topics([TOPIC])
            // The default collection budget (the refresh interval): a round under way when a
            // fault ends is over within it (plus the monitor's 100 ms slack), and the next one
            // starts at once, so health is back within two refresh intervals.
            .monitor(
                MonitorConfig::default()
                    .with_refresh_interval(spec.refresh)
                    .with_max_staleness(spec.max_staleness),
            )
            .router(RouterConfig::default().with_key_order(order))
            .redis(redis)
            .queue_timeout(Duration::from_millis(100));
        let error = |e: ksp_producer::BuildError| TestkitError::Demo(e.to_string());
        // The instance's monitor logs inside this span, so that its lines say which instance
        // they come from (not librdkafka's own, nor the router's or Redis's tasks).
        let _span = tracing::info_span!("soak.instance", index = self.index).entered();
        Ok(if self.blocking {
            Producer::Blocking(Arc::new(builder.build_blocking().map_err(error)?))
        } else {
            Producer::Async(builder.build().map_err(error)?)
        })
    }

    /// Records one probe at `now_ms` from the start.
    pub(crate) fn probe(&self, now_ms: u64, max_staleness: Duration) {
        let Some(producer) = self.current() else {
            return;
        };
        self.probes.fetch_add(1, Ordering::Relaxed);
        match producer.monitor_status() {
            Some(MonitorStatus::Running) => {}
            // Restarted by its supervisor: allowed, counted (its restarts are summed at the end).
            Some(MonitorStatus::Restarting) => {
                self.restarting.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                self.not_running.fetch_add(1, Ordering::Relaxed);
            }
        }
        // The clock first: a preemption between the two reads must not age the health.
        let now = SystemTime::now();
        if let Some(at) = producer.fresh_health_collected_at() {
            let age = now.duration_since(at).unwrap_or_default();
            // One task probes a slot: the two stores cannot interleave with another probe's.
            let age_us = age.as_micros() as u64;
            if age_us > self.oldest_fresh_us.fetch_max(age_us, Ordering::Relaxed) {
                self.oldest_fresh_at_ms.store(now_ms, Ordering::Relaxed);
            }
            if age > max_staleness + staleness_slack(max_staleness) {
                self.over_staleness.fetch_add(1, Ordering::Relaxed);
            }
        }
        let route = producer.keyless_route();
        let smart = by_health(route);
        if !smart {
            self.last_not_by_health_ms.store(now_ms, Ordering::Relaxed);
            *self
                .last_fallback
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(route);
        }
        self.last_probe_by_health.store(smart, Ordering::Relaxed);
        self.last_probe_ms.store(now_ms, Ordering::Relaxed);
    }

    /// The last route not by health a probe saw.
    pub(crate) fn last_fallback(&self) -> String {
        self.last_fallback
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map_or_else(|| "by health".to_owned(), |r| r.to_string())
    }

    /// Which instance: its index and kind.
    pub(crate) fn describe(&self) -> String {
        let kind = match (self.blocking, self.strict) {
            (true, _) => "blocking",
            (false, true) => "async, strict key order",
            (false, false) => "async",
        };
        format!("instance {} ({kind})", self.index)
    }

    /// The id the next send will get.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.load(Ordering::Relaxed)
    }

    fn next_tag(&self, key: Option<u32>) -> Tag {
        Tag {
            slot: self.index,
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            key,
        }
    }

    fn key_name(&self, key: u32) -> String {
        if self.strict {
            format!("s{key}")
        } else {
            format!("k{key}")
        }
    }
}

/// Zipf-distributed key ranks `0..n` (exponent 1).
pub(crate) struct Zipf(Vec<f64>);

impl Zipf {
    pub(crate) fn new(n: u32) -> Self {
        let mut cdf: Vec<f64> = (1..=n.max(1)).map(|k| 1.0 / f64::from(k)).collect();
        let mut sum = 0.0;
        for weight in &mut cdf {
            sum += *weight;
            *weight = sum;
        }
        cdf.iter_mut().for_each(|c| *c /= sum);
        Self(cdf)
    }

    pub(crate) fn sample(&self, rng: &mut Rng) -> u32 {
        let u = rng.unit();
        self.0.partition_point(|&c| c < u).min(self.0.len() - 1) as u32
    }
}

/// What one send needs.
struct Send {
    tag: Tag,
    key: Option<String>,
    payload: Vec<u8>,
}

/// One instance's load: what is owed since the last step, and the keys' draw.
struct Pacer {
    zipf: Zipf,
    rng: Rng,
    owed: f64,
    last: Instant,
}

impl Pacer {
    fn new(slot: &Slot, spec: &SoakSpec) -> Self {
        Self {
            zipf: Zipf::new(spec.keys),
            rng: Rng::new(spec.seed ^ (u64::from(slot.index) + 1).wrapping_mul(0x2545_f491)),
            owed: 0.0,
            last: Instant::now(),
        }
    }

    /// The messages due since the last step: keyless and keyed (Zipf) at the spec's rate,
    /// then, when the instance is `live`, any burst asked for (kept for later otherwise).
    fn due(&mut self, slot: &Slot, spec: &SoakSpec, live: bool) -> Vec<Send> {
        self.owed += f64::from(spec.rate) * self.last.elapsed().as_secs_f64();
        self.last = Instant::now();
        let mut sends = Vec::new();
        while self.owed >= 1.0 {
            self.owed -= 1.0;
            let key = (self.rng.unit() < spec.keyed_share).then(|| self.zipf.sample(&mut self.rng));
            sends.push(key);
        }
        if !live {
            slot.skipped
                .fetch_add(sends.len() as u64, Ordering::Relaxed);
            return Vec::new();
        }
        let burst = slot.burst.swap(0, Ordering::Relaxed);
        slot.burst_sent.fetch_add(burst, Ordering::Relaxed);
        sends.extend((0..burst).map(|_| None));
        sends
            .into_iter()
            .map(|key| {
                let tag = slot.next_tag(key);
                Send {
                    key: key.map(|k| slot.key_name(k)),
                    payload: tag.payload(spec.payload),
                    tag,
                }
            })
            .collect()
    }
}

/// Why a send failed, whether that leaves its message possibly written (timed out or purged
/// while in flight: Kafka's "possibly persisted"; docs/reliability.md), and its partition.
fn failure(error: &ProduceError) -> (String, bool, i32) {
    let maybe_written = matches!(
        error.error().rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::PurgeInflight)
    );
    let partition = error.message().map_or(-1, |m| m.partition());
    (error.error().to_string(), maybe_written, partition)
}

fn handed_back(error: &ProduceError, payload: &[u8]) -> bool {
    error
        .message()
        .and_then(|m| m.payload())
        .is_some_and(|p| p == payload)
}

/// Runs an async slot's load while `running`, then waits (bounded) for every send to resolve.
pub(crate) async fn run_async(
    slot: Arc<Slot>,
    verifier: Arc<Verifier>,
    spec: SoakSpec,
    running: Arc<AtomicBool>,
) {
    let mut pacer = Pacer::new(&slot, &spec);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_flight: FuturesUnordered<Pin<Box<dyn Future<Output = ()> + std::marker::Send>>> =
        FuturesUnordered::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if !running.load(Ordering::Relaxed) {
                    break;
                }
                let producer = match slot.current() {
                    Some(Producer::Async(producer)) => Some(producer),
                    _ => None,
                };
                let sends = pacer.due(&slot, &spec, producer.is_some());
                let Some(producer) = producer else { continue };
                for send in sends {
                    slot.sent.fetch_add(1, Ordering::Relaxed);
                    let (producer, slot, verifier) = (producer.clone(), slot.clone(), verifier.clone());
                    // Pushed in order: FuturesUnordered polls new futures first in the order
                    // they were pushed, so each key's sends reach `produce` in order.
                    in_flight.push(Box::pin(async move {
                        let mut record = FutureRecord::to(TOPIC).payload(&send.payload);
                        if let Some(key) = &send.key {
                            record = record.key(key);
                        }
                        let sent = Instant::now();
                        match producer.produce(record).await {
                            Ok(d) => verifier.delivered(
                                send.tag,
                                sent,
                                (d.partition, d.offset),
                                d.timestamp.to_millis(),
                            ),
                            Err(e) => {
                                if e.is_queue_full() {
                                    slot.queue_full.fetch_add(1, Ordering::Relaxed);
                                }
                                verifier.failed(
                                    send.tag,
                                    handed_back(&e, &send.payload),
                                    (!e.is_queue_full()).then(|| failure(&e)),
                                );
                            }
                        }
                        slot.resolved.fetch_add(1, Ordering::Relaxed);
                    }));
                }
            }
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
        }
    }
    let bound = spec.message_timeout + spec.max_hold + Duration::from_secs(30);
    let _ = tokio::time::timeout(bound, async { while in_flight.next().await.is_some() {} }).await;
}

/// Runs the blocking slot's load on the calling (non-runtime) thread while `running`.
pub(crate) fn run_blocking(
    slot: Arc<Slot>,
    verifier: Arc<Verifier>,
    spec: SoakSpec,
    running: Arc<AtomicBool>,
) {
    let mut pacer = Pacer::new(&slot, &spec);
    while running.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(10).saturating_sub(pacer.last.elapsed()));
        let producer = match slot.current() {
            Some(Producer::Blocking(producer)) => Some(producer),
            _ => None,
        };
        let sends = pacer.due(&slot, &spec, producer.is_some());
        let Some(producer) = producer else { continue };
        for send in sends {
            slot.sent.fetch_add(1, Ordering::Relaxed);
            let mut record = BaseRecord::to(TOPIC).payload(&send.payload);
            if let Some(key) = &send.key {
                record = record.key(key);
            }
            let (tag, reported_slot, reporter) = (send.tag, slot.clone(), verifier.clone());
            let payload = send.payload.clone();
            let at = Instant::now();
            let sent = producer.send(record, move |outcome| {
                match outcome {
                    Ok(d) => reporter.delivered(
                        tag,
                        at,
                        (d.partition, d.offset),
                        d.timestamp.to_millis(),
                    ),
                    Err(e) => reporter.failed(tag, handed_back(&e, &payload), Some(failure(&e))),
                }
                reported_slot.resolved.fetch_add(1, Ordering::Relaxed);
            });
            if let Err(e) = sent {
                if e.is_queue_full() {
                    slot.queue_full.fetch_add(1, Ordering::Relaxed);
                }
                verifier.failed(send.tag, handed_back(&e, &send.payload), None);
                slot.resolved.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
