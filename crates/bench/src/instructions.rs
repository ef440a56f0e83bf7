//! Instructions per message, counted by callgrind: `ksp-bench instructions` sends N messages
//! through one producer inside `ksp_measured_sends`, which callgrind is told to count
//! (`--toggle-collect=ksp_bench::instructions::ksp_measured_sends`: the exact name, since
//! callgrind flips collection on entering and leaving *every* function that matches, and a
//! wildcard also matches the drop glue of its closures), with the broker in a child process
//! that runs outside valgrind.
//!
//! What is counted: everything the calling thread executes for the N sends: building each
//! record, the routing layer (smart producer only), librdkafka's enqueue
//! (`rd_kafka_producev`), and awaiting each delivery. librdkafka's own threads (batching,
//! the network, delivery reports) are not counted: they do the same work for both producers
//! but for batch fill, which `ksp-bench throughput` measures.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use ksp_monitor::MonitorConfig;
use ksp_producer::AsyncSmartProducer;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::throughput::BrokerProcess;

const TOPIC: &str = "throughput";

/// The producer under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// The smart producer.
    Smart,
    /// A plain `FutureProducer`.
    Plain,
}

pub(crate) enum Sender {
    Smart(AsyncSmartProducer),
    Plain(FutureProducer),
}

/// What callgrind counts: `messages` sends through [`send`]. Not inlined, under a name
/// callgrind toggles on (its callees are counted with it).
#[inline(never)]
fn ksp_measured_sends(
    runtime: &tokio::runtime::Runtime,
    sender: &Sender,
    messages: usize,
    keyed: bool,
) {
    send(runtime, sender, messages, keyed);
}

/// Sends `messages` messages (100-byte payloads; keyed over 10 000 keys or keyless), at most
/// 1 000 in flight, and waits for every delivery.
fn send(runtime: &tokio::runtime::Runtime, sender: &Sender, messages: usize, keyed: bool) {
    let payload = [b'x'; 100];
    runtime.block_on(futures::stream::iter(0..messages).for_each_concurrent(
        1_000,
        |i| async move {
            let key = format!("key-{}", i % 10_000);
            let mut record = FutureRecord::to(TOPIC).payload(&payload[..]);
            if keyed {
                record = record.key(&key);
            }
            match sender {
                Sender::Smart(p) => {
                    p.produce(record).await.expect("delivered");
                }
                Sender::Plain(p) => {
                    p.send(record, Duration::from_secs(30))
                        .await
                        .expect("delivered");
                }
            }
        },
    ));
}

/// Runs one measurement: warms up (2 000 messages, or 10 000 keyed: every key once), then
/// measures `messages`.
pub fn run(
    kind: Kind,
    keyed: bool,
    partitions: i32,
    messages: usize,
    ksp_bench: &Path,
) -> anyhow::Result<()> {
    let (_broker, bootstrap) = BrokerProcess::start_unpinned(ksp_bench, partitions)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    let sender = runtime.block_on(async {
        anyhow::Ok(match kind {
            Kind::Smart => {
                let p = AsyncSmartProducer::builder(config)
                    .consumer_group("throughput")
                    .topics([TOPIC])
                    // No refresh during the measurement.
                    .monitor(
                        MonitorConfig::default().with_refresh_interval(Duration::from_secs(3600)),
                    )
                    .build()?;
                p.refresh_health().await?;
                Sender::Smart(p)
            }
            Kind::Plain => Sender::Plain(config.create()?),
        })
    })?;
    warm_up(&runtime, &sender, keyed);
    ksp_measured_sends(&runtime, &sender, messages, keyed);
    if let Sender::Smart(p) = &sender {
        runtime.block_on(p.close(Duration::from_secs(10)))?;
    }
    Ok(())
}

/// The same sends, not counted: connections, metadata, buffers, and (keyed) every one of the
/// 10 000 keys once.
fn warm_up(runtime: &tokio::runtime::Runtime, sender: &Sender, keyed: bool) {
    send(runtime, sender, if keyed { 10_000 } else { 2_000 }, keyed);
}

/// One configuration's counts: instructions per message.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    /// Partitions of the topic.
    pub partitions: i32,
    /// Keyed over 10 000 keys.
    pub keyed: bool,
    /// On the sending thread, plain then smart; two runs each.
    pub caller: [[f64; 2]; 2],
    /// The whole producer process (every thread), plain then smart: the slope between a run
    /// of 10 000 and one of 30 000 messages, so setup and idle work cancel out.
    pub process: [f64; 2],
}

/// The function callgrind counts, by its exact (demangled) name.
const MEASURED: &str = "ksp_bench::instructions::ksp_measured_sends";

/// Removes a file when dropped.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The instructions callgrind counted in one run of `exe instructions`.
fn count(
    exe: &Path,
    kind: Kind,
    keyed: bool,
    partitions: i32,
    messages: usize,
    toggled: bool,
) -> anyhow::Result<f64> {
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let out = TempFile(std::env::temp_dir().join(format!(
        "ksp-callgrind-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )));
    let mut command = std::process::Command::new("valgrind");
    command
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.0.display()));
    if toggled {
        command
            .arg("--collect-atstart=no")
            .arg(format!("--toggle-collect={MEASURED}"));
    }
    command
        .arg(exe)
        .args(["instructions", "--producer"])
        .arg(match kind {
            Kind::Smart => "smart",
            Kind::Plain => "plain",
        })
        .args(["--partitions", &partitions.to_string()])
        .args(["--messages", &messages.to_string()]);
    if keyed {
        command.arg("--keyed");
    }
    let run = command.stdin(std::process::Stdio::null()).output()?;
    if !run.status.success() {
        let stderr = String::from_utf8_lossy(&run.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(10).collect();
        anyhow::bail!(
            "valgrind run failed ({command:?}): {}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let text = std::fs::read_to_string(&out.0)?;
    let total = text
        .lines()
        .find_map(|l| l.strip_prefix("summary:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no summary in callgrind's output"))?;
    anyhow::ensure!(
        total > 0.0,
        "callgrind counted nothing: is {MEASURED} still the measured function's name?"
    );
    Ok(total)
}

/// Every configuration (8 and 1 024 partitions, keyless and keyed, plain and smart), or
/// `None` when valgrind is not installed.
///
/// # Errors
///
/// When a valgrind run fails, or counts nothing.
pub fn measure(exe: &Path) -> anyhow::Result<Option<Vec<Row>>> {
    let valgrind = std::process::Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !valgrind {
        return Ok(None);
    }
    const N: usize = 10_000;
    let mut rows = Vec::new();
    for partitions in [8, 1024] {
        for keyed in [false, true] {
            let mut caller = [[0.0; 2]; 2];
            let mut process = [0.0; 2];
            for (i, kind) in [Kind::Plain, Kind::Smart].into_iter().enumerate() {
                for slot in &mut caller[i] {
                    *slot = count(exe, kind, keyed, partitions, N, true)? / N as f64;
                }
                let short = count(exe, kind, keyed, partitions, N, false)?;
                let long = count(exe, kind, keyed, partitions, 3 * N, false)?;
                process[i] = (long - short) / (2 * N) as f64;
            }
            rows.push(Row {
                partitions,
                keyed,
                caller,
                process,
            });
        }
    }
    Ok(Some(rows))
}

/// The markdown table of [`measure`]'s rows.
pub fn table(rows: Option<&[Row]>) -> String {
    let Some(rows) = rows else {
        return "Not measured: valgrind is not installed (`apt-get install valgrind`).\n".into();
    };
    let mut md = String::from(
        "| partitions | keys | sending thread, plain → smart (instructions per message) | smart adds | run-to-run spread | whole producer process, plain → smart | smart adds |\n|---:|---|---|---:|---:|---|---:|\n",
    );
    for r in rows {
        let mean = |v: [f64; 2]| (v[0] + v[1]) / 2.0;
        let spread = r
            .caller
            .iter()
            .map(|v| (v[0] - v[1]).abs() / mean(*v))
            .fold(0.0, f64::max);
        let (cp, cs) = (mean(r.caller[0]), mean(r.caller[1]));
        let (pp, ps) = (r.process[0], r.process[1]);
        md.push_str(&format!(
            "| {} | {} | {cp:.0} → {cs:.0} | {:+.0} ({:+.1} %) | {:.2} % | {pp:.0} → {ps:.0} | {:+.0} ({:+.1} %) |\n",
            r.partitions,
            if r.keyed { "10 000 keys" } else { "none" },
            cs - cp,
            (cs / cp - 1.0) * 100.0,
            spread * 100.0,
            ps - pp,
            (ps / pp - 1.0) * 100.0,
        ));
    }
    md.push_str(
        "\n`cargo run --release -p ksp-bench -- instructions-table` (needs valgrind): callgrind \
         counts the instructions of 10 000 sends of 100-byte messages (1 000 in flight, after a \
         warm-up not counted: 2 000 messages, or keyed 10 000, every key once), the broker in a child process that valgrind does not trace. *Sending \
         thread*: only what the thread that calls `produce`/`send` executes (building the record, \
         the routing layer, librdkafka's enqueue, awaiting the delivery), twice per producer; \
         the spread is the larger difference between the two runs. *Whole producer process*: \
         every thread of it (librdkafka's batching, network and delivery threads too), as the \
         slope between a run of 10 000 and one of 30 000 messages, so that setup cancels out. \
         Work that follows the clock does not: under valgrind a longer run takes longer, so \
         librdkafka's timers (and, for the smart producer, its lag reader's threads) stay in \
         the slope, one run each: read it as an upper bound, not as the figure.\n",
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_what_smart_adds_and_the_spread() {
        let row = Row {
            partitions: 8,
            keyed: false,
            caller: [[1000.0, 1010.0], [1100.0, 1100.0]],
            process: [2000.0, 2050.0],
        };
        let md = table(Some(&[row]));
        assert!(
            md.contains(
                "| 8 | none | 1005 → 1100 | +95 (+9.5 %) | 1.00 % | 2000 → 2050 | +50 (+2.5 %) |"
            ),
            "{md}"
        );
        assert!(table(None).contains("valgrind is not installed"));
    }
}
