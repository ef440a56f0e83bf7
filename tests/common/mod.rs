//! Shared helpers of the integration tests.
// Each test file uses a part of these helpers; `pub` is for the test files, not a library.
#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test file uses some of these helpers"
)]

use std::future::Future;
use std::time::Duration;

/// Routes the library's and librdkafka's logs to the test output (`RUST_LOG` overrides the
/// default filter) and keeps a copy for [`capture_logs`].
pub fn init_tracing() {
    capture_logs();
}

/// librdkafka's threads in this process (it names them `rdk:…`): each client has a few, so a
/// client left behind shows here. Counts every test's in the process: right under nextest, which
/// runs each test in a process of its own (the test command's runner).
pub fn librdkafka_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("rdk:"))
        .count()
}

/// Polls `check` every 50 ms until it returns `Some`, at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Log lines captured by [`capture_logs`].
#[derive(Clone, Default)]
pub struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Logs {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        // Through the macro, so that the test harness captures it with the test's output.
        eprint!("{}", String::from_utf8_lossy(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures this process's log lines (debug for this library, warn for the rest) so a test can
/// assert on them. Under nextest every test is its own process; under `cargo test` the tests of
/// one file share the capture, so match on something unique to the test.
pub fn capture_logs() -> Logs {
    static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let writer = logs.clone();
        let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            "warn,ksp_monitor=debug,ksp_producer=debug,librdkafka=debug".into()
        });
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        logs
    })
    .clone()
}

/// An embedded cluster of `brokers` brokers with `topic` (8 partitions) on which `group` is
/// 5000 messages behind on partition `slow` and caught up elsewhere.
pub async fn cluster_with_slow_partition(
    brokers: i32,
    topic: &str,
    group: &str,
    slow: usize,
) -> ksp_testkit::MockKafka {
    let kafka = ksp_testkit::MockKafka::start(brokers).unwrap();
    ksp_testkit::LagScenario::new(topic, 8)
        .lag(slow, 5000)
        .create(&kafka, group)
        .await
        .unwrap();
    kafka
}
