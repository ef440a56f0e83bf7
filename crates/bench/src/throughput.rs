//! Throughput: the smart producer against a plain rdkafka `FutureProducer` (librdkafka's own
//! partitioner), same cluster, same messages, same number of sends in flight, alternating
//! A/B rounds; and batch fill, from librdkafka's statistics of each producer.
//!
//! The embedded broker runs in this process, or ([`Broker::Process`]) in a child process
//! pinned to the last CPU while this one is pinned to the others, so that the A/B measures the
//! producers and not the broker competing with them.

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use ksp_monitor::MonitorConfig;
use ksp_producer::AsyncSmartProducer;
use ksp_testkit::{ClusterProcess, LagScenario, MockKafka, serve_cluster};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext};

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

/// Where the embedded broker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Broker {
    /// In this process, sharing the CPUs with the producers.
    InProcess,
    /// In a child process (`ksp-bench broker`), pinned to the last CPU while this process is
    /// pinned to the others (with `taskset`, when there are at least two CPUs).
    Process,
}

/// Messages and bytes in the batches a producer sent, summed over librdkafka's statistics
/// (each report covers the interval since the previous one).
#[derive(Debug, Clone, Copy, Default)]
pub struct Batches {
    /// Messages in batches.
    pub messages: i64,
    /// Batches counted for messages.
    pub batches: i64,
    /// Bytes in batches.
    pub bytes: i64,
    /// Batches counted for bytes.
    pub byte_batches: i64,
}

impl Batches {
    fn add(&mut self, stats: &Statistics) {
        if let Some(topic) = stats.topics.get(TOPIC) {
            self.messages += topic.batchcnt.sum;
            self.batches += topic.batchcnt.cnt;
            self.bytes += topic.batchsize.sum;
            self.byte_batches += topic.batchsize.cnt;
        }
    }

    /// Average messages per batch.
    pub fn messages_per_batch(&self) -> f64 {
        self.messages as f64 / self.batches.max(1) as f64
    }

    /// Average bytes per batch.
    pub fn bytes_per_batch(&self) -> f64 {
        self.bytes as f64 / self.byte_batches.max(1) as f64
    }
}

type Tally = Arc<Mutex<Batches>>;

/// Waits until `tally` has counted `messages` messages in batches (every one sent is
/// delivered by now, so the reports are on their way), at most 10 intervals.
async fn settle(tally: &Tally, messages: usize) {
    let messages = i64::try_from(messages).unwrap_or(i64::MAX);
    for _ in 0..100 {
        if tally
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .messages
            >= messages
        {
            return;
        }
        tokio::time::sleep(STATS_INTERVAL / 10).await;
    }
}

fn take(tally: &Tally) -> Batches {
    std::mem::take(&mut *tally.lock().unwrap_or_else(PoisonError::into_inner))
}

/// The plain producer's context: its statistics go to a tally.
struct Counting(Tally);

impl ClientContext for Counting {
    fn stats(&self, statistics: Statistics) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .add(&statistics);
    }
}

/// How often librdkafka reports statistics in the bench.
const STATS_INTERVAL: Duration = Duration::from_millis(500);

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
    /// The smart producer's batches over every round of the case.
    pub smart_batches: Batches,
    /// The plain producer's batches over every round of the case.
    pub plain_batches: Batches,
    /// With [`Broker::Process`]: whether the broker and the producers ran pinned to CPUs of
    /// their own (`taskset` present, two CPUs or more).
    pub pinned: bool,
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

async fn run_plain(producer: &FutureProducer<Counting>, case: Case, settings: Settings) -> Round {
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

/// The embedded broker in a child process, stopped when dropped; this process's CPU
/// affinity is restored then.
pub(crate) struct BrokerProcess {
    process: ClusterProcess,
    /// The CPUs this process was allowed before pinning (a `taskset -c` list), when it
    /// pinned itself.
    restore: Option<String>,
}

/// The CPUs process `pid` may run on, as `taskset` lists them (e.g. `0-3,6`), and expanded.
fn affinity(pid: u32) -> Option<(String, Vec<u32>)> {
    let out = Command::new("taskset")
        .args(["-c", "-p", &pid.to_string()])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let list = text.rsplit_once(':')?.1.trim().to_owned();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.trim().parse::<u32>().ok()?..=b.trim().parse().ok()?),
            None => cpus.push(part.trim().parse().ok()?),
        }
    }
    Some((list, cpus))
}

fn pin(pid: u32, cpus: &str, all_threads: bool) -> bool {
    let mut command = Command::new("taskset");
    if all_threads {
        command.arg("-a");
    }
    command
        .args(["-p", "-c", cpus, &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl BrokerProcess {
    /// Starts `exe broker` (`exe` is `ksp-bench`) and, when this process may run on two CPUs
    /// or more and `taskset` is there, pins the broker to the last of them and this process to
    /// the others. Returns it with the bootstrap address it printed.
    fn start(exe: &std::path::Path) -> anyhow::Result<(Self, String)> {
        Self::spawn(exe, 8, true)
    }

    /// Starts `exe broker` with a topic of `partitions` partitions, not pinned.
    pub(crate) fn start_unpinned(
        exe: &std::path::Path,
        partitions: i32,
    ) -> anyhow::Result<(Self, String)> {
        Self::spawn(exe, partitions, false)
    }

    fn spawn(
        exe: &std::path::Path,
        partitions: i32,
        pinned: bool,
    ) -> anyhow::Result<(Self, String)> {
        let process = ClusterProcess::start(
            exe,
            &[
                "broker".to_owned(),
                "--partitions".to_owned(),
                partitions.to_string(),
            ],
        )?;
        // From here on, dropping `process` ends the child (and reaps it).
        let mut process = Self {
            process,
            restore: None,
        };
        let bootstrap = process.process.bootstrap_servers().to_owned();
        let me = std::process::id();
        if pinned
            && let Some((list, cpus)) = affinity(me)
            && let Some((&last, others)) = cpus.split_last()
            && !others.is_empty()
        {
            let others = others
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",");
            // The broker's threads on the last CPU; every thread of this process (and
            // librdkafka's later ones, which inherit it) on the others.
            if pin(process.process.id(), &last.to_string(), true) && pin(me, &others, true) {
                process.restore = Some(list);
            }
        }
        Ok((process, bootstrap))
    }

    fn pinned(&self) -> bool {
        self.restore.is_some()
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        // Then `process` drops: the child ends (killed if it lingers) and is reaped.
        if let Some(list) = self.restore.take() {
            pin(std::process::id(), &list, true);
        }
    }
}

/// `ksp-bench broker`: an embedded 3-broker cluster with the bench's topic (`partitions`
/// partitions, its group caught up), its bootstrap address printed as `bootstrap <address>`, until standard
/// input closes.
pub async fn serve_broker(partitions: i32) -> anyhow::Result<()> {
    let kafka = MockKafka::start(3)?;
    LagScenario::new(TOPIC, usize::try_from(partitions)?)
        .create(&kafka, GROUP)
        .await?;
    let bootstrap = kafka.bootstrap_servers().to_owned();
    tokio::task::spawn_blocking(move || {
        serve_cluster(&bootstrap, |_| {
            Err("this broker takes no requests".to_owned())
        })
    })
    .await??;
    drop(kafka);
    Ok(())
}

/// Measures every case; [`Broker::Process`] runs this executable as the broker.
pub async fn measure(settings: Settings, broker: Broker) -> anyhow::Result<Vec<Result>> {
    measure_with(settings, broker, &std::env::current_exe()?).await
}

/// Measures every case; [`Broker::Process`] runs `ksp_bench` (the `ksp-bench` executable)
/// as the broker.
pub async fn measure_with(
    settings: Settings,
    broker: Broker,
    ksp_bench: &std::path::Path,
) -> anyhow::Result<Vec<Result>> {
    let (_kafka, process, mut config) = match broker {
        Broker::InProcess => {
            let kafka = MockKafka::start(3)?;
            LagScenario::new(TOPIC, 8).create(&kafka, GROUP).await?;
            let config = kafka.client_config();
            (Some(kafka), None::<BrokerProcess>, config)
        }
        Broker::Process => {
            let (process, bootstrap) = BrokerProcess::start(ksp_bench)?;
            let mut config = ClientConfig::new();
            config.set("bootstrap.servers", bootstrap);
            (None, Some(process), config)
        }
    };
    config.set(
        "statistics.interval.ms",
        STATS_INTERVAL.as_millis().to_string(),
    );
    let smart_tally = Tally::default();
    let smart = {
        let tally = smart_tally.clone();
        AsyncSmartProducer::builder(config.clone())
            .consumer_group(GROUP)
            .topics([TOPIC])
            .monitor(MonitorConfig::default().with_refresh_interval(Duration::from_secs(1)))
            .statistics(move |stats| {
                tally
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .add(stats);
            })
            .build()?
    };
    smart.refresh_health().await?;
    let plain_tally = Tally::default();
    let plain: FutureProducer<Counting> =
        config.create_with_context(Counting(plain_tally.clone()))?;
    let pinned = process.as_ref().is_some_and(BrokerProcess::pinned);
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
        // The warm-up's batches are reported within an interval or two: leave them out.
        settle(&smart_tally, warm.messages).await;
        settle(&plain_tally, warm.messages).await;
        take(&smart_tally);
        take(&plain_tally);
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
        // Every batch of the case is delivered: the next reports hold the last ones.
        let sent = settings.messages * settings.rounds;
        settle(&smart_tally, sent).await;
        settle(&plain_tally, sent).await;
        let ratios = a.iter().zip(&b).map(|(a, b)| a.rate / b.rate).collect();
        results.push(Result {
            case,
            smart: median(a.iter().map(|r| r.rate).collect()),
            plain: median(b.iter().map(|r| r.rate).collect()),
            ratios,
            smart_cpu_ns: median(a.iter().map(|r| r.cpu_ns).collect()),
            plain_cpu_ns: median(b.iter().map(|r| r.cpu_ns).collect()),
            smart_batches: take(&smart_tally),
            plain_batches: take(&plain_tally),
            pinned,
        });
    }
    smart.close(Duration::from_secs(10)).await?;
    Ok(results)
}

/// The markdown table of [`measure`]'s results.
pub fn table(results: &[Result], settings: Settings, broker: Broker) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| payload | keys | plain `FutureProducer`, msg/s (median) | smart producer, msg/s (median) | smart / plain, median of paired rounds | interquartile range | CPU per message, plain → smart | messages per batch, plain → smart (ratio) | bytes per batch, plain → smart (ratio) |"
    );
    let _ = writeln!(md, "|---:|---|---:|---:|---:|---|---|---|---|");
    for r in results {
        let (p25, p50, p75) = r.ratio_quartiles();
        let (pm, sm) = (
            r.plain_batches.messages_per_batch(),
            r.smart_batches.messages_per_batch(),
        );
        let (pb, sb) = (
            r.plain_batches.bytes_per_batch(),
            r.smart_batches.bytes_per_batch(),
        );
        let _ = writeln!(
            md,
            "| {} B | {} | {:.0} | {:.0} | **{:.3}** | {:.2} – {:.2} | {:.2} → {:.2} µs ({:+.0} ns) | {:.1} → {:.1} (**{:.3}**) | {:.0} → {:.0} (**{:.3}**) |",
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
            pm,
            sm,
            sm / pm.max(f64::MIN_POSITIVE),
            pb,
            sb,
            sb / pb.max(f64::MIN_POSITIVE),
        );
    }
    let where_ = match broker {
        Broker::InProcess => {
            "the in-process mock broker shares the machine's CPUs with the producers, so \
             single rounds swing by ±25 %; the ratio of each round's pair is the robust figure. \
             CPU per message is the whole process's (producers, librdkafka, the broker)"
        }
        Broker::Process if results.iter().all(|r| r.pinned) => {
            "the mock broker runs in a child process pinned to the last CPU, the producers in \
             this one pinned to the others (`taskset`), so the broker no longer takes CPU from \
             the producers. CPU per message is this process's (both producers and librdkafka; \
             not the broker)"
        }
        Broker::Process => {
            "the mock broker runs in a child process, NOT pinned (no `taskset`, or one CPU), so \
             it still competes with the producers for CPU. CPU per message is this process's \
             (both producers and librdkafka; not the broker)"
        }
    };
    let _ = writeln!(
        md,
        "\n{} rounds of {} messages per producer, alternating which goes first, {} sends in \
         flight, on the embedded 3-broker cluster (8 partitions, all consumers caught up): \
         {where_}, so only the difference between the two CPU columns is the smart \
         producer's own cost. Batches: librdkafka's statistics of each producer (every {} ms, \
         `batchcnt` and `batchsize` summed over every round of the case); a ratio near 1 means \
         the smart producer's sticky routing fills batches as librdkafka's partitioner does.",
        settings.rounds,
        settings.messages,
        settings.window,
        STATS_INTERVAL.as_millis()
    );
    md
}
