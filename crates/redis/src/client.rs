//! The Redis client: fred with bounded commands, reconnection forever, and the breaker.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::config::{Options, ReconnectPolicy};
use tokio_util::task::AbortOnDropHandle;

use crate::breaker::{BreakerState, CircuitBreaker};
use crate::config::RedisConfig;
use crate::error::{L2Error, L2Result};

/// A connected (or reconnecting) Redis client shared by everything of one producer.
///
/// Every command carries `command_timeout` and fails fast while the connection is down;
/// every command first asks the circuit breaker. Built with [`RedisClient::connect`], which
/// does not wait for the server: a producer starts even while Redis is down.
#[derive(Clone)]
pub struct RedisClient {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// fred's connection task (see [`keep_connecting`]): it reconnects forever until `quit`,
    /// so it is aborted when the last clone of this client goes (or on `quit`), closing the
    /// connection.
    connection: AbortOnDropHandle<()>,
    config: RedisConfig,
    /// Fails fast while disconnected.
    options: Options,
    /// Waits (up to the timeout) for the connection: used until the first success, so the
    /// first commands of a new client are not lost to the connection handshake.
    first_options: Options,
    ever_connected: AtomicBool,
    /// Set by `quit`: commands fail at once, without asking fred or the breaker.
    closed: AtomicBool,
    breaker: CircuitBreaker,
    calls: AtomicU64,
    failures: AtomicU64,
}

/// Fails with [`L2Error::NoRuntime`] outside a Tokio runtime, where spawning a task panics.
pub(crate) fn in_runtime() -> L2Result<()> {
    tokio::runtime::Handle::try_current()
        .map(drop)
        .map_err(|_| L2Error::NoRuntime)
}

impl RedisClient {
    /// Starts connecting to `config.url` in the background.
    ///
    /// # Errors
    ///
    /// [`L2Error::Config`] for a bad setting, [`L2Error::Redis`] when fred refuses the
    /// configuration, [`L2Error::NoRuntime`] outside a Tokio runtime.
    pub fn connect(config: &RedisConfig) -> L2Result<Self> {
        config.validate()?;
        in_runtime()?;
        let client = builder(config)?.build().map_err(L2Error::Redis)?;
        // Connect in the background: the first connection is retried until it succeeds, later
        // ones by fred's reconnect policy, forever; commands fail fast while the connection is
        // down (after the first success). The task would run until `quit`: its handle aborts it
        // when the client goes.
        let connection =
            AbortOnDropHandle::new(keep_connecting(client.clone(), config.reconnect_max_delay));
        let options = Options {
            timeout: Some(config.command_timeout),
            fail_fast: true,
            max_attempts: Some(1),
            ..Options::default()
        };
        let first_options = Options {
            fail_fast: false,
            ..options.clone()
        };
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                connection,
                first_options,
                ever_connected: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                breaker: CircuitBreaker::new(config.breaker)?,
                config: config.clone(),
                options,
                calls: AtomicU64::new(0),
                failures: AtomicU64::new(0),
            }),
        })
    }

    /// A subscriber connection to the same server, with the same policies.
    pub(crate) fn subscriber(&self) -> L2Result<fred::clients::SubscriberClient> {
        builder(&self.inner.config)?
            .build_subscriber_client()
            .map_err(L2Error::Redis)
    }

    /// Runs one command through the breaker with the command timeout.
    pub(crate) async fn call<T, F, Fut>(&self, command: F) -> L2Result<T>
    where
        F: FnOnce(fred::clients::WithOptions<Client>) -> Fut,
        Fut: Future<Output = Result<T, fred::error::Error>>,
    {
        self.call_within(self.inner.config.command_timeout, command)
            .await
    }

    /// Runs one command through the breaker, giving up after `within` (at most the command
    /// timeout): for callers with a budget of their own.
    ///
    /// A call abandoned by its caller says nothing about Redis, unless it had already waited a
    /// whole command timeout: then it counts as failed, so that a Redis that does not answer
    /// still opens the breaker when every caller gives up first.
    pub(crate) async fn call_within<T, F, Fut>(&self, within: Duration, command: F) -> L2Result<T>
    where
        F: FnOnce(fred::clients::WithOptions<Client>) -> Fut,
        Fut: Future<Output = Result<T, fred::error::Error>>,
    {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(L2Error::Redis(fred::error::Error::new(
                fred::error::ErrorKind::Canceled,
                "the redis client was closed",
            )));
        }
        let timeout = self.inner.config.command_timeout;
        let Some(permit) = self
            .inner
            .breaker
            .try_call_abandoned_after(Instant::now() + timeout)
        else {
            return Err(L2Error::BreakerOpen);
        };
        self.inner.calls.fetch_add(1, Ordering::Relaxed);
        let options = if self.inner.ever_connected.load(Ordering::Relaxed) {
            &self.inner.options
        } else {
            &self.inner.first_options
        };
        let client = self.inner.client.with_options(options);
        // fred enforces the command timeout; this outer one also covers the time spent before
        // fred sees the command, and the caller's shorter budget.
        let outcome = tokio::time::timeout(timeout.min(within), command(client))
            .await
            .unwrap_or_else(|_| {
                Err(fred::error::Error::new(
                    fred::error::ErrorKind::Timeout,
                    "command timeout",
                ))
            });
        permit.record(outcome.is_ok());
        if outcome.is_ok() {
            self.inner.ever_connected.store(true, Ordering::Relaxed);
        } else {
            self.inner.failures.fetch_add(1, Ordering::Relaxed);
        }
        outcome.map_err(L2Error::Redis)
    }

    /// The settings.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// A key under the configured prefix.
    pub(crate) fn key(&self, parts: &[&str]) -> String {
        let mut key = self.inner.config.key_prefix.clone();
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        key
    }

    /// Where the breaker stands.
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.breaker.state()
    }

    /// The breaker itself.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.inner.breaker
    }

    /// Commands sent and commands failed so far (refused by the breaker not included).
    pub fn call_counts(&self) -> (u64, u64) {
        (
            self.inner.calls.load(Ordering::Relaxed),
            self.inner.failures.load(Ordering::Relaxed),
        )
    }

    /// Closes the connection (`QUIT`, waiting at most `command_timeout`) and stops
    /// reconnecting; every clone's commands fail from then on. Errors are ignored: the
    /// connection is going away either way. Dropping the last clone closes it too.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future may leave the connection open until the last clone is
    /// dropped.
    pub async fn quit(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ =
            tokio::time::timeout(self.inner.config.command_timeout, self.inner.client.quit()).await;
        self.inner.connection.abort();
    }
}

/// fred's connection task, started again whenever it ends with an error: in practice while
/// the first connection fails.
///
/// fred reconnects by its policy only after a first success: with its `fail_fast` (on by
/// default, so that the first attempt is made at once) a client whose first connection fails
/// has its connection task end, and nothing reconnects (and the commands waiting for the
/// first connection stay queued for good). Ends when fred's task ends otherwise (`quit`).
/// Aborting it aborts fred's task.
pub(crate) fn keep_connecting<C>(client: C, max_delay: Duration) -> tokio::task::JoinHandle<()>
where
    C: ClientLike + Send + 'static,
{
    let cap = max_delay.max(Duration::from_millis(1));
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(50).min(cap);
        let mut failures = 0u64;
        loop {
            // Held so that aborting this task (or dropping its handle) stops fred's too.
            match AbortOnDropHandle::new(client.connect()).await {
                Ok(Err(e)) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(error = %e, "cannot connect to redis; trying again until it answers");
                    } else {
                        tracing::debug!(error = %e, ?delay, failures, "cannot connect to redis; trying again");
                    }
                }
                // Ended by `quit`, or fred's task panicked.
                Ok(Ok(())) | Err(_) => return,
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(cap);
        }
    })
}

fn builder(config: &RedisConfig) -> L2Result<Builder> {
    let mut builder = Builder::from_config(config.fred_config()?);
    let max_delay = u32::try_from(config.reconnect_max_delay.as_millis()).unwrap_or(u32::MAX);
    builder
        // fred's default is never to reconnect.
        .set_policy(ReconnectPolicy::new_exponential(0, 50, max_delay, 2))
        .with_performance_config(|p| {
            // fred's default is no timeout at all.
            p.default_command_timeout = config.command_timeout;
        })
        .with_connection_config(|c| {
            c.connection_timeout = config.connect_timeout;
            c.internal_command_timeout = config.command_timeout.max(config.connect_timeout);
            c.max_command_attempts = 1;
            c.reconnect_on_auth_error = true;
        });
    Ok(builder)
}

impl fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisClient")
            .field("url", &self.inner.config.redacted_url())
            .field("breaker", &self.inner.breaker)
            .finish_non_exhaustive()
    }
}
