//! Throughput: the smart producer against a plain rdkafka `FutureProducer` (librdkafka's own
//! partitioner), same cluster, same messages, same number of sends in flight, alternating
//! A/B rounds in one process.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use futures::StreamExt;
use ksp_monitor::MonitorConfig;
use ksp_producer::AsyncSmartProducer;
use ksp_testkit::{LagScenario, MockKafka};
use rdkafka::producer::{FutureProducer, FutureRecord};

const GROUP: &str = "throughput";
const TOPIC: &str = "throughput";

/// One measured configuration.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// Payload bytes.
    pub payload: usize,
    /// Keyed (10 000 distinct keys) or keyless.
    pub keyed: bool,
}

/// Settings of the throughput run.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Messages per round and producer.
    pub messages: usize,
    /// A/B rounds.
    pub rounds: usize,
    /// Sends in flight at once.
    pub window: usize,
}

/// Median throughput of each producer for one case.
#[derive(Debug, Clone)]
pub struct Result {
    /// The case.
    pub case: Case,
    /// Median messages per second, smart producer.
    pub smart: f64,
    /// Median messages per second, plain `FutureProducer`.
    pub plain: f64,
    /// Every round's smart / plain ratio, in round order.
    pub ratios: Vec<f64>,
    /// Median process CPU time per message, smart producer, in nanoseconds.
    pub smart_cpu_ns: f64,
    /// Median process CPU time per message, plain `FutureProducer`, in nanoseconds.
    pub plain_cpu_ns: f64,
}

/// One round's figures: messages per second, and process CPU time per message (producer,
/// librdkafka and the in-process broker together) in nanoseconds.
#[derive(Debug, Clone, Copy)]
struct Round {
    rate: f64,
    cpu_ns: f64,
}

async fn run_smart(producer: &AsyncSmartProducer, case: Case, settings: Settings) -> Round {
    let payload = vec![b'x'; case.payload];
    let cpu = cpu_time::ProcessTime::now();
    let started = Instant::now();
    futures::stream::iter(0..settings.messages)
        .for_each_concurrent(settings.window, |i| {
            let payload = &payload;
            async move {
                let key = format!("key-{}", i % 10_000);
                let mut record = FutureRecord::to(TOPIC).payload(payload.as_slice());
                if case.keyed {
                    record = record.key(&key);
                }
                producer.produce(record).await.expect("delivered");
            }
        })
        .await;
    round(settings, started, cpu)
}

fn round(settings: Settings, started: Instant, cpu: cpu_time::ProcessTime) -> Round {
    let messages = settings.messages as f64;
    Round {
        rate: messages / started.elapsed().as_secs_f64(),
        cpu_ns: cpu.elapsed().as_nanos() as f64 / messages,
    }
}

async fn run_plain(producer: &FutureProducer, case: Case, settings: Settings) -> Round {
    let payload = vec![b'x'; case.payload];
    let cpu = cpu_time::ProcessTime::now();
    let started = Instant::now();
    futures::stream::iter(0..settings.messages)
        .for_each_concurrent(settings.window, |i| {
            let payload = &payload;
            async move {
                let key = format!("key-{}", i % 10_000);
                let mut record = FutureRecord::to(TOPIC).payload(payload.as_slice());
                if case.keyed {
                    record = record.key(&key);
                }
                producer
                    .send(record, Duration::from_secs(30))
                    .await
                    .expect("delivered");
            }
        })
        .await;
    round(settings, started, cpu)
}

impl Result {
    /// 25th, 50th and 75th percentile of the round-by-round smart / plain ratios.
    pub fn ratio_quartiles(&self) -> (f64, f64, f64) {
        let mut r = self.ratios.clone();
        r.sort_by(f64::total_cmp);
        let at = |q: f64| r[((r.len() - 1) as f64 * q).round() as usize];
        (at(0.25), at(0.5), at(0.75))
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Measures every case.
pub async fn measure(settings: Settings) -> anyhow::Result<Vec<Result>> {
    let kafka = MockKafka::start(3)?;
    LagScenario::new(TOPIC, 8).create(&kafka, GROUP).await?;
    let smart = AsyncSmartProducer::builder(kafka.client_config())
        .consumer_group(GROUP)
        .topics([TOPIC])
        .monitor(MonitorConfig::default().with_refresh_interval(Duration::from_secs(1)))
        .build()?;
    smart.refresh_health().await?;
    let plain: FutureProducer = kafka.client_config().create()?;
    let mut results = Vec::new();
    for case in [
        Case {
            payload: 100,
            keyed: false,
        },
        Case {
            payload: 100,
            keyed: true,
        },
        Case {
            payload: 1024,
            keyed: false,
        },
        Case {
            payload: 1024,
            keyed: true,
        },
    ] {
        // Warm both up (connections, metadata, buffers).
        let warm = Settings {
            messages: settings.messages / 10,
            ..settings
        };
        run_smart(&smart, case, warm).await;
        run_plain(&plain, case, warm).await;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for round in 0..settings.rounds {
            // Alternate who goes first, so drift in the machine's load hits both alike.
            if round % 2 == 0 {
                a.push(run_smart(&smart, case, settings).await);
                b.push(run_plain(&plain, case, settings).await);
            } else {
                b.push(run_plain(&plain, case, settings).await);
                a.push(run_smart(&smart, case, settings).await);
            }
        }
        let ratios = a.iter().zip(&b).map(|(a, b)| a.rate / b.rate).collect();
        results.push(Result {
            case,
            smart: median(a.iter().map(|r| r.rate).collect()),
            plain: median(b.iter().map(|r| r.rate).collect()),
            ratios,
            smart_cpu_ns: median(a.iter().map(|r| r.cpu_ns).collect()),
            plain_cpu_ns: median(b.iter().map(|r| r.cpu_ns).collect()),
        });
    }
    smart.close(Duration::from_secs(10)).await?;
    Ok(results)
}

/// The markdown table of [`measure`]'s results.
pub fn table(results: &[Result], settings: Settings) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| payload | keys | plain `FutureProducer`, msg/s (median) | smart producer, msg/s (median) | smart / plain, median of paired rounds | interquartile range | CPU per message, plain → smart |"
    );
    let _ = writeln!(md, "|---:|---|---:|---:|---:|---|---|");
    for r in results {
        let (p25, p50, p75) = r.ratio_quartiles();
        let _ = writeln!(
            md,
            "| {} B | {} | {:.0} | {:.0} | **{:.3}** | {:.2} – {:.2} | {:.2} → {:.2} µs ({:+.0} ns) |",
            r.case.payload,
            if r.case.keyed { "10 000 keys" } else { "none" },
            r.plain,
            r.smart,
            p50,
            p25,
            p75,
            r.plain_cpu_ns / 1000.0,
            r.smart_cpu_ns / 1000.0,
            r.smart_cpu_ns - r.plain_cpu_ns,
        );
    }
    let _ = writeln!(
        md,
        "\n{} rounds of {} messages per producer, alternating which goes first, {} sends in \
         flight, on the embedded 3-broker cluster (8 partitions, all consumers caught up). The \
         in-process mock broker shares the machine's two cores with the producers, so single \
         rounds swing by ±25 %; the ratio of each round's pair is the robust figure. CPU per \
         message is the whole process's (producers, librdkafka, the broker), so only the \
         difference between the two columns is the smart producer's own cost.",
        settings.rounds, settings.messages, settings.window
    );
    md
}
