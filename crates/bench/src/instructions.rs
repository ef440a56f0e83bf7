//! Instructions per message, counted by callgrind: `ksp-bench instructions` sends N messages
//! through one producer, with the broker in a child process that runs outside valgrind.
//! Callgrind counts two functions, by their exact names
//! (`--toggle-collect=ksp_bench::instructions::ksp_measured_sends` and `…_deliveries`: a
//! wildcard would also match the drop glue of their closures, and callgrind flips collection on
//! entering and leaving *every* function that matches):
//!
//! 1. `ksp_measured_sends`: each send up to its enqueue. Its `produce`/`send` future is boxed
//!    (as `tokio::spawn` would) and polled once: the local queue's reservation (the smart
//!    producer, routing on or off), the routing layer (smart with routing on) or librdkafka's
//!    partitioner (plain, and smart with routing off: a routed send names the partition), and
//!    librdkafka's enqueue (`rd_kafka_producev`).
//! 2. `ksp_measured_deliveries`: once every delivery report is in (waited for, not counted),
//!    each future polled to its end, which takes one poll.
//!
//! So the count follows the code, not the machine: no wake-up, batch of ready deliveries or
//! executor scheduling that timing decides is inside it. The records are built before it. A run
//! where a send is refused, a future has not ended when polled once every report is in, or a
//! message is not delivered fails instead of counting something else. A run where a send ends
//! at its first poll already delivered (valgrind ran librdkafka's threads, which sent it and
//! took its report, between its enqueue and the wait: timing, not code) counts nothing either;
//! `instructions-table` runs it again, up to three times in all. A count of the whole process
//! (`--whole-process`, callgrind collecting from the start) does not read the split, so such a
//! send voids nothing there. The heap
//! allocator's cost per call still follows the machine (glibc's heap is shared with
//! librdkafka's threads), so it is counted apart.
//! librdkafka's own threads (batching, the network, delivery reports) are not counted: they do
//! the same work for both producers but for batch fill, which `ksp-bench throughput` measures.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use ksp_monitor::MonitorConfig;
use ksp_producer::AsyncSmartProducer;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

use crate::throughput::BrokerProcess;

const TOPIC: &str = "throughput";

/// How a run that timing voided says so: a delivery report came back within its send's first
/// poll, so the split counted is not the one described. `instructions-table` runs such a run
/// again, at most [`ATTEMPTS`] times in all. Anything else that voids a run (a refused send, a
/// future not ended once every report is in, a lost message) fails at once.
const TIMING: &str = "timing voided the count";

/// Runs of one configuration `instructions-table` tries before it gives up on a timing-voided
/// one.
const ATTEMPTS: usize = 3;

/// The producer under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// The smart producer.
    Smart,
    /// A plain `FutureProducer`.
    Plain,
    /// The smart producer with smart routing off (`smart_enabled(false)`): what wrapping
    /// `FutureProducer` costs without the routing (the queue reservation, the delivery guard,
    /// the route counter).
    Unrouted,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Smart => "smart",
            Kind::Plain => "plain",
            Kind::Unrouted => "unrouted",
        }
    }
}

pub(crate) enum Sender {
    Smart(AsyncSmartProducer),
    Plain(FutureProducer),
}

/// What callgrind counts, first part: [`sends`]. Not inlined, under a name callgrind toggles on
/// (its callees are counted with it).
#[inline(never)]
fn ksp_measured_sends<F: Future>(
    messages: usize,
    send: impl FnMut() -> F,
    delivered: impl Fn(&F::Output) -> bool,
) -> (Vec<Pin<Box<F>>>, Ended) {
    sends(messages, send, delivered)
}

/// What callgrind counts, second part: [`deliveries`].
#[inline(never)]
fn ksp_measured_deliveries<F: Future>(
    futures: Vec<Pin<Box<F>>>,
    delivered: impl Fn(&F::Output) -> bool,
) -> Outcome {
    deliveries(futures, delivered)
}

/// Each of `messages` sends up to its enqueue. Each `produce`/`send` future is boxed (as
/// `tokio::spawn` would) and polled once: it reserves room, routes, hands the message to
/// librdkafka and stops at the wait for its delivery report. Returns the futures, and how many
/// ended at that first poll instead, delivered or refused (the run is then void).
fn sends<F: Future>(
    messages: usize,
    mut send: impl FnMut() -> F,
    delivered: impl Fn(&F::Output) -> bool,
) -> (Vec<Pin<Box<F>>>, Ended) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut futures = Vec::with_capacity(messages);
    let mut ended = Ended::default();
    for _ in 0..messages {
        let mut future = Box::pin(send());
        match future.as_mut().poll(&mut cx) {
            Poll::Pending => futures.push(future),
            Poll::Ready(output) if delivered(&output) => ended.delivered += 1,
            Poll::Ready(_) => ended.refused += 1,
        }
    }
    (futures, ended)
}

/// Sends that ended at their first poll.
#[derive(Debug, Default, Clone, Copy)]
struct Ended {
    /// Already delivered: librdkafka's threads, which valgrind runs one at a time with the
    /// sending thread, sent the message and took its report between the enqueue and the wait
    /// for it. Timing, not code; the run is void all the same (its split is not the one
    /// described), and `instructions-table` runs it again.
    delivered: usize,
    /// Refused: a defect, not timing.
    refused: usize,
}

/// How the second part went.
#[derive(Debug, Default)]
struct Outcome {
    /// Futures not ended when polled (their report not in yet).
    late: usize,
    /// Futures that ended otherwise than delivered.
    failed: usize,
}

/// Each future polled once, when every delivery report is in: each ends in that one poll,
/// with no wake-up that the machine's timing decides. A future that does not is left as it is
/// (and the run is then void).
fn deliveries<F: Future>(
    futures: Vec<Pin<Box<F>>>,
    delivered: impl Fn(&F::Output) -> bool,
) -> Outcome {
    let mut cx = Context::from_waker(Waker::noop());
    let mut outcome = Outcome::default();
    for mut future in futures {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(output) if delivered(&output) => {}
            Poll::Ready(_) => outcome.failed += 1,
            Poll::Pending => outcome.late += 1,
        }
    }
    outcome
}

/// Sends `messages` messages (`payload` bytes each; keyed over 10 000 keys or keyless) in two
/// parts, [`sends`] and [`deliveries`] (through the functions callgrind counts if `counted`),
/// every delivery report waited for between them. The records are built before either.
///
/// # Errors
///
/// When a send ended at its first poll (refused, or already delivered: timing), a future had
/// not ended when polled once every report was in, or a message was not delivered: the count
/// would not be the one described.
fn send(
    runtime: &tokio::runtime::Runtime,
    sender: &Sender,
    keys: &[String],
    messages: usize,
    payload: usize,
    keyed: bool,
    part: Part,
) -> anyhow::Result<()> {
    let counted = part != Part::WarmUp;
    let payload = vec![b'x'; payload];
    let mut records = (0..messages)
        .map(|i| {
            let record = FutureRecord::to(TOPIC).payload(&payload[..]);
            if keyed {
                record.key(&keys[i % keys.len()])
            } else {
                record
            }
        })
        .collect::<Vec<_>>()
        .into_iter();
    let mut next = move || records.next().expect("one record per send");
    // Entered so that the futures find the runtime (timers, the blocking pool) when polled.
    let _runtime = runtime.enter();
    let (ended, outcome) = match sender {
        Sender::Smart(p) => parts(
            messages,
            counted,
            || p.produce(next()),
            || Ok(runtime.block_on(p.flush(Duration::from_secs(30)))?),
            Result::is_ok,
        )?,
        Sender::Plain(p) => parts(
            messages,
            counted,
            || p.send(next(), Duration::from_secs(30)),
            || Ok(p.flush(Duration::from_secs(30))?),
            Result::is_ok,
        )?,
    };
    anyhow::ensure!(
        ended.refused == 0 && outcome.late == 0 && outcome.failed == 0,
        "of {messages} sends, {} were refused at their first poll, {} had not ended once every \
         report was in, {} were not delivered: the count would not be the one described",
        ended.refused,
        outcome.late,
        outcome.failed
    );
    // Only the counted sends' split matters (the warm-up's is not counted, and a count of the
    // whole process does not read the split).
    anyhow::ensure!(
        part != Part::Split || ended.delivered == 0,
        "of {messages} sends, {} were delivered within their first poll: {TIMING}",
        ended.delivered
    );
    Ok(())
}

/// [`sends`], `flush`, a moment, then [`deliveries`]; through the functions callgrind counts if
/// `counted`.
fn parts<F: Future>(
    messages: usize,
    counted: bool,
    send: impl FnMut() -> F,
    flush: impl FnOnce() -> anyhow::Result<()>,
    delivered: impl Fn(&F::Output) -> bool,
) -> anyhow::Result<(Ended, Outcome)> {
    let (pending, ended) = if counted {
        ksp_measured_sends(messages, send, &delivered)
    } else {
        sends(messages, send, &delivered)
    };
    flush()?;
    settle();
    let outcome = if counted {
        ksp_measured_deliveries(pending, delivered)
    } else {
        deliveries(pending, delivered)
    };
    Ok((ended, outcome))
}

/// Which sends [`send`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// The warm-up, not counted.
    WarmUp,
    /// The counted sends, callgrind counting the two measured functions: a send delivered
    /// within its first poll voids the run (the split counted is not the one described).
    Split,
    /// The counted sends, callgrind counting the whole process: the split is not read, so
    /// such a send voids nothing.
    Whole,
}

/// librdkafka's `flush` returns once the last report is taken off its queue, possibly while
/// rdkafka's polling thread is still completing it: a moment for that, not counted.
fn settle() {
    std::thread::sleep(Duration::from_millis(200));
}

/// One measurement, as `ksp-bench instructions` takes it.
#[derive(Debug, Clone, clap::Args)]
pub struct Spec {
    /// Which producer.
    #[arg(long = "producer", value_enum)]
    pub kind: Kind,
    /// Keyed over 10 000 keys (default keyless).
    #[arg(long)]
    pub keyed: bool,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 8)]
    pub partitions: i32,
    /// Messages counted.
    #[arg(long, default_value_t = 10_000)]
    pub messages: usize,
    /// Bytes of payload per message (`instructions-table` counts 100).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// For a count of the whole process (callgrind collecting from the start): a send
    /// delivered within its first poll does not fail the run, as it does when callgrind
    /// counts the two measured functions, whose split it would change.
    #[arg(long)]
    pub whole_process: bool,
}

/// Runs one measurement: warms up (2 000 messages, or 10 000 keyed: every key once), then
/// measures `messages` of `payload` bytes (the table's are 100 bytes).
pub fn run(spec: Spec, ksp_bench: &Path) -> anyhow::Result<()> {
    let Spec {
        kind,
        keyed,
        partitions,
        messages,
        payload,
        whole_process,
    } = spec;
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
            Kind::Unrouted => Sender::Smart(
                AsyncSmartProducer::builder(config)
                    .smart_enabled(false)
                    .build()?,
            ),
        })
    })?;
    let keys: Vec<String> = (0..10_000).map(|i| format!("key-{i}")).collect();
    // Connections, metadata, buffers, and (keyed) every one of the 10 000 keys once.
    let warm_up = if keyed { 10_000 } else { 2_000 };
    send(
        &runtime,
        &sender,
        &keys,
        warm_up,
        payload,
        keyed,
        Part::WarmUp,
    )?;
    let part = if whole_process {
        Part::Whole
    } else {
        Part::Split
    };
    send(&runtime, &sender, &keys, messages, payload, keyed, part)?;
    if let Sender::Smart(p) = &sender {
        runtime.block_on(p.close(Duration::from_secs(10)))?;
    }
    Ok(())
}

/// One configuration's counts: instructions per message.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    /// Partitions of the topic.
    pub partitions: i32,
    /// Keyed over 10 000 keys.
    pub keyed: bool,
    /// On the sending thread, per message, plain then smart; two runs each.
    pub caller: [[Counted; 2]; 2],
    /// On the sending thread, per message, the smart producer with routing off; two runs.
    pub unrouted: [Counted; 2],
    /// The whole producer process (every thread), plain then smart: the slope between a run
    /// of 10 000 and one of 30 000 messages, so setup and idle work cancel out.
    pub process: [f64; 2],
    /// The valgrind runs behind the row.
    pub runs: Runs,
}

/// Valgrind runs behind a [`Row`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Runs {
    /// Runs whose count the row uses.
    pub counted: usize,
    /// Runs that timing voided (a delivery report back within its send's first poll), run
    /// again and not counted.
    pub voided: usize,
}

/// The function callgrind counts, by its exact (demangled) name.
const MEASURED: [&str; 2] = [
    "ksp_bench::instructions::ksp_measured_sends",
    "ksp_bench::instructions::ksp_measured_deliveries",
];

/// Removes a file when dropped.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What callgrind counted in one run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counted {
    /// Every instruction.
    pub total: f64,
    /// Of which the heap allocator's: every call from outside it into glibc's `malloc` family,
    /// Rust's allocation shims or the counting wrapper this binary installs (for its allocation
    /// table), with all it calls.
    pub allocator: f64,
}

impl Counted {
    /// Instructions outside the allocator.
    pub fn outside_allocator(&self) -> f64 {
        self.total - self.allocator
    }

    fn per(self, messages: usize) -> Self {
        let n = messages as f64;
        Self {
            total: self.total / n,
            allocator: self.allocator / n,
        }
    }
}

/// Whether a function is the heap allocator's: glibc's `malloc` family (by its source file,
/// `malloc/`, or by name when the file is unknown), Rust's allocation shims, and the counting
/// wrapper this binary installs around glibc's `malloc`.
fn is_allocator(file: &str, function: &str) -> bool {
    const GLIBC: &[&str] = &[
        "malloc",
        "free",
        "realloc",
        "calloc",
        "posix_memalign",
        "aligned_alloc",
        "memalign",
        "__libc_malloc",
        "__libc_free",
        "__libc_realloc",
        "__libc_calloc",
        "__libc_memalign",
    ];
    file.contains("/malloc/")
        || file.contains("allocation-counter")
        || function.contains("CountingAllocator")
        || function.contains("core::alloc::global::GlobalAlloc")
        || function.contains("__rust_alloc")
        || function.contains("__rust_dealloc")
        || function.contains("__rust_realloc")
        || function.starts_with("__rg_")
        || GLIBC.contains(&function)
}

/// Reads callgrind's output format (`positions: line`, `events: Ir`): every instruction, and
/// the allocator's, as the inclusive cost of every call from outside the allocator into it (so
/// what it calls, `memset`, `memcpy`, `brk`, a lock wait, is its too).
///
/// Not the number of allocations: callgrind counts calls whether or not it is collecting, so
/// its call counts include the warm-up and the setup.
fn parse_callgrind(text: &str) -> anyhow::Result<Counted> {
    use std::collections::HashMap;
    // Names are compressed: `(id) name` the first time, `(id)` after.
    fn name(names: &mut HashMap<String, String>, spec: &str) -> String {
        let spec = spec.trim();
        match spec.strip_prefix('(').and_then(|s| s.split_once(')')) {
            Some((id, rest)) => {
                let rest = rest.trim();
                if rest.is_empty() {
                    names.get(id).cloned().unwrap_or_default()
                } else {
                    names.insert(id.to_owned(), rest.to_owned());
                    rest.to_owned()
                }
            }
            None => spec.to_owned(),
        }
    }
    let header = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
    };
    anyhow::ensure!(
        header("events:") == Some("Ir") && header("positions:").is_none_or(|p| p == "line"),
        "callgrind's output has other events or positions than read here (events: {:?}, \
         positions: {:?})",
        header("events:"),
        header("positions:")
    );
    let (mut files, mut functions) = (HashMap::new(), HashMap::new());
    let mut file = String::new();
    let mut in_allocator = false;
    let (mut callee_file, mut callee) = (None::<String>, String::new());
    // Set by a `calls=` line: whether the cost line after it (the call's inclusive cost) is
    // the allocator's.
    let mut call: Option<bool> = None;
    let mut counted = Counted::default();
    for line in text.lines() {
        if let Some(spec) = line.strip_prefix("fl=") {
            file = name(&mut files, spec);
        } else if let Some(spec) = line
            .strip_prefix("fi=")
            .or_else(|| line.strip_prefix("fe="))
        {
            name(&mut files, spec);
        } else if let Some(spec) = line
            .strip_prefix("cfi=")
            .or_else(|| line.strip_prefix("cfl="))
        {
            callee_file = Some(name(&mut files, spec));
        } else if let Some(spec) = line.strip_prefix("fn=") {
            let function = name(&mut functions, spec);
            in_allocator = is_allocator(&file, &function);
        } else if let Some(spec) = line.strip_prefix("cfn=") {
            callee = name(&mut functions, spec);
        } else if line.starts_with("calls=") {
            // A callee's file is the caller's unless a `cfi=`/`cfl=` line said otherwise.
            let into =
                !in_allocator && is_allocator(callee_file.as_deref().unwrap_or(&file), &callee);
            callee_file = None;
            call = Some(into);
        } else if line.starts_with(|c: char| c.is_ascii_digit() || "+-*".contains(c)) {
            let cost: f64 = line
                .split_whitespace()
                .nth(1)
                .map_or(Ok(0.0), str::parse)
                .map_err(|e| anyhow::anyhow!("bad cost line {line:?}: {e}"))?;
            match call.take() {
                // A call's inclusive cost: already in the callee's own lines.
                Some(into_allocator) => {
                    if into_allocator {
                        counted.allocator += cost;
                    }
                }
                None => counted.total += cost,
            }
        }
    }
    let summary = header("summary:")
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no summary in callgrind's output"))?;
    anyhow::ensure!(
        counted.total == summary,
        "callgrind's output read wrong: {} instructions in its lines, {summary} in its summary",
        counted.total
    );
    Ok(counted)
}

/// What callgrind counted in one run of `exe instructions`, and how many runs before it timing
/// voided.
fn count(
    exe: &Path,
    kind: Kind,
    keyed: bool,
    partitions: i32,
    messages: usize,
    toggled: bool,
) -> anyhow::Result<(Counted, usize)> {
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
            .args(MEASURED.map(|f| format!("--toggle-collect={f}")));
    }
    let whole_process = (!toggled).then_some("--whole-process");
    command
        .arg(exe)
        .args(["instructions", "--producer"])
        .arg(kind.name())
        .args(["--partitions", &partitions.to_string()])
        .args(["--messages", &messages.to_string()])
        .args(whole_process);
    if keyed {
        command.arg("--keyed");
    }
    let mut attempt = 1;
    loop {
        let run = command.stdin(std::process::Stdio::null()).output()?;
        if run.status.success() {
            break;
        }
        let stderr = String::from_utf8_lossy(&run.stderr);
        if stderr.contains(TIMING) && attempt < ATTEMPTS {
            // A report came back within its send's first poll: no count, run it again.
            eprintln!("timing voided run {attempt} of {ATTEMPTS}, running it again ({command:?})");
            attempt += 1;
            continue;
        }
        let tail: Vec<&str> = stderr.lines().rev().take(10).collect();
        anyhow::bail!(
            "valgrind run failed ({command:?}): {}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let counted = parse_callgrind(&std::fs::read_to_string(&out.0)?)?;
    anyhow::ensure!(
        counted.total > 0.0,
        "callgrind counted nothing: are {MEASURED:?} still the measured functions' names?"
    );
    anyhow::ensure!(
        counted.allocator > 0.0,
        "no allocator found in callgrind's output ({counted:?}): are glibc's and Rust's \
         allocator functions still named as `is_allocator` expects?"
    );
    Ok((counted, attempt - 1))
}

/// Every configuration (8 and 1 024 partitions, keyless and keyed; plain, smart, and smart
/// with routing off), or `None` when valgrind is not installed.
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
            let mut caller = [[Counted::default(); 2]; 2];
            let mut unrouted = [Counted::default(); 2];
            let mut process = [0.0; 2];
            let mut runs = Runs::default();
            let mut count = |kind, messages, toggled| {
                let (counted, voided) = count(exe, kind, keyed, partitions, messages, toggled)?;
                runs.counted += 1;
                runs.voided += voided;
                anyhow::Ok(counted)
            };
            for (i, kind) in [Kind::Plain, Kind::Smart].into_iter().enumerate() {
                for slot in &mut caller[i] {
                    *slot = count(kind, N, true)?.per(N);
                }
                let short = count(kind, N, false)?.total;
                let long = count(kind, 3 * N, false)?.total;
                process[i] = (long - short) / (2 * N) as f64;
            }
            for slot in &mut unrouted {
                *slot = count(Kind::Unrouted, N, true)?.per(N);
            }
            rows.push(Row {
                partitions,
                keyed,
                caller,
                unrouted,
                process,
                runs,
            });
        }
    }
    Ok(Some(rows))
}

impl Row {
    /// Plain then smart, each the mean of its two runs, by `figure`.
    pub fn means(&self, figure: impl Fn(&Counted) -> f64) -> [f64; 2] {
        self.caller
            .map(|runs| (figure(&runs[0]) + figure(&runs[1])) / 2.0)
    }

    /// The largest difference between a producer's two runs (plain, smart, smart with routing
    /// off), relative to their mean.
    pub fn spread(&self, figure: impl Fn(&Counted) -> f64) -> f64 {
        self.caller
            .iter()
            .chain([&self.unrouted])
            .map(|runs| {
                let (a, b) = (figure(&runs[0]), figure(&runs[1]));
                (a - b).abs() / ((a + b) / 2.0)
            })
            .fold(0.0, f64::max)
    }

    /// The smart producer with routing off, on the sending thread outside the allocator: the
    /// mean of its two runs.
    pub fn unrouted(&self) -> f64 {
        let [a, b] = self.unrouted.map(|c| c.outside_allocator());
        (a + b) / 2.0
    }

    /// What the smart producer adds on the sending thread, outside the allocator, relative to
    /// the plain one: the headline figure.
    pub fn smart_adds(&self) -> f64 {
        let [plain, smart] = self.means(Counted::outside_allocator);
        smart / plain - 1.0
    }
}

/// `a → b (+d, +p %)`: `d` is the difference of the rounded ends shown, so that the cell adds
/// up; `p` is exact.
fn change(a: f64, b: f64) -> String {
    format!(
        "{:.0} → {:.0} ({:+.0}, {:+.1} %)",
        a.round(),
        b.round(),
        b.round() - a.round(),
        (b / a - 1.0) * 100.0
    )
}

/// `lo to hi`, each with `show`, or one figure when they show the same; `–` without any.
fn range(values: impl Iterator<Item = f64>, show: impl Fn(f64) -> String) -> String {
    let Some((lo, hi)) = values.fold(None, |span, v| match span {
        None => Some((v, v)),
        Some((lo, hi)) => Some((f64::min(lo, v), f64::max(hi, v))),
    }) else {
        return "–".into();
    };
    let (lo, hi) = (show(lo), show(hi));
    if lo == hi {
        lo
    } else {
        format!("{lo} to {hi}")
    }
}

/// What the table says of its rows: what wrapping `FutureProducer` adds, and what the routing
/// adds, keyless and keyed, in instructions a message (from the table's rounded figures).
fn split(rows: &[Row]) -> String {
    let plain = |r: &Row| r.means(Counted::outside_allocator)[0];
    let smart = |r: &Row| r.means(Counted::outside_allocator)[1];
    let whole = |v: f64| format!("{v:.0}");
    let routing = |keyed: bool| {
        range(
            rows.iter()
                .filter(|r| r.keyed == keyed)
                .map(|r| smart(r).round() - r.unrouted().round()),
            whole,
        )
    };
    format!(
        "Outside the allocator, with routing off, wrapping `FutureProducer` adds {} instructions \
         a message ({}); the routing adds the rest, net of librdkafka's partitioner: {} keyless, \
         {} keyed.\n",
        range(
            rows.iter().map(|r| r.unrouted().round() - plain(r).round()),
            whole
        ),
        range(
            rows.iter().map(|r| r.unrouted() / plain(r) - 1.0),
            |v| format!("{:+.1} %", v * 100.0)
        ),
        routing(false),
        routing(true),
    )
}

/// The markdown table of [`measure`]'s rows.
pub fn table(rows: Option<&[Row]>) -> String {
    let Some(rows) = rows else {
        return "Not measured: valgrind is not installed (`apt-get install valgrind`).\n".into();
    };
    let mut md = split(rows);
    md.push_str(
        "\n| partitions | keys | sending thread, outside the allocator: plain → smart | spread | of which wrapping `FutureProducer` (smart, routing off) | sending thread, allocator included | spread | whole producer process (rough) |\n|---:|---|---|---:|---|---|---:|---|\n",
    );
    for r in rows {
        let [op, os] = r.means(Counted::outside_allocator);
        let [tp, ts] = r.means(|c| c.total);
        md.push_str(&format!(
            "| {} | {} | {} | {:.2} % | {} | {} | {:.2} % | {} |\n",
            r.partitions,
            if r.keyed { "10 000 keys" } else { "none" },
            change(op, os),
            r.spread(Counted::outside_allocator) * 100.0,
            change(op, r.unrouted()),
            change(tp, ts),
            r.spread(|c| c.total) * 100.0,
            change(r.process[0], r.process[1]),
        ));
    }
    md.push_str(
        "\n`cargo run --release -p ksp-bench -- instructions-table` (needs valgrind): callgrind \
         counts the instructions of 10 000 sends of 100-byte messages, after a warm-up not \
         counted (2 000 messages, or keyed 10 000, every key once), the broker in a child \
         process that valgrind does not trace. *Sending thread*: what the thread that calls \
         `produce`/`send` executes, in two parts: every send polled once, up to its enqueue \
         (the smart producer's queue reservation, its routing or, for the plain producer and \
         the smart one with routing off, librdkafka's partitioner, then librdkafka's enqueue), \
         then, once every delivery report is in, every \
         future polled to its end. No wake-up or executor scheduling that timing decides is \
         inside the count. The heap allocator's instructions still follow timing: glibc's \
         `malloc` costs more or less per call with the state of its heap, which librdkafka's \
         threads change as they free the messages the sending thread allocated. Hence the \
         first column, without the allocator (every call from outside it into glibc's \
         `malloc` family, Rust's allocation shims or the counting wrapper this binary installs \
         for its allocation table, with all it calls), then the total with the allocator. Two \
         runs per producer; the spread is the largest difference between a producer's two (plain, \
         smart, or smart with routing off). \
         *Of which wrapping `FutureProducer`*: the smart producer built with \
         `smart_enabled(false)`, the same `produce` without the routing (the queue reservation, \
         the guard that keeps a dropped send's report awaited, the route counter, the async \
         wrapper), against plain; the rest of the smart producer's difference is the routing, \
         net of librdkafka's partitioner, which a routed send skips by naming its partition. \
         *Whole \
         producer process*: every thread of it (librdkafka's batching, network \
         and delivery threads too), as the slope between a run of 10 000 and one of 30 000 \
         messages, so that setup cancels out. Work that follows the clock does not: under \
         valgrind a longer run takes longer, so librdkafka's timers (and, for the smart \
         producer, its lag reader's threads) stay in the slope, and a timer that fires in one \
         run and not the other moves it either way (it has come out below the sending \
         thread's own count, and the smart producer's below the plain one's): one run each, read it as rough, not as the figure. A run fails \
         rather than count something else when a send is refused, a future has not ended once \
         every report is in, or a message is lost. A run in which a send's report came back \
         within that send's first poll (valgrind let librdkafka's threads send it and take its \
         report between its enqueue and the wait: timing, not code) counts nothing for the \
         sending thread and is run again, ",
    );
    let counted: usize = rows.iter().map(|r| r.runs.counted).sum();
    let voided: usize = rows.iter().map(|r| r.runs.voided).sum();
    md.push_str(&format!(
        "up to {ATTEMPTS} times in all. This table counted {counted} runs; {voided} other{} \
         voided so.\n",
        if voided == 1 { " was" } else { "s were" }
    ));
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(total: f64, allocator: f64) -> Counted {
        Counted { total, allocator }
    }

    #[test]
    fn the_table_shows_what_smart_adds_and_the_spread() {
        let row = Row {
            partitions: 8,
            keyed: false,
            caller: [
                [counted(1300.0, 300.0), counted(1330.0, 320.0)],
                [counted(1400.0, 300.0), counted(1400.0, 300.0)],
            ],
            // Its runs differ most: the spread is theirs.
            unrouted: [counted(1330.0, 290.0), counted(1370.0, 300.0)],
            process: [2000.0, 2050.0],
            runs: Runs {
                counted: 8,
                voided: 1,
            },
        };
        // Means that do not round to their difference: plain 1005.4, routing off 1060.6,
        // smart 1200.4. A cell's difference is that of its rounded ends (1061 - 1005 = 56,
        // where 55.2 would show 55), and so is the split's (1200 - 1061 = 139, not 140).
        let keyed = Row {
            keyed: true,
            caller: [
                [counted(1300.0, 300.0), counted(1330.8, 320.0)],
                [counted(1500.4, 300.0); 2],
            ],
            unrouted: [counted(1360.6, 300.0); 2],
            ..row
        };
        let md = table(Some(&[row, keyed]));
        assert!(
            md.contains(
                "| 8 | none | 1005 → 1100 (+95, +9.5 %) | 2.84 % | 1005 → 1055 (+50, +5.0 %) | 1315 → 1400 (+85, +6.5 %) | 2.96 % | 2000 → 2050 (+50, +2.5 %) |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| 8 | 10 000 keys | 1005 → 1200 (+195, +19.4 %) | 1.07 % | 1005 → 1061 (+56, +5.5 %) |"),
            "{md}"
        );
        assert!(
            md.contains(
                "wrapping `FutureProducer` adds 50 to 56 instructions a message (+5.0 % to \
                 +5.5 %); the routing adds the rest, net of librdkafka's partitioner: 45 keyless, \
                 139 keyed."
            ),
            "{md}"
        );
        assert!(
            (row.smart_adds() - 0.0945).abs() < 1e-3,
            "{}",
            row.smart_adds()
        );
        assert!(
            md.contains(
                "up to 3 times in all. This table counted 16 runs; 2 others were voided so."
            ),
            "{md}"
        );
        assert!(table(None).contains("valgrind is not installed"));
    }

    #[test]
    fn callgrind_output_is_split_into_the_allocator_and_the_rest() {
        // Names compressed after their first use. A call's inclusive cost (the line after
        // `calls=`) is not counted again in the total; a call from outside the allocator into
        // it is the allocator's, with what it calls (here `memset`), and a call from inside it
        // is not counted twice.
        let out = "\
version: 1
positions: line
events: Ir
summary: 800

ob=(1) /bin/x
fl=(1) ???
fn=(1) ksp_bench::instructions::ksp_measured_sends
0 300
cfl=(2) ./malloc/./malloc/malloc.c
cfn=(2) malloc
calls=4 0
0 200
+2 100
cfn=(5) memcpy
calls=1 0
0 20
fl=(2)
fn=(2)
0 150
cfn=(3) _int_malloc
calls=4 0
0 50
fn=(3)
0 30
cfl=(4) ./string/memset.S
cfn=(4) memset
calls=4 0
0 20
fl=(4)
fn=(4)
0 20
fl=(1)
fn=(5)
0 20
fn=(6) ksp_bench::instructions::deliveries
0 80
cfn=(7) <allocation_counter::allocator::CountingAllocator as core::alloc::global::GlobalAlloc>::dealloc
calls=2 0
0 100
fn=(7)
0 100
";
        assert_eq!(parse_callgrind(out).unwrap(), counted(800.0, 300.0));
        let wrong = out.replace("summary: 800", "summary: 799");
        assert!(parse_callgrind(&wrong).is_err());
        let other_events = out.replace("events: Ir", "events: Ir Dr");
        assert!(parse_callgrind(&other_events).is_err());
        let by_instruction = out.replace("positions: line", "positions: instr line");
        assert!(parse_callgrind(&by_instruction).is_err());
    }
}
