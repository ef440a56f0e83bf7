//! The Redis L2 measured: Kafka requests of a fleet with and without a shared collector, and
//! send latency of a key's first move with Redis up, with Redis killed and without Redis.
//!
//! Needs `redis-server` (Debian package `redis-server`, or `$KSP_REDIS_SERVER`).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ksp_monitor::{HealthMonitor, KafkaLagCollector, MonitorConfig, MonitorHandle};
use ksp_producer::{AsyncSmartProducer, Partitioner, Route};
use ksp_redis::{FleetCollector, RedisClient, RedisConfig, cluster_name};
use ksp_testkit::{LagScenario, MockKafka, RedisServer, Skew, SkewedCollector};
use rdkafka::ClientConfig;
use rdkafka::producer::FutureRecord;

const GROUP: &str = "bench-group";
const TOPIC: &str = "bench";
const SLOW: i32 = 3;
const REFRESH: Duration = Duration::from_millis(500);

fn redis_config(server: &RedisServer) -> RedisConfig {
    let mut config = RedisConfig::new(server.url());
    config.lease_ttl = Duration::from_secs(2);
    config.command_timeout = Duration::from_millis(100);
    config.reconnect_max_delay = Duration::from_millis(200);
    config
}

fn instance(
    kafka: &ClientConfig,
    redis: Option<RedisConfig>,
) -> anyhow::Result<(AsyncSmartProducer, Arc<KafkaLagCollector>)> {
    let collector = Arc::new(
        KafkaLagCollector::builder(kafka)
            .set("statistics.interval.ms", "100")
            .build()?,
    );
    let mut builder = AsyncSmartProducer::builder(kafka.clone())
        .consumer_group(GROUP)
        .topics([TOPIC])
        .monitor(MonitorConfig::default().with_refresh_interval(REFRESH))
        .collector(collector.clone());
    if let Some(redis) = redis {
        builder = builder.redis(redis);
    }
    Ok((builder.build()?, collector))
}

async fn cluster() -> anyhow::Result<MockKafka> {
    let kafka = MockKafka::start(3)?;
    LagScenario::new(TOPIC, 8)
        .lag(SLOW as usize, 5000)
        .create(&kafka, GROUP)
        .await?;
    Ok(kafka)
}

/// An instance whose clock is `skew` off (its collector's and its fleet's), sharing health
/// through Redis: a fleet collector and a monitor, no producer (only its Kafka requests are
/// counted).
fn skewed_instance(
    kafka: &ClientConfig,
    redis: &RedisConfig,
    skew: Skew,
) -> anyhow::Result<(MonitorHandle, Arc<KafkaLagCollector>)> {
    let collector = Arc::new(
        KafkaLagCollector::builder(kafka)
            .set("statistics.interval.ms", "100")
            .build()?,
    );
    let fleet = FleetCollector::builder(
        RedisClient::connect(redis)?,
        Arc::new(SkewedCollector::new(collector.clone(), skew)),
        GROUP,
    )
    .cluster(cluster_name(
        kafka.get("bootstrap.servers").unwrap_or_default(),
    ))
    .follower_max_age(REFRESH * 2)
    .clock(move || skew.now())
    .spawn()?;
    let monitor = HealthMonitor::builder(fleet)
        .group(GROUP)
        .topics([TOPIC])
        .config(MonitorConfig::default().with_refresh_interval(REFRESH))
        .spawn()?;
    Ok((monitor, collector))
}

/// How a measured fleet shares health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Every instance collects.
    None,
    /// Through Redis, clocks in agreement.
    Redis,
    /// Through Redis, the instances' clocks 5 s ahead and behind in turn (the first on time).
    RedisSkewed,
}

/// OffsetFetch + ListOffsets + Metadata requests the fleet's collectors sent per refresh
/// interval, measured over `seconds`.
pub async fn requests_per_refresh(
    instances: usize,
    sharing: Sharing,
    seconds: u64,
) -> anyhow::Result<(f64, f64, f64)> {
    let kafka = cluster().await?;
    let server = RedisServer::start()?;
    let mut fleet = Vec::new();
    let mut monitors = Vec::new();
    for i in 0..instances {
        if sharing == Sharing::RedisSkewed {
            let skew = match i % 3 {
                0 => Skew::Ahead(Duration::ZERO),
                1 => Skew::Ahead(Duration::from_secs(5)),
                _ => Skew::Behind(Duration::from_secs(5)),
            };
            let (monitor, collector) =
                skewed_instance(&kafka.client_config(), &redis_config(&server), skew)?;
            monitors.push(monitor);
            fleet.push((None, collector));
        } else {
            let (producer, collector) = instance(
                &kafka.client_config(),
                (sharing == Sharing::Redis).then(|| redis_config(&server)),
            )?;
            fleet.push((Some(producer), collector));
        }
    }
    // Warm up: leases settle, every reader has connected.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let count = |fleet: &[(Option<AsyncSmartProducer>, Arc<KafkaLagCollector>)]| {
        fleet.iter().fold((0u64, 0u64, 0u64), |acc, (_, c)| {
            // Each call serves queued statistics events; drain them to read the latest.
            let mut n = c.request_counts(GROUP).unwrap_or_default();
            for _ in 0..200 {
                n = c.request_counts(GROUP).unwrap_or(n);
            }
            (
                acc.0 + n.offset_fetch,
                acc.1 + n.list_offsets,
                acc.2 + n.metadata,
            )
        })
    };
    let before = count(&fleet);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let after = count(&fleet);
    let periods = Duration::from_secs(seconds).as_secs_f64() / REFRESH.as_secs_f64();
    for (producer, _) in &fleet {
        if let Some(producer) = producer {
            producer.close(Duration::from_secs(5)).await?;
        }
    }
    for monitor in monitors {
        monitor.shutdown().await?;
    }
    Ok((
        (after.0 - before.0) as f64 / periods,
        (after.1 - before.1) as f64 / periods,
        (after.2 - before.2) as f64 / periods,
    ))
}

/// Latencies of `sends` sequential sends of keys moved for the first time (the only sends
/// that touch Redis): without Redis, with Redis up, with Redis killed.
pub async fn first_move_latency(sends: usize) -> anyhow::Result<Vec<(&'static str, Stats)>> {
    let kafka = cluster().await?;
    let mut server = RedisServer::start()?;
    let keys: Vec<String> = (0..)
        .map(|i| format!("key-{i}"))
        .filter(|k| Partitioner::ConsistentRandom.home(Some(k.as_bytes()), 8) == Some(SLOW))
        .take(sends * 3)
        .collect();
    let mut keys = keys.chunks(sends);
    let mut rows = Vec::new();

    let (plain, _) = instance(&kafka.client_config(), None)?;
    plain.refresh_health().await?;
    rows.push((
        "without Redis",
        measure(&plain, keys.next().unwrap_or_default()).await?,
    ));
    plain.close(Duration::from_secs(5)).await?;

    let (shared, _) = instance(&kafka.client_config(), Some(redis_config(&server)))?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    shared.refresh_health().await?;
    rows.push((
        "Redis up",
        measure(&shared, keys.next().unwrap_or_default()).await?,
    ));
    server.kill();
    rows.push((
        "Redis killed",
        measure(&shared, keys.next().unwrap_or_default()).await?,
    ));
    shared.close(Duration::from_secs(5)).await?;
    Ok(rows)
}

/// Latency percentiles of a set of sends.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Slowest.
    pub max: Duration,
    /// Sends that failed.
    pub failed: usize,
    /// Sends that were not moved (should be 0).
    pub not_moved: usize,
}

async fn measure(producer: &AsyncSmartProducer, keys: &[String]) -> anyhow::Result<Stats> {
    let mut times = Vec::with_capacity(keys.len());
    let (mut failed, mut not_moved) = (0, 0);
    for key in keys {
        let start = Instant::now();
        let result = producer
            .produce(FutureRecord::to(TOPIC).key(key).payload("x"))
            .await;
        times.push(start.elapsed());
        match result {
            Ok(d) if d.route == Route::Moved => {}
            Ok(_) => not_moved += 1,
            Err(_) => failed += 1,
        }
    }
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    Ok(Stats {
        p50: at(0.5),
        p99: at(0.99),
        max: *times.last().unwrap_or(&Duration::ZERO),
        failed,
        not_moved,
    })
}

/// Both measurements as markdown.
pub async fn table(seconds: u64, sends: usize) -> anyhow::Result<String> {
    let mut out = String::new();
    writeln!(
        out,
        "| instances | shared collector | OffsetFetch / refresh | ListOffsets / refresh | Metadata / refresh |"
    )?;
    writeln!(out, "|---|---|---|---|---|")?;
    for (instances, sharing) in [
        (1, Sharing::None),
        (5, Sharing::None),
        (1, Sharing::Redis),
        (5, Sharing::Redis),
        (5, Sharing::RedisSkewed),
    ] {
        let (fetch, list, meta) = requests_per_refresh(instances, sharing, seconds).await?;
        let shared = match sharing {
            Sharing::None => "no",
            Sharing::Redis => "yes (Redis)",
            Sharing::RedisSkewed => "yes (Redis), clocks 0 / +5 s / −5 s",
        };
        writeln!(
            out,
            "| {instances} | {shared} | {fetch:.2} | {list:.2} | {meta:.2} |"
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "| first move of a key ({sends} sequential sends) | p50 | p99 | max | failed | not moved |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|")?;
    for (name, s) in first_move_latency(sends).await? {
        writeln!(
            out,
            "| {name} | {:.3} ms | {:.3} ms | {:.3} ms | {} | {} |",
            s.p50.as_secs_f64() * 1e3,
            s.p99.as_secs_f64() * 1e3,
            s.max.as_secs_f64() * 1e3,
            s.failed,
            s.not_moved
        )?;
    }
    Ok(out)
}
