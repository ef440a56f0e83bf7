//! [`MonitorHandle`]: controls a running monitor and reports on it.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use ksp_core::HealthFeed;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::validate_topic;
use crate::error::{MonitorError, MonitorResult, panic_message};

/// Whether the monitor task runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MonitorStatus {
    /// Collecting.
    Running = 0,
    /// Shut down, cancelled, or every handle was dropped.
    Stopped = 1,
    /// The supervisor itself panicked (a bug: panics of the monitor's stages are contained, and
    /// a monitor that panics anyway is restarted). The feed was emptied, so routing falls
    /// back.
    Panicked = 2,
    /// The monitor panicked and waits to be restarted (see [`MonitorStats::restarts`]); the
    /// feed is empty meanwhile, so routing falls back.
    Restarting = 3,
}

impl MonitorStatus {
    fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Running,
            2 => Self::Panicked,
            3 => Self::Restarting,
            _ => Self::Stopped,
        }
    }
}

/// Counters and the last outcome of a monitor, for health checks and dashboards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MonitorStats {
    /// Collections attempted.
    pub rounds: u64,
    /// Collections that failed (error or timeout).
    pub failures: u64,
    /// Failures since the last success.
    pub consecutive_failures: u64,
    /// The last failure, rendered with its causes.
    pub last_error: Option<String>,
    /// When the last successful collection finished.
    pub last_success: Option<SystemTime>,
    /// How long the last collection took.
    pub last_duration: Option<Duration>,
    /// Version of the snapshot published last.
    pub published_version: u64,
    /// Times the supervisor restarted the monitor after a panic.
    pub restarts: u64,
    /// The message of the last panic the supervisor caught.
    pub last_panic: Option<String>,
}

/// What the task and its handles share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) stats: Mutex<MonitorStats>,
    status: AtomicU8,
}

impl Shared {
    pub(crate) fn new() -> Self {
        Self {
            stats: Mutex::new(MonitorStats::default()),
            status: AtomicU8::new(MonitorStatus::Running as u8),
        }
    }

    pub(crate) fn stats(&self) -> MutexGuard<'_, MonitorStats> {
        self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn status(&self) -> MonitorStatus {
        MonitorStatus::from_u8(self.status.load(Ordering::SeqCst))
    }

    pub(crate) fn set_status(&self, status: MonitorStatus) {
        self.status.store(status as u8, Ordering::SeqCst);
    }
}

/// A request to the monitor task.
pub(crate) enum Command {
    Refresh(oneshot::Sender<MonitorResult<u64>>),
    Watch(String, oneshot::Sender<MonitorResult<u64>>),
}

/// Controls a running [`HealthMonitor`](crate::HealthMonitor). Cheap to clone; the monitor
/// stops when the last clone is dropped.
#[derive(Clone)]
pub struct MonitorHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    commands: mpsc::Sender<Command>,
    feed: HealthFeed,
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
    cancel: CancellationToken,
    _stop_on_drop: DropGuard,
}

impl MonitorHandle {
    pub(crate) fn new(
        commands: mpsc::Sender<Command>,
        feed: HealthFeed,
        shared: Arc<Shared>,
        task: JoinHandle<()>,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(HandleInner {
                commands,
                feed,
                shared,
                task: Mutex::new(Some(task)),
                _stop_on_drop: cancel.clone().drop_guard(),
                cancel,
            }),
        }
    }

    /// The health feed this monitor publishes to.
    pub fn feed(&self) -> HealthFeed {
        self.inner.feed.clone()
    }

    /// Runs a collection that starts after this call (right away, or once the one in
    /// progress ends) and returns the version of the snapshot it published. Requests that
    /// arrive while a collection runs share the next one.
    ///
    /// # Errors
    ///
    /// [`MonitorError::Collect`] when the collection failed (the previous health is kept),
    /// [`MonitorError::Stopped`] when the monitor has stopped, [`MonitorError::Panicked`]
    /// when it panicked before answering (its supervisor restarts it).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: if the future is dropped the collection still happens, its result is just
    /// not reported.
    pub async fn refresh_now(&self) -> MonitorResult<u64> {
        let (reply, result) = oneshot::channel();
        self.send(Command::Refresh(reply)).await?;
        result.await.map_err(|_| self.gone())?
    }

    /// Adds `topic` to the watched topics and collects right away (as
    /// [`refresh_now`](Self::refresh_now)). Watching a topic twice is not an error.
    ///
    /// # Errors
    ///
    /// [`MonitorError::Config`] for an invalid topic name, then as
    /// [`refresh_now`](Self::refresh_now).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe in the same way as [`refresh_now`](Self::refresh_now): once sent, the topic
    /// is added even if the future is dropped.
    pub async fn watch_topic(&self, topic: impl Into<String>) -> MonitorResult<u64> {
        let topic = topic.into();
        validate_topic(&topic)?;
        let (reply, result) = oneshot::channel();
        self.send(Command::Watch(topic, reply)).await?;
        result.await.map_err(|_| self.gone())?
    }

    async fn send(&self, command: Command) -> MonitorResult<()> {
        self.inner
            .commands
            .send(command)
            .await
            .map_err(|_| self.gone())
    }

    /// Why a request got no answer.
    fn gone(&self) -> MonitorError {
        match self.status() {
            MonitorStatus::Running | MonitorStatus::Restarting | MonitorStatus::Panicked => {
                let panic = self.inner.shared.stats().last_panic.clone();
                panic.map_or(MonitorError::Stopped, MonitorError::Panicked)
            }
            MonitorStatus::Stopped => MonitorError::Stopped,
        }
    }

    /// Counters and the last outcome.
    pub fn stats(&self) -> MonitorStats {
        self.inner.shared.stats().clone()
    }

    /// Whether the monitor task is running (not stopped, not waiting to be restarted).
    pub fn is_running(&self) -> bool {
        self.status() == MonitorStatus::Running
    }

    /// Whether the task runs, waits to be restarted, was stopped, or panicked for good.
    pub fn status(&self) -> MonitorStatus {
        self.inner.shared.status()
    }

    /// Stops the monitor and waits for its task to end. A collection in progress is abandoned
    /// (its blocking I/O, if any, finishes in the background within its own timeout). The feed
    /// is left empty, so routing falls back. Calling it again returns `Ok` at once.
    ///
    /// # Errors
    ///
    /// [`MonitorError::Panicked`] if the supervisor task itself had panicked.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: the monitor is stopped as soon as this is first polled; dropping the future
    /// only skips waiting for the task to end.
    pub async fn shutdown(&self) -> MonitorResult<()> {
        self.inner.cancel.cancel();
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match task {
            Some(task) => task.await.map_err(|e| match e.try_into_panic() {
                Ok(panic) => MonitorError::Panicked(panic_message(panic.as_ref())),
                Err(_) => MonitorError::Stopped,
            }),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for MonitorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MonitorHandle")
            .field("status", &self.status())
            .field("feed", &self.inner.feed)
            .finish()
    }
}
