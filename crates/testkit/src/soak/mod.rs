//! A chaos soak: three producer instances (async and blocking, one in strict key order) that
//! share Redis, keyed (Zipf) and keyless load with idempotence on, on the embedded 3-broker
//! cluster with real draining consumers, under a seeded random schedule of overlapping faults;
//! at the end, one line per promise.
//!
//! ```no_run
//! # async fn soak() -> ksp_testkit::TestkitResult<()> {
//! use std::time::Duration;
//! use ksp_testkit::soak::SoakSpec;
//!
//! let report = SoakSpec::new(Duration::from_secs(60)).seed(7).run().await?;
//! println!("{report}");
//! assert!(report.all_kept());
//! # Ok(())
//! # }
//! ```

mod cluster;
mod fleet;
mod reader;
mod schedule;
mod verify;

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

pub use cluster::{BrokerPlacement, serve_broker};
pub use schedule::FaultKind;
pub use verify::{Accounting, Failures, Held};

use cluster::{Act, Api, Cluster};
use fleet::Slot;
use reader::Reader;
use schedule::{Episode, Planned, Rng};
use verify::Verifier;

use crate::{DrainingConsumer, HeapUse, LagScenario, RedisServer, TestkitError, TestkitResult};

/// The consumer group.
pub const GROUP: &str = "soak-consumers";
/// The topic (6 partitions).
pub const TOPIC: &str = "soak";
/// Its partitions.
pub const PARTITIONS: i32 = 6;
/// The seed of the short soak in the test suite.
pub const DEFAULT_SEED: u64 = 20_261_130;
/// How often every instance is probed (monitor status, health age, routing by health).
pub const PROBE_PERIOD: Duration = Duration::from_millis(50);
/// The partition whose consumer changes speed at random.
pub const MOODY: i32 = 0;

/// How to run a soak.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SoakSpec {
    /// How long the load runs.
    pub duration: Duration,
    /// The seed of the fault schedule and the load.
    pub seed: u64,
    /// Messages per second per instance.
    pub rate: u32,
    /// Share of them keyed.
    pub keyed_share: f64,
    /// Distinct keys (Zipf-distributed).
    pub keys: u32,
    /// Payload bytes.
    pub payload: usize,
    /// The monitors' refresh interval.
    pub refresh: Duration,
    /// The monitors' `max_staleness`.
    pub max_staleness: Duration,
    /// `message.timeout.ms`.
    pub message_timeout: Duration,
    /// Strict key order's `max_hold`.
    pub max_hold: Duration,
    /// The quiet window after each episode (at least).
    pub quiet: Duration,
    /// Memory is judged after this long.
    pub warm_up: Duration,
    /// Print a progress line every this long (`None`: quiet).
    pub progress: Option<Duration>,
    /// Where the embedded cluster runs: in a child process, its memory is not in the RSS
    /// judged.
    pub broker: BrokerPlacement,
}

impl SoakSpec {
    /// A soak of `duration` with the default seed: 200 messages per second per instance (40 %
    /// keyed over 2 000 keys), 200-byte payloads, refresh every 200 ms, stale after 1 s,
    /// memory judged after 5 min.
    pub fn new(duration: Duration) -> Self {
        Self {
            duration,
            seed: DEFAULT_SEED,
            rate: 200,
            keyed_share: 0.4,
            keys: 2000,
            payload: 200,
            refresh: Duration::from_millis(200),
            max_staleness: Duration::from_secs(1),
            message_timeout: Duration::from_secs(30),
            max_hold: Duration::from_secs(5),
            quiet: Duration::from_secs(4),
            warm_up: Duration::from_secs(300),
            progress: None,
            broker: BrokerPlacement::InProcess,
        }
    }

    /// Sets the seed.
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Runs the embedded cluster where `placement` says.
    #[must_use]
    pub fn broker(mut self, placement: BrokerPlacement) -> Self {
        self.broker = placement;
        self
    }

    /// Prints a progress line every `every`.
    #[must_use]
    pub fn progress(mut self, every: Duration) -> Self {
        self.progress = Some(every);
        self
    }

    /// Runs it: for `duration`, or longer when episodes ran late (every planned episode runs,
    /// with its quiet window). Needs a multi-threaded Tokio runtime (killing and starting
    /// `redis-server` runs in `block_in_place`).
    pub async fn run(&self) -> TestkitResult<SoakReport> {
        run(self.clone()).await
    }
}

/// Recovery after one episode: how long after its last fault ended every instance routed by
/// health again.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Recovery {
    /// The episode's faults.
    pub kinds: Vec<FaultKind>,
    /// When its last fault ended, from the start.
    pub ended: Duration,
    /// Whether some instance routed without health (stale or none) during the episode.
    pub degraded: bool,
    /// Time to routing by health again; `None`: not within the quiet window.
    pub after: Option<Duration>,
    /// The instances that were not routing by health again within two refresh intervals:
    /// which, and how they last routed without it.
    pub laggards: Vec<String>,
}

/// What a soak found.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SoakReport {
    /// What was run.
    pub spec: SoakSpec,
    /// Faults injected, per kind.
    pub faults: BTreeMap<FaultKind, u32>,
    /// Episodes and their recovery.
    pub recoveries: Vec<Recovery>,
    /// Sends handed to the producers, and resolved.
    pub sent: u64,
    /// Resolved (delivered or failed).
    pub resolved: u64,
    /// Not sent while an instance was being restarted.
    pub skipped: u64,
    /// Refused with a full local queue.
    pub queue_full: u64,
    /// The accounting.
    pub accounting: Accounting,
    /// Probes of the monitors.
    pub probes: u64,
    /// Probes that found a monitor stopped or dead.
    pub not_running: u64,
    /// Probes that found a monitor restarting (after a panic, by its supervisor).
    pub restarting: u64,
    /// Monitor restarts by their supervisor.
    pub monitor_restarts: u64,
    /// The oldest health seen routed by.
    pub oldest_fresh: Duration,
    /// Probes that saw health older than `max_staleness` routed by.
    pub over_staleness: u64,
    /// Which instance saw the oldest health routed by, and when (from the start).
    pub oldest_fresh_seen: Option<(String, Duration)>,
    /// The most the probes' task ran behind its 50 ms schedule (a stalled runtime, or its
    /// own work: the heap count), and when.
    pub probe_late: (Duration, Duration),
    /// The most a plain thread's 10 ms sleep overran (a stalled process), and when.
    pub thread_late: (Duration, Duration),
    /// Memory samples of this process: (seconds from the start, RSS bytes, partitions whose
    /// log the embedded broker keeps at its cap: with the broker in this process, its memory
    /// for them grows until all are).
    pub rss: Vec<(f64, u64, u32)>,
    /// Memory samples of the broker's child process (seconds from the start, RSS bytes);
    /// empty when it ran in this process.
    pub broker_rss: Vec<(f64, u64)>,
    /// The heap allocator's count of this process's memory (seconds from the start, count);
    /// empty when glibc's `malloc` does not serve the process (see [`HeapUse`]).
    pub heap: Vec<(f64, HeapUse)>,
    /// Why a count of the heap was missing, the last time one was.
    pub no_heap: Option<String>,
    /// The longest a count of the heap took (glibc walks its arenas' free lists under their
    /// locks: the producers' threads wait that long to allocate).
    pub heap_count_max: Duration,
    /// Entries the accounting held at the end of the load (before the final read).
    pub held: Held,
    /// Read errors of the tailing reader (transient, while brokers were down).
    pub read_errors: u64,
    /// Offsets the tailing reader skipped (the log truncated under it): must be 0, or the
    /// accounting did not see every message.
    pub read_skipped: u64,
    /// Burst messages sent (the local-queue faults).
    pub burst_sent: u64,
    /// Leader restarts that found no leader (Redis down, an election under way) and closed
    /// another instance instead.
    pub no_leader_closes: u32,
    /// Messages the setup wrote (not the soak's: counted as foreign by the accounting).
    pub setup_messages: u64,
    /// The first few order violations, described.
    pub examples: Vec<String>,
    /// Failures other than a full local queue, by reason.
    pub failure_reasons: BTreeMap<String, Failures>,
}

/// One promise's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Kept.
    Kept,
    /// Broken.
    Broken,
    /// Not judged (the run is too short).
    NotJudged,
}

impl SoakReport {
    /// Each promise: verdict, name, detail.
    pub fn promises(&self) -> Vec<(Verdict, &'static str, String)> {
        let a = &self.accounting;
        let kept = |ok: bool| if ok { Verdict::Kept } else { Verdict::Broken };
        let mut lines = vec![
            (
                kept(self.sent == self.resolved),
                "every produce resolved",
                format!("{} sent, {} resolved", self.sent, self.resolved),
            ),
            (
                kept(
                    a.delivered + a.failed_handed_back == self.sent
                        && a.failed_not_handed_back == 0,
                ),
                "sent = delivered + failed with the message handed back",
                format!(
                    "{} = {} + {} (failed without the message: {}; {} of the failures a full \
                     local queue)",
                    self.sent,
                    a.delivered,
                    a.failed_handed_back,
                    a.failed_not_handed_back,
                    self.queue_full
                ),
            ),
            (
                kept(
                    a.found + a.acked_unwritten == a.delivered
                        && self.read_skipped == 0
                        && a.lost
                            + a.duplicated
                            + a.misplaced
                            + a.failed_but_written
                            + a.unreported
                            == 0
                        && a.foreign == self.setup_messages,
                ),
                "the topic holds each delivered message exactly once, at its reported offset",
                format!(
                    "{} found of {} delivered; lost {}, duplicated {}, misplaced {}, failed but \
                     written {}, never reported {}, not the soak's {} (the setup wrote {}); \
                     offsets the reader skipped {}. Failed with an error that leaves the \
                     message possibly written (timed out or purged in flight), and written: {}. \
                     The embedded broker's, as it does not check \
                     an idempotent producer's sequence numbers (tests/embedded_broker.rs): {} \
                     written twice by librdkafka's retry of a batch, {} reported delivered \
                     with no offset after a later batch was accepted out of sequence, never \
                     written; {} found with no offset reported",
                    a.found,
                    a.delivered,
                    a.lost,
                    a.duplicated,
                    a.misplaced,
                    a.failed_but_written,
                    a.unreported,
                    a.foreign,
                    self.setup_messages,
                    self.read_skipped,
                    a.failed_possibly_written,
                    a.retry_copies,
                    a.acked_unwritten,
                    a.offset_unknown
                ),
            ),
            (
                kept(a.out_of_order == 0),
                "per-key order on every partition (each instance's keys)",
                format!(
                    "{} out of order; {} keys, {} of them moved",
                    a.out_of_order, a.keys, a.moved_keys
                ),
            ),
            (
                kept(a.strict_out_of_order == 0 && a.strict_read > 0),
                "strict key order: the group reads a key's message after every one delivered \
                 before it was sent, across moves",
                format!(
                    "{} of the strict instance's keyed messages read by the group, {} out of \
                     order; {} keys read from more than one partition. Outside the promise \
                     (docs/routing.md): {} overtaken by a send made while they were in flight, \
                     {} by a send of the instance that replaced theirs, {} after a write \
                     slower than a refresh interval",
                    a.strict_read,
                    a.strict_out_of_order,
                    a.strict_moved_keys,
                    a.strict_overtaken_in_flight,
                    a.strict_across_restart,
                    a.strict_slow_write
                ),
            ),
            (
                kept(self.not_running == 0 && self.probes > 0),
                "the monitor never stopped (restarts by its supervisor counted)",
                format!(
                    "{} probes: {} found a monitor stopped or dead, {} restarting; {} restarts \
                     by the supervisor",
                    self.probes, self.not_running, self.restarting, self.monitor_restarts
                ),
            ),
            (
                kept(self.over_staleness == 0 && self.probes > 0),
                "health never used past max_staleness",
                format!(
                    "oldest health routed by: {:.1} ms{} (max_staleness {} ms); probes past it \
                     by more than the clocks' {} ms: {}",
                    self.oldest_fresh.as_secs_f64() * 1e3,
                    self.oldest_fresh_seen
                        .as_ref()
                        .map_or_else(String::new, |(who, at)| format!(
                            ", by {who} at {:.1} s",
                            at.as_secs_f64()
                        )),
                    self.spec.max_staleness.as_millis(),
                    fleet::staleness_slack(self.spec.max_staleness).as_millis(),
                    self.over_staleness
                ),
            ),
        ];
        // Two refresh intervals, plus the probes' period (they sample every 50 ms).
        let bound = self.spec.refresh * 2 + PROBE_PERIOD;
        let late: Vec<&Recovery> = self
            .recoveries
            .iter()
            .filter(|r| r.after.is_none_or(|a| a > bound))
            .collect();
        let worst = self
            .recoveries
            .iter()
            .filter_map(|r| r.after)
            .max()
            .unwrap_or_default();
        let degraded = self.recoveries.iter().filter(|r| r.degraded).count();
        let late_text: Vec<String> = late
            .iter()
            .take(5)
            .map(|r| {
                let kinds: Vec<String> = r.kinds.iter().map(ToString::to_string).collect();
                format!(
                    "[{}] at {:.1} s: {} ({})",
                    kinds.join(" + "),
                    r.ended.as_secs_f64(),
                    r.after.map_or_else(
                        || "not recovered".to_owned(),
                        |a| format!("{} ms", a.as_millis())
                    ),
                    r.laggards.join(", ")
                )
            })
            .collect();
        lines.push((
            kept(late.is_empty() && degraded > 0),
            "smart routing resumed within two refresh intervals after each episode",
            format!(
                "{} episodes, {degraded} of them took routing off health; worst {} ms after \
                 the episode ended (bound {} ms); late: {}{}",
                self.recoveries.len(),
                worst.as_millis(),
                bound.as_millis(),
                late.len(),
                if late_text.is_empty() {
                    String::new()
                } else {
                    format!(" — {}", late_text.join("; "))
                }
            ),
        ));
        lines.push(self.memory());
        lines
    }

    fn memory(&self) -> (Verdict, &'static str, String) {
        let warm = self.spec.warm_up.as_secs_f64();
        // With the broker in this process, judged once its logs are all at their cap: they
        // are in this process only because the broker is embedded, and grow until then
        // (slowly for a partition routing starves).
        // `placement` says where the broker ran, and why judging starts where it does.
        let (from, placement) = if self.spec.broker == BrokerPlacement::InProcess {
            let capped = self
                .rss
                .iter()
                .find(|s| s.2 >= PARTITIONS.unsigned_abs())
                .map(|s| s.0);
            let at_cap = self.rss.last().map_or(0, |s| s.2);
            (
                capped.map_or(f64::INFINITY, |t| t.max(warm)),
                format!(
                    "; the embedded broker's logs at their cap: {at_cap} of {PARTITIONS} \
                     partitions at the end{}",
                    capped.map_or_else(String::new, |t| format!(", all from {t:.0} s"))
                ),
            )
        } else {
            (warm, "; the broker in a child process".to_owned())
        };
        let rss: Vec<(f64, u64)> = self.rss.iter().map(|s| (s.0, s.1)).collect();
        let (verdict, name, mut text) = judge_memory(
            &rss,
            &self.heap,
            &self.broker_rss,
            from,
            &format!("warm-up {warm:.0} s{placement}"),
        );
        if let Some(why) = &self.no_heap {
            let _ = write!(text, "; a count of the heap was missing: {why}");
        }
        if !self.heap.is_empty() {
            let _ = write!(
                text,
                "; each count of the heap took at most {:.1} ms; glibc's per-thread caches {}",
                self.heap_count_max.as_secs_f64() * 1e3,
                if crate::heap::thread_caches_off() {
                    "off (counted as free)"
                } else {
                    "on (what they hold counts as in use)"
                }
            );
        }
        (verdict, name, text)
    }

    /// Whether every judged promise was kept.
    pub fn all_kept(&self) -> bool {
        self.promises()
            .iter()
            .all(|(v, _, _)| *v != Verdict::Broken)
    }
}

/// The memory promise (verdict, name, detail), from the samples: the heap in use (`heap`)
/// judged from `from` (seconds) on, or RSS where there is no heap count; `why_from` says why
/// judging starts there.
fn judge_memory(
    rss: &[(f64, u64)],
    heap: &[(f64, HeapUse)],
    broker_rss: &[(f64, u64)],
    from: f64,
    why_from: &str,
) -> (Verdict, &'static str, String) {
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    let rss: Vec<(f64, f64)> = rss.iter().map(|s| (s.0, mib(s.1))).collect();
    let in_use: Vec<(f64, f64)> = heap.iter().map(|s| (s.0, mib(s.1.in_use))).collect();
    // The heap in use is what the program holds; RSS adds what the allocator keeps free
    // for later (see `HeapUse`). Judged on RSS only where there is no heap count.
    let (judged, name, what) = if in_use.is_empty() {
        (
            Trend::after(&rss, from),
            "memory (RSS) flat after warm-up",
            "RSS (no count of the heap)",
        )
    } else {
        (
            Trend::after(&in_use, from),
            "heap in use flat after warm-up",
            "the heap in use (glibc's count)",
        )
    };
    let (first, last) = (
        rss.first().map_or(0.0, |s| s.1),
        rss.last().map_or(0.0, |s| s.1),
    );
    // RSS (when not judged) and the broker's process, shown.
    let mut context = String::new();
    if in_use.is_empty() {
        let _ = write!(context, "; RSS {first:.1} → {last:.1} MiB");
    } else {
        let _ = write!(context, "; RSS (not judged) {first:.1} → {last:.1} MiB");
        if let Some(rss) = Trend::after(&rss, from) {
            let _ = write!(context, ", trend {:+.2} MiB", rss.growth);
        }
        if let Some((_, end)) = heap.last() {
            let _ = write!(
                context,
                ", glibc keeping {:.1} MiB free at the end",
                mib(end.kept_free)
            );
        }
    }
    if let (Some(a), Some(b)) = (broker_rss.first(), broker_rss.last()) {
        let _ = write!(
            context,
            "; the broker's process (not judged): {:.1} MiB at {:.0} s, {:.1} MiB at the end",
            mib(a.1),
            a.0,
            mib(b.1)
        );
    }
    let Some(trend) = judged else {
        return (
            Verdict::NotJudged,
            name,
            format!("fewer than 60 s of samples to judge ({why_from}){context}"),
        );
    };
    (
        if trend.growth <= trend.mean * 0.05 {
            Verdict::Kept
        } else {
            Verdict::Broken
        },
        name,
        format!(
            "judged on {what} from {:.0} s ({why_from}): {:.1} MiB then, \
                 {:.1} MiB at the end; trend {:+.2} MiB over {:.0} s (bound: 5 % of the mean, \
                 {:.1} MiB){context}",
            trend.from.0,
            trend.from.1,
            trend.last,
            trend.growth,
            trend.span,
            trend.mean * 0.05
        ),
    )
}

/// The least-squares trend of memory samples (seconds, MiB) from a moment on.
struct Trend {
    /// The first sample judged.
    from: (f64, f64),
    last: f64,
    mean: f64,
    /// Seconds from the first sample judged to the last.
    span: f64,
    /// The slope times the span: how much it grew, by the trend.
    growth: f64,
}

impl Trend {
    /// The trend of the samples from `from` on; `None` with fewer than 60 of them.
    fn after(samples: &[(f64, f64)], from: f64) -> Option<Self> {
        let after: Vec<(f64, f64)> = samples.iter().copied().filter(|s| s.0 >= from).collect();
        if after.len() < 60 {
            return None;
        }
        let n = after.len() as f64;
        let (mt, mr) = (
            after.iter().map(|s| s.0).sum::<f64>() / n,
            after.iter().map(|s| s.1).sum::<f64>() / n,
        );
        let cov: f64 = after.iter().map(|s| (s.0 - mt) * (s.1 - mr)).sum();
        let var: f64 = after.iter().map(|s| (s.0 - mt).powi(2)).sum();
        let slope = if var > 0.0 { cov / var } else { 0.0 };
        let span = after[after.len() - 1].0 - after[0].0;
        Some(Self {
            from: after[0],
            last: after[after.len() - 1].1,
            mean: mr,
            span,
            growth: slope * span,
        })
    }
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "soak: seed {}, {} s, {} instances, {} msg/s each",
            self.spec.seed,
            self.spec.duration.as_secs(),
            SLOTS.len(),
            self.spec.rate
        )?;
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k} ×{n}"))
            .collect();
        writeln!(
            f,
            "faults: {} in {} episodes: {}",
            self.faults.values().sum::<u32>(),
            self.recoveries.len(),
            faults.join(", ")
        )?;
        for (verdict, name, detail) in self.promises() {
            let mark = match verdict {
                Verdict::Kept => "KEPT  ",
                Verdict::Broken => "BROKEN",
                Verdict::NotJudged => "n/a   ",
            };
            writeln!(f, "{mark} {name}: {detail}")?;
        }
        for example in &self.examples {
            writeln!(f, "  {example}")?;
        }
        write!(
            f,
            "(sends not made while an instance restarted: {}; burst messages sent: {}; leader \
             restarts that found no leader and closed another instance: {}; reader errors: {}; \
             accounting entries held at the end: {}; failures other than a full local queue, \
             by reason: {}; the probes' task ran at most {:.1} ms behind its schedule (at {:.1} s), \
             a plain thread's 10 ms sleep overran by at most {:.1} ms (at {:.1} s))",
            self.skipped,
            self.burst_sent,
            self.no_leader_closes,
            self.read_errors,
            self.held,
            if self.failure_reasons.is_empty() {
                "none".to_owned()
            } else {
                self.failure_reasons
                    .iter()
                    .map(|(reason, failures)| format!("{reason}: {failures}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            self.probe_late.0.as_secs_f64() * 1e3,
            self.probe_late.1.as_secs_f64(),
            self.thread_late.0.as_secs_f64() * 1e3,
            self.thread_late.1.as_secs_f64(),
        )
    }
}

/// Clears the run's flag when dropped, so that the threads reading it stop.
struct StopOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// The instances: (blocking, strict key order).
const SLOTS: [(bool, bool); 3] = [(false, false), (true, false), (false, true)];

/// Shared by the fault actions.
struct Env {
    kafka: rdkafka::ClientConfig,
    redis: Arc<Mutex<RedisServer>>,
    redis_url: String,
    /// Leader restarts that found no leader (Redis down, an election under way) and closed
    /// another instance.
    no_leader_closes: std::sync::atomic::AtomicU32,
    consumer: DrainingConsumer,
    slots: Vec<Arc<Slot>>,
    verifier: Arc<Verifier>,
    spec: SoakSpec,
    leader_shift: std::sync::atomic::AtomicI32,
}

impl Env {
    fn move_leaders(&self, cluster: &Cluster) -> TestkitResult<()> {
        let shift = self.leader_shift.fetch_add(1, Ordering::Relaxed);
        for partition in 0..PARTITIONS {
            cluster.act(Act::Leader {
                partition,
                broker: (partition + shift).rem_euclid(3) + 1,
            })?;
        }
        Ok(())
    }

    /// Starts a fault; returns what its end needs (the closing of an instance).
    fn start(
        self: &Arc<Self>,
        cluster: &Cluster,
        fault: &Planned,
    ) -> TestkitResult<Option<Closing>> {
        match fault.kind {
            FaultKind::BrokerDown => cluster.act(Act::BrokerDown(fault.broker()))?,
            FaultKind::LeaderMoves => self.move_leaders(cluster)?,
            FaultKind::ListOffsetsErrors => cluster.act(Act::Errors(Api::ListOffsets))?,
            FaultKind::OffsetFetchErrors => cluster.act(Act::Errors(Api::OffsetFetch))?,
            FaultKind::MetadataErrors => cluster.act(Act::TopicError(true))?,
            FaultKind::ProduceErrors => cluster.act(Act::Errors(Api::Produce))?,
            FaultKind::RttSpike => {
                let millis = 300 + fault.pick % 1200;
                for broker in 1..=3 {
                    cluster.act(Act::RoundTrip { broker, millis })?;
                }
            }
            FaultKind::RedisDown => {
                // Killing waits for the process: not on a runtime worker.
                let redis = self.redis.clone();
                tokio::task::block_in_place(|| {
                    redis.lock().unwrap_or_else(PoisonError::into_inner).kill();
                });
            }
            FaultKind::LeaderRestart => {
                let leader = self
                    .slots
                    .iter()
                    .find(|s| s.current().is_some_and(|p| p.is_fleet_leader()));
                if leader.is_none() {
                    self.no_leader_closes.fetch_add(1, Ordering::Relaxed);
                }
                let slot = leader
                    .unwrap_or(&self.slots[(fault.pick % self.slots.len() as u64) as usize])
                    .clone();
                let producer = slot.put(None);
                let timeout = self.spec.message_timeout;
                let drain = self.spec.max_hold + self.spec.message_timeout;
                // Closing waits for the instance's sends: not on the schedule's clock.
                return Ok(Some(tokio::spawn(async move {
                    if let Some(producer) = producer {
                        // A graceful shutdown: no new sends, and the ones made resolve first
                        // (closing releases sends still waiting under strict key order to
                        // librdkafka's partitioner, with no order kept: docs/routing.md).
                        let resolved = || {
                            slot.resolved.load(Ordering::Relaxed)
                                >= slot.sent.load(Ordering::Relaxed)
                        };
                        crate::wait_for(drain, resolved).await;
                        producer.close(timeout).await;
                        slot.closed_restarts
                            .fetch_add(producer.monitor_restarts(), Ordering::Relaxed);
                    }
                    slot
                })));
            }
            FaultKind::ConsumerStall => self
                .consumer
                .set_partition_rate(fault.stalled_partition(), 0.0),
            FaultKind::QueueSaturation => {
                // Into a live instance (not one being restarted), from the drawn one on.
                let n = self.slots.len();
                let first = (fault.pick % n as u64) as usize;
                let slot = (0..n)
                    .map(|i| &self.slots[(first + i) % n])
                    .find(|s| s.current().is_some())
                    .unwrap_or(&self.slots[first]);
                slot.burst
                    .fetch_add(3 * fleet::QUEUE_MESSAGES, Ordering::Relaxed);
            }
        }
        Ok(None)
    }

    /// Ends a fault; returns what is still to finish (an instance restarting).
    fn stop(
        self: &Arc<Self>,
        cluster: &Cluster,
        fault: &Planned,
        closing: Option<Closing>,
    ) -> TestkitResult<Option<Restarting>> {
        match fault.kind {
            FaultKind::BrokerDown => cluster.act(Act::BrokerUp(fault.broker()))?,
            FaultKind::ListOffsetsErrors => cluster.act(Act::ClearErrors(Api::ListOffsets))?,
            FaultKind::OffsetFetchErrors => cluster.act(Act::ClearErrors(Api::OffsetFetch))?,
            FaultKind::ProduceErrors => cluster.act(Act::ClearErrors(Api::Produce))?,
            FaultKind::MetadataErrors => cluster.act(Act::TopicError(false))?,
            FaultKind::RttSpike => {
                for broker in 1..=3 {
                    cluster.act(Act::RoundTrip { broker, millis: 0 })?;
                }
            }
            FaultKind::RedisDown => {
                // Starting waits for the server to answer (up to 10 s): not on a runtime worker.
                let redis = self.redis.clone();
                tokio::task::block_in_place(|| {
                    redis
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .restart()
                })?;
            }
            FaultKind::LeaderRestart => {
                // A new instance once the old one has closed, off the schedule's clock: the
                // old one's sends may wait for another fault of the episode to end.
                if let Some(closing) = closing {
                    let env = self.clone();
                    return Ok(Some(tokio::spawn(async move {
                        let slot = closing.await.map_err(|e| {
                            TestkitError::Demo(format!("closing an instance failed: {e}"))
                        })?;
                        let producer = slot.build(&env.spec, &env.kafka, &env.redis_url)?;
                        env.verifier.restarted(slot.index, slot.next_id());
                        slot.put(Some(producer));
                        Ok(())
                    })));
                }
            }
            FaultKind::ConsumerStall => self
                .consumer
                .set_partition_rate(fault.stalled_partition(), f64::INFINITY),
            FaultKind::LeaderMoves | FaultKind::QueueSaturation => {}
        }
        Ok(None)
    }
}

impl Planned {
    /// The broker a broker fault takes down (1–3): the same at its start and its end.
    fn broker(&self) -> i32 {
        1 + (self.pick % 3) as i32
    }

    /// The partition a consumer stall stops (never the moody one): the same at its start and
    /// its end.
    fn stalled_partition(&self) -> i32 {
        1 + (self.pick % (PARTITIONS as u64 - 1)) as i32
    }
}

/// An instance being closed; yields its slot.
type Closing = tokio::task::JoinHandle<Arc<Slot>>;
/// An instance being replaced.
type Restarting = tokio::task::JoinHandle<TestkitResult<()>>;

async fn run(spec: SoakSpec) -> TestkitResult<SoakReport> {
    let cluster = tokio::task::block_in_place(|| Cluster::start(&spec.broker))?;
    let kafka = cluster.client_config();
    let scenario = LagScenario::new(TOPIC, PARTITIONS as usize);
    scenario.apply(&kafka, GROUP).await?;
    let setup_messages = scenario.produced().iter().sum();
    let redis = RedisServer::start()?;
    // Consumers prefetch at most 1 000 messages or 4 MiB per partition (the draining consumer
    // reads through split partition queues): librdkafka's default (100 000 messages, 64 MiB)
    // would fill the harness's memory behind a slow partition and hide the producers' memory
    // in the RSS. (Much less would stall them: the embedded broker does not
    // hand out a batch larger than the fetch size, and a burst makes batches of up to 1 MB.)
    let mut consumers = kafka.clone();
    consumers
        .set("queued.min.messages", "1000")
        .set("queued.max.messages.kbytes", "4096");
    let consumer = DrainingConsumer::builder(&consumers, GROUP, TOPIC, PARTITIONS).start()?;
    let strict = SLOTS
        .iter()
        .position(|&(_, strict)| strict)
        .map(|i| i as u8);
    let verifier = Arc::new(Verifier::new(SLOTS.len(), strict, spec.refresh));
    verifier.reserve_key_space(spec.keys, PARTITIONS);
    let reader = Reader::start(&consumers, TOPIC, PARTITIONS, verifier.clone())?;
    let slots: Vec<Arc<Slot>> = SLOTS
        .iter()
        .enumerate()
        .map(|(i, &(blocking, strict))| Arc::new(Slot::new(i as u8, blocking, strict)))
        .collect();
    for slot in &slots {
        let producer = slot.build(&spec, &kafka, &redis.url())?;
        slot.put(Some(producer));
    }
    let env = Arc::new(Env {
        kafka,
        redis_url: redis.url(),
        redis: Arc::new(Mutex::new(redis)),
        no_leader_closes: std::sync::atomic::AtomicU32::new(0),
        consumer,
        slots: slots.clone(),
        verifier: verifier.clone(),
        spec: spec.clone(),
        leader_shift: std::sync::atomic::AtomicI32::new(0),
    });
    let episodes = schedule::plan(spec.seed, spec.duration, Duration::from_secs(3), spec.quiet);

    // Whether glibc counts this process's heap is checked at the first count: here, before
    // the load starts allocating.
    let _ = crate::heap::heap_use();
    let started = Instant::now();
    let ms = move || started.elapsed().as_millis() as u64;
    // The load and the probes run until the schedule is done: `duration`, or later when
    // episodes ran late (every planned episode runs, with its quiet window).
    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    // A run that fails half-way stops its threads too.
    let _stop = StopOnDrop(running.clone());
    let mut loads = Vec::new();
    let mut blocking_loads = Vec::new();
    for slot in &slots {
        let (slot, verifier, spec, running) = (
            slot.clone(),
            verifier.clone(),
            spec.clone(),
            running.clone(),
        );
        if slot.blocking {
            blocking_loads.push(
                std::thread::Builder::new()
                    .name("ksp-soak-blocking".into())
                    .spawn(move || fleet::run_blocking(slot, verifier, spec, running))?,
            );
        } else {
            loads.push(tokio::spawn(fleet::run_async(
                slot, verifier, spec, running,
            )));
        }
    }
    // Probes, memory, and the moody consumer, until the load ends.
    let background = {
        let (env, spec, verifier, running) =
            (env.clone(), spec.clone(), verifier.clone(), running.clone());
        let logs_at_cap = reader.logs_at_cap.clone();
        let broker_statm = cluster.child_statm();
        tokio::spawn(async move {
            let mut rng = Rng::new(spec.seed ^ 0x6d6f_6f64);
            // One sample a second, room made up front: a vector doubling in the middle of the
            // run would be growth the memory promise judges. Twice the duration: a run whose
            // schedule fell behind ends late.
            let samples = 2 * usize::try_from(spec.duration.as_secs()).unwrap_or(0) + 2;
            let mut rss = Vec::with_capacity(samples);
            let mut broker_rss = Vec::with_capacity(samples);
            let mut heap = Vec::with_capacity(samples);
            let mut no_heap = None;
            let mut heap_count_max = Duration::ZERO;
            let mut next_mood = Duration::ZERO;
            let mut next_rss = Duration::ZERO;
            let mut next_progress = spec.progress.unwrap_or(Duration::MAX);
            let mut tick = tokio::time::interval(PROBE_PERIOD);
            let mut late = (Duration::ZERO, Duration::ZERO);
            while running.load(Ordering::Relaxed) {
                let due = tick.tick().await;
                let woke = due.elapsed();
                if woke > late.0 {
                    late = (woke, started.elapsed());
                }
                for slot in &env.slots {
                    slot.probe(ms(), spec.max_staleness);
                }
                let reads = env.consumer.take_consumed();
                verifier.group_read(
                    reads.iter().map(|r| (r.partition, r.offset)),
                    Instant::now(),
                );
                let now = started.elapsed();
                if now >= next_rss {
                    rss.push((
                        now.as_secs_f64(),
                        crate::process::rss_bytes("/proc/self/statm"),
                        logs_at_cap.load(Ordering::Relaxed),
                    ));
                    if let Some(statm) = &broker_statm {
                        broker_rss.push((now.as_secs_f64(), crate::process::rss_bytes(statm)));
                    }
                    let counting = Instant::now();
                    match crate::heap::heap_use() {
                        Ok(count) => heap.push((now.as_secs_f64(), count)),
                        Err(e) => no_heap = Some(e.to_string()),
                    }
                    heap_count_max = heap_count_max.max(counting.elapsed());
                    next_rss = now + Duration::from_secs(1);
                    verifier.shrink();
                }
                if now >= next_mood {
                    const SPEEDS: [f64; 5] = [5.0, 20.0, 60.0, 200.0, f64::INFINITY];
                    let speed = SPEEDS[rng.below(SPEEDS.len() as u64) as usize];
                    env.consumer.set_partition_rate(MOODY, speed);
                    next_mood = now + rng.between(Duration::from_secs(2), Duration::from_secs(6));
                }
                if now >= next_progress {
                    let held = verifier.held();
                    let room = verifier.capacity();
                    let sent: u64 = env
                        .slots
                        .iter()
                        .map(|s| s.sent.load(Ordering::Relaxed))
                        .sum();
                    tracing::info!(
                        elapsed_s = now.as_secs(),
                        sent,
                        rss_mib = rss.last().map_or(0, |r: &(f64, u64, u32)| r.1 >> 20),
                        "soak progress"
                    );
                    let broker = broker_rss.last().map_or_else(
                        || {
                            format!(
                                " (the embedded broker's logs at their cap: {} of {PARTITIONS} \
                                 partitions)",
                                rss.last().map_or(0, |r| r.2)
                            )
                        },
                        |r| format!(", the broker's process {} MiB", r.1 >> 20),
                    );
                    let heap = heap.last().map_or_else(String::new, |h: &(f64, HeapUse)| {
                        format!(
                            " (heap in use {:.1} MiB, glibc keeping {:.1} MiB free)",
                            h.1.in_use as f64 / f64::from(1 << 20),
                            h.1.kept_free as f64 / f64::from(1 << 20)
                        )
                    });
                    eprintln!(
                        "soak: {:>5} s, {sent} sent, RSS {} MiB{heap}{broker}, accounting \
                         entries {held}, room for {room}",
                        now.as_secs(),
                        rss.last().map_or(0, |r| r.1 >> 20),
                    );
                    next_progress = now + spec.progress.unwrap_or(Duration::MAX);
                }
            }
            (rss, broker_rss, (heap, no_heap, heap_count_max), late)
        })
    };
    // A plain thread's sleeps: late with the whole process (a stalled runtime leaves it on time).
    let sleeper = {
        let running = running.clone();
        std::thread::Builder::new()
            .name("ksp-soak-sleeper".into())
            .spawn(move || {
                const NAP: Duration = Duration::from_millis(10);
                let mut late = (Duration::ZERO, Duration::ZERO);
                while running.load(Ordering::Relaxed) {
                    let before = Instant::now();
                    std::thread::sleep(NAP);
                    let over = before.elapsed().saturating_sub(NAP);
                    if over > late.0 {
                        late = (over, started.elapsed());
                    }
                }
                late
            })?
    };

    let mut recoveries = Vec::with_capacity(episodes.len());
    let mut faults: BTreeMap<FaultKind, u32> = BTreeMap::new();
    // How far the schedule runs behind plan: an episode can outlast its plan (an instance
    // closing waits for its sends), and the next one then starts as late, so that every
    // episode keeps its quiet window.
    let mut late = Duration::ZERO;
    for episode in &episodes {
        let began_ms = ms();
        let ended = run_episode(&env, &cluster, episode, started, late).await?;
        for f in &episode.faults {
            *faults.entry(f.kind).or_default() += 1;
        }
        // The quiet window: every instance routes by health again before it ends.
        let quiet_until = (late + episode.quiet_until).max(ended + spec.quiet);
        late = quiet_until - episode.quiet_until;
        tokio::time::sleep_until((started + quiet_until).into()).await;
        let ended_ms = ended.as_millis() as u64;
        let bound = spec.refresh * 2 + PROBE_PERIOD;
        let per_slot: Vec<Option<Duration>> = slots
            .iter()
            .map(|s| {
                let by_health = s.last_probe_by_health.load(Ordering::Relaxed)
                    && s.last_probe_ms.load(Ordering::Relaxed) > ended_ms;
                by_health.then(|| {
                    Duration::from_millis(
                        s.last_not_by_health_ms
                            .load(Ordering::Relaxed)
                            .saturating_sub(ended_ms),
                    )
                })
            })
            .collect();
        let after = per_slot
            .iter()
            .try_fold(Duration::ZERO, |worst, r| r.map(|r| worst.max(r)));
        let laggards: Vec<String> = slots
            .iter()
            .zip(&per_slot)
            .filter(|(_, r)| r.is_none_or(|r| r > bound))
            .map(|(s, r)| {
                format!(
                    "{}: {} {}",
                    s.describe(),
                    s.last_fallback(),
                    r.map_or_else(
                        || "still".to_owned(),
                        |r| format!("until {} ms", r.as_millis())
                    )
                )
            })
            .collect();
        if spec.progress.is_some() && !laggards.is_empty() {
            eprintln!(
                "soak: {:>7.1} s  late recovery from the episode ended at {:.1} s: {}",
                started.elapsed().as_secs_f64(),
                ended.as_secs_f64(),
                laggards.join(", ")
            );
        }
        let degraded = slots
            .iter()
            .any(|s| s.last_not_by_health_ms.load(Ordering::Relaxed) >= began_ms);
        recoveries.push(Recovery {
            kinds: episode.faults.iter().map(|f| f.kind).collect(),
            ended,
            degraded,
            after,
            laggards,
        });
    }
    tokio::time::sleep_until((started + spec.duration).into()).await;
    running.store(false, Ordering::Relaxed);

    // The end: the load stops and every send resolves; then the instances close.
    for load in loads {
        load.await
            .map_err(|e| TestkitError::Demo(format!("a load failed: {e}")))?;
    }
    for load in blocking_loads {
        load.join()
            .map_err(|_| TestkitError::Demo("the blocking load panicked".into()))?;
    }
    let (rss, broker_rss, (heap, no_heap, heap_count_max), probe_late) = background
        .await
        .map_err(|e| TestkitError::Demo(format!("the probes failed: {e}")))?;
    let thread_late = sleeper
        .join()
        .map_err(|_| TestkitError::Demo("the sleeper thread panicked".into()))?;
    let mut monitor_restarts = 0;
    for slot in &slots {
        slot.burst.store(0, Ordering::Relaxed);
        if let Some(producer) = slot.put(None) {
            producer.close(spec.message_timeout).await;
            monitor_restarts += producer.monitor_restarts();
        }
        monitor_restarts += slot.closed_restarts.load(Ordering::Relaxed);
    }
    // Blocking sends resolve through their callbacks, which close waits for.
    let held = verifier.held();
    let read_errors = reader.errors.load(Ordering::Relaxed);
    let read_skipped = reader.skipped.clone();
    tokio::task::spawn_blocking(move || reader.finish())
        .await
        .map_err(|e| TestkitError::Demo(format!("the reader failed: {e}")))??;
    let sum = |f: fn(&Slot) -> u64| slots.iter().map(|s| f(s)).sum::<u64>();
    let oldest = slots
        .iter()
        .max_by_key(|s| s.oldest_fresh_us.load(Ordering::Relaxed));
    let oldest_fresh_us = oldest.map_or(0, |s| s.oldest_fresh_us.load(Ordering::Relaxed));
    let oldest_fresh_seen = oldest.filter(|_| oldest_fresh_us > 0).map(|s| {
        (
            s.describe(),
            Duration::from_millis(s.oldest_fresh_at_ms.load(Ordering::Relaxed)),
        )
    });
    Ok(SoakReport {
        spec,
        faults,
        recoveries,
        sent: sum(|s| s.sent.load(Ordering::Relaxed)),
        resolved: sum(|s| s.resolved.load(Ordering::Relaxed)),
        skipped: sum(|s| s.skipped.load(Ordering::Relaxed)),
        queue_full: sum(|s| s.queue_full.load(Ordering::Relaxed)),
        accounting: verifier.accounting(true),
        probes: sum(|s| s.probes.load(Ordering::Relaxed)),
        not_running: sum(|s| s.not_running.load(Ordering::Relaxed)),
        restarting: sum(|s| s.restarting.load(Ordering::Relaxed)),
        monitor_restarts,
        oldest_fresh: Duration::from_micros(oldest_fresh_us),
        over_staleness: sum(|s| s.over_staleness.load(Ordering::Relaxed)),
        oldest_fresh_seen,
        probe_late,
        thread_late,
        rss,
        broker_rss,
        heap,
        no_heap,
        heap_count_max,
        held,
        read_errors,
        read_skipped: read_skipped.load(Ordering::Relaxed),
        burst_sent: sum(|s| s.burst_sent.load(Ordering::Relaxed)),
        no_leader_closes: env.no_leader_closes.load(Ordering::Relaxed),
        setup_messages,
        examples: verifier.examples(),
        failure_reasons: verifier.failure_reasons(),
    })
}

/// Starts and stops an episode's faults on schedule (overlapping as planned), `late` behind
/// plan; when the last one ended, from the start.
async fn run_episode(
    env: &Arc<Env>,
    cluster: &Cluster,
    episode: &Episode,
    started: Instant,
    late: Duration,
) -> TestkitResult<Duration> {
    let mut events: Vec<(Duration, bool, usize)> = Vec::new();
    for (i, f) in episode.faults.iter().enumerate() {
        events.push((f.from, true, i));
        events.push((f.to, false, i));
    }
    events.sort_by_key(|&(at, start, _)| (at, !start));
    let mut closing: Vec<Option<Closing>> = episode.faults.iter().map(|_| None).collect();
    let mut restarting = Vec::new();
    for (at, start, i) in events {
        tokio::time::sleep_until((started + late + at).into()).await;
        let fault = episode.faults[i].clone();
        if start {
            tracing::debug!(kind = %fault.kind, "fault starts");
            if env.spec.progress.is_some() {
                eprintln!(
                    "soak: {:>7.1} s  {} starts",
                    started.elapsed().as_secs_f64(),
                    fault.kind
                );
            }
            closing[i] = env.start(cluster, &fault)?;
        } else {
            tracing::debug!(kind = %fault.kind, "fault ends");
            if env.spec.progress.is_some() {
                eprintln!(
                    "soak: {:>7.1} s  {} ends",
                    started.elapsed().as_secs_f64(),
                    fault.kind
                );
            }
            restarting.extend(env.stop(cluster, &fault, closing[i].take())?);
        }
    }
    for restart in restarting {
        restart
            .await
            .map_err(|e| TestkitError::Demo(format!("restarting an instance failed: {e}")))??;
    }
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// Samples every second for 20 minutes: `f(seconds)` MiB.
    fn samples(f: impl Fn(f64) -> f64) -> Vec<(f64, u64)> {
        (0..1200)
            .map(|t| (f64::from(t), (f(f64::from(t)) * MIB as f64) as u64))
            .collect()
    }

    fn heap(in_use: &[(f64, u64)], kept_free: u64) -> Vec<(f64, HeapUse)> {
        in_use
            .iter()
            .map(|&(t, in_use)| (t, HeapUse { in_use, kept_free }))
            .collect()
    }

    #[test]
    fn memory_is_judged_on_the_heap_in_use_and_rss_growth_from_kept_free_memory_is_shown() {
        let rss = samples(|t| 40.0 + t / 60.0); // +1 MiB a minute
        let in_use = samples(|t| 10.0 + (t / 10.0).sin() * 0.2); // level, with noise
        let (verdict, _, text) = judge_memory(&rss, &heap(&in_use, 20 * MIB), &[], 300.0, "w");
        assert_eq!(verdict, Verdict::Kept, "{text}");
        assert!(text.starts_with("judged on the heap in use"), "{text}");
        assert!(
            text.contains("RSS (not judged) 40.0 → 60.0 MiB, trend +14.98 MiB"),
            "{text}"
        );
        assert!(text.contains("glibc keeping 20.0 MiB free"), "{text}");
    }

    #[test]
    fn a_growing_heap_breaks_the_memory_promise_even_when_rss_is_level() {
        let rss = samples(|_| 40.0);
        let in_use = samples(|t| 10.0 + t / 600.0); // +0.1 MiB a minute, 1.5 MiB judged
        let (verdict, _, text) = judge_memory(&rss, &heap(&in_use, 0), &[], 300.0, "w");
        assert_eq!(verdict, Verdict::Broken, "{text}");
        assert!(text.contains("trend +1.50 MiB over 899 s"), "{text}");
    }

    #[test]
    fn without_a_heap_count_rss_is_judged() {
        let growing = samples(|t| 40.0 + t / 60.0);
        let (verdict, _, text) = judge_memory(&growing, &[], &[], 300.0, "w");
        assert_eq!(verdict, Verdict::Broken, "{text}");
        assert!(
            text.starts_with("judged on RSS (no count of the heap)"),
            "{text}"
        );
        let level = samples(|_| 40.0);
        assert_eq!(judge_memory(&level, &[], &[], 300.0, "w").0, Verdict::Kept);
    }

    #[test]
    fn under_a_minute_of_samples_after_the_warm_up_is_not_judged() {
        let rss = samples(|t| 40.0 + t);
        let in_use = samples(|t| 10.0 + t);
        let (verdict, _, text) = judge_memory(&rss, &heap(&in_use, 0), &[], 1150.0, "w");
        assert_eq!(verdict, Verdict::NotJudged, "{text}");
    }
}
