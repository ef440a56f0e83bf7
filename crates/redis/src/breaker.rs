//! A circuit breaker in front of Redis: while Redis fails, stop asking it.
//!
//! The crates that exist (`failsafe`, `recloser`) either let every call through while
//! half-open or count consecutive failures rather than a failure rate over a window; the rule
//! we want (seed 003) is small enough to own and test completely:
//!
//! * **closed**: calls go through; the outcomes of the last `window` are counted. When at least
//!   `min_calls` were made and at least `failure_rate` of them failed, the breaker opens; so
//!   it does after `min_calls` failures in a row, so that a long run of successes in the window
//!   does not keep a freshly dead server on the send path for many timeouts.
//! * **open**: every call fails at once, without touching the network, for `cool_down`.
//! * **half-open**: after the cool-down exactly one call (the probe) goes through; the others
//!   still fail fast. The probe's success closes the breaker (with a fresh window), its failure
//!   opens it for another cool-down.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use ksp_core::ConfigError;
use serde::{Deserialize, Serialize};

/// When the breaker opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BreakerConfig {
    /// Fraction of failed calls over `window` that opens the breaker. Default 0.5.
    pub failure_rate: f64,
    /// Calls needed in the window before the rate counts. Default 5.
    pub min_calls: u32,
    /// How far back calls are counted. Default 10 s.
    #[serde(with = "ksp_core::serde_duration")]
    pub window: Duration,
    /// How long the breaker stays open before one probe is let through. Default 5 s.
    #[serde(with = "ksp_core::serde_duration")]
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_rate: 0.5,
            min_calls: 5,
            window: Duration::from_secs(10),
            cool_down: Duration::from_secs(5),
        }
    }
}

impl BreakerConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.failure_rate > 0.0 && self.failure_rate <= 1.0) {
            return Err(ConfigError::new(
                "redis.breaker.failure_rate",
                self.failure_rate,
                "a fraction in (0, 1]",
            ));
        }
        if self.min_calls == 0 || self.min_calls > 1_000_000 {
            return Err(ConfigError::new(
                "redis.breaker.min_calls",
                self.min_calls,
                "between 1 and 1000000",
            ));
        }
        let (min, max) = (Duration::from_millis(10), Duration::from_secs(3600));
        if self.window < min || self.window > max {
            return Err(ConfigError::duration(
                "redis.breaker.window",
                self.window,
                format!("a duration in [{min:?}, {max:?}]"),
            ));
        }
        if self.cool_down < min || self.cool_down > max {
            return Err(ConfigError::duration(
                "redis.breaker.cool_down",
                self.cool_down,
                format!("a duration in [{min:?}, {max:?}]"),
            ));
        }
        Ok(())
    }
}

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls fail fast.
    Open,
    /// One probe is allowed (or in flight); the other calls fail fast.
    HalfOpen,
}

/// Buckets the window is split into: outcomes age out a tenth of the window at a time.
const BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which slice of time (in bucket widths since the breaker was made) this counts.
    epoch: u64,
    calls: u32,
    failures: u32,
}

#[derive(Debug)]
enum State {
    Closed {
        buckets: [Bucket; BUCKETS],
        in_a_row: u32,
    },
    Open {
        until: Instant,
    },
    HalfOpen {
        probing: bool,
    },
}

/// The breaker. Cheap to consult: one uncontended mutex per Redis call (never per message).
pub struct CircuitBreaker {
    config: BreakerConfig,
    origin: Instant,
    state: Mutex<State>,
    opened: AtomicU64,
    rejected: AtomicU64,
}

/// Permission for one call; report how it went with [`Permit::record`]. A permit dropped
/// without a report (the caller's future was cancelled) says nothing about Redis (it counts
/// neither way, and an abandoned probe lets the next call probe instead), unless it was
/// dropped past its [`try_call_abandoned_after`](CircuitBreaker::try_call_abandoned_after)
/// deadline: a call that waited that long counts as failed.
#[must_use = "report the outcome with `record`"]
#[derive(Debug)]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    done: bool,
    failed_after: Option<Instant>,
}

impl Permit<'_> {
    /// Reports the call's outcome.
    pub fn record(mut self, ok: bool) {
        self.done = true;
        self.breaker.on_outcome(self.probe, ok, Instant::now());
    }
}

impl Drop for CircuitBreaker {
    fn drop(&mut self) {
        // An open (or half-open) breaker takes back its share of the process's gauge.
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        if !matches!(state, State::Closed { .. }) {
            metrics::gauge!("ksp_redis_breaker_open").decrement(1.0);
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let now = Instant::now();
        if self.failed_after.is_some_and(|deadline| now >= deadline) {
            self.breaker.on_outcome(self.probe, false, now);
        } else if self.probe {
            self.breaker.abandon_probe();
        }
    }
}

impl CircuitBreaker {
    /// A closed breaker.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setting [`BreakerConfig::validate`] refuses.
    pub fn new(config: BreakerConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        // The series exist from the start, so alert rules see the first opening. The gauge
        // counts the open breakers of the process: each breaker adds 1 while it is open (and
        // takes it back when it closes or is dropped), so producers do not overwrite each other.
        metrics::gauge!("ksp_redis_breaker_open").increment(0.0);
        metrics::counter!("ksp_redis_breaker_opened_total").increment(0);
        Ok(Self {
            config,
            origin: Instant::now(),
            state: Mutex::new(State::Closed {
                buckets: [Bucket::default(); BUCKETS],
                in_a_row: 0,
            }),
            opened: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        })
    }

    /// Permission to call, or `None` to fail fast.
    pub fn try_call(&self) -> Option<Permit<'_>> {
        self.try_call_at(Instant::now())
    }

    /// Permission to call, whose abandonment counts as a failure from `deadline` on (the
    /// command's timeout), or `None` to fail fast.
    pub fn try_call_abandoned_after(&self, deadline: Instant) -> Option<Permit<'_>> {
        let mut permit = self.try_call_at(Instant::now())?;
        permit.failed_after = Some(deadline);
        Some(permit)
    }

    fn try_call_at(&self, now: Instant) -> Option<Permit<'_>> {
        let mut state = self.lock();
        let probe = match &mut *state {
            State::Closed { .. } => false,
            State::Open { until } if now >= *until => {
                *state = State::HalfOpen { probing: true };
                true
            }
            State::HalfOpen { probing } if !*probing => {
                *probing = true;
                true
            }
            State::Open { .. } | State::HalfOpen { .. } => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        Some(Permit {
            breaker: self,
            probe,
            done: false,
            failed_after: None,
        })
    }

    /// A probe whose caller went away: the next call may probe.
    fn abandon_probe(&self) {
        if let State::HalfOpen { probing } = &mut *self.lock() {
            *probing = false;
        }
    }

    fn on_outcome(&self, probe: bool, ok: bool, now: Instant) {
        let mut state = self.lock();
        match &mut *state {
            State::HalfOpen { .. } if probe => {
                if ok {
                    metrics::gauge!("ksp_redis_breaker_open").decrement(1.0);
                    tracing::info!("redis is answering again: circuit breaker closed");
                    *state = State::Closed {
                        buckets: [Bucket::default(); BUCKETS],
                        in_a_row: 0,
                    };
                } else {
                    *state = State::Open {
                        until: now + self.config.cool_down,
                    };
                }
            }
            State::Closed { buckets, in_a_row } => {
                *in_a_row = if ok { 0 } else { *in_a_row + 1 };
                let in_a_row = *in_a_row;
                let epoch = self.epoch(now);
                let bucket = &mut buckets[(epoch % BUCKETS as u64) as usize];
                if bucket.epoch != epoch {
                    *bucket = Bucket {
                        epoch,
                        ..Bucket::default()
                    };
                }
                bucket.calls += 1;
                bucket.failures += u32::from(!ok);
                let (calls, failures) = buckets
                    .iter()
                    .filter(|b| b.epoch + BUCKETS as u64 > epoch)
                    .fold((0u32, 0u32), |(c, f), b| (c + b.calls, f + b.failures));
                let rate_exceeded = calls >= self.config.min_calls
                    && f64::from(failures) >= self.config.failure_rate * f64::from(calls);
                if !ok && (rate_exceeded || in_a_row >= self.config.min_calls) {
                    tracing::warn!(
                        calls,
                        failures,
                        cool_down = ?self.config.cool_down,
                        "redis keeps failing: circuit breaker open, carrying on without it"
                    );
                    self.opened.fetch_add(1, Ordering::Relaxed);
                    metrics::gauge!("ksp_redis_breaker_open").increment(1.0);
                    metrics::counter!("ksp_redis_breaker_opened_total").increment(1);
                    *state = State::Open {
                        until: now + self.config.cool_down,
                    };
                }
            }
            // A call let through before the breaker opened finished late: it changes nothing.
            State::Open { .. } | State::HalfOpen { .. } => {}
        }
    }

    fn epoch(&self, now: Instant) -> u64 {
        let width = (self.config.window / BUCKETS as u32).max(Duration::from_micros(1));
        (now.saturating_duration_since(self.origin).as_nanos() / width.as_nanos()) as u64
    }

    /// The current state (an open breaker whose cool-down ended reports half-open).
    pub fn state(&self) -> BreakerState {
        match &*self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if Instant::now() >= *until => BreakerState::HalfOpen,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// How many times the breaker opened.
    pub fn times_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Calls refused while open.
    pub fn rejected_calls(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is valid after any panic (every update is a single assignment).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("state", &self.state())
            .field("times_opened", &self.times_opened())
            .field("config", &self.config)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            failure_rate: 0.5,
            min_calls: 4,
            window: Duration::from_secs(10),
            cool_down: Duration::from_secs(5),
        }
    }

    fn call(b: &CircuitBreaker, now: Instant, ok: bool) -> bool {
        match b.try_call_at(now) {
            Some(mut p) => {
                p.done = true;
                b.on_outcome(p.probe, ok, now);
                true
            }
            None => false,
        }
    }

    /// Bug: a breaker built from settings `validate` refuses panicked once it opened
    /// (`Instant + Duration::MAX`).
    #[test]
    fn a_breaker_from_invalid_settings_is_refused_not_a_panic() {
        let mut c = config();
        c.cool_down = Duration::MAX;
        let Err(err) = CircuitBreaker::new(c) else {
            panic!("accepted")
        };
        assert_eq!(err.setting, "redis.breaker.cool_down");
        let mut c = config();
        c.window = Duration::ZERO;
        let Err(err) = CircuitBreaker::new(c) else {
            panic!("accepted")
        };
        assert_eq!(err.setting, "redis.breaker.window");
    }

    #[test]
    fn stays_closed_below_min_calls_and_below_the_rate() {
        let b = CircuitBreaker::new(config()).unwrap();
        let t = b.origin;
        for _ in 0..3 {
            assert!(call(&b, t, false));
        }
        // 3 failures of 3 calls: under min_calls.
        assert_eq!(b.state(), BreakerState::Closed);
        let b = CircuitBreaker::new(config()).unwrap();
        for i in 0..100 {
            // One failure in three: under the rate.
            assert!(call(&b, t, i % 3 != 2));
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn opens_at_the_rate_fails_fast_then_probes_once() {
        let b = CircuitBreaker::new(config()).unwrap();
        let t = b.origin;
        assert!(call(&b, t, true));
        assert!(call(&b, t, true));
        assert!(call(&b, t, false));
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(call(&b, t, false)); // 2 of 4 failed: open.
        assert_eq!(b.times_opened(), 1);
        assert!(!call(&b, t + Duration::from_secs(1), true));
        assert_eq!(b.rejected_calls(), 1);
        // After the cool-down: exactly one probe.
        let later = t + Duration::from_secs(5);
        let probe = b.try_call_at(later).expect("the probe");
        assert!(
            b.try_call_at(later).is_none(),
            "a second call while probing"
        );
        // An abandoned probe says nothing about Redis: the next call probes instead.
        drop(probe);
        let probe = b.try_call_at(later).expect("a new probe");
        probe.record(false);
        assert!(
            b.try_call_at(later).is_none(),
            "a failed probe opens it again"
        );
        let much_later = later + Duration::from_secs(5);
        assert!(call(&b, much_later, true));
        assert_eq!(b.state(), BreakerState::Closed);
    }

    /// Regression: a permit dropped without a report counted as a failure, so five `produce`
    /// futures cancelled while their key's first move was being agreed opened the breaker
    /// although Redis answered fine.
    /// Regression: a breaker created while another one of the process was open set
    /// `ksp_redis_breaker_open` to 0, and it stayed 0 while the first stayed open.
    #[test]
    fn a_new_breaker_does_not_hide_an_open_one_from_the_gauge() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // The gauge as a scrape reads it.
        let gauge = || {
            handle.render().lines().find_map(|l| {
                l.strip_prefix("ksp_redis_breaker_open ")
                    .and_then(|v| v.parse::<f64>().ok())
            })
        };
        metrics::with_local_recorder(&recorder, || {
            let first = CircuitBreaker::new(config()).unwrap();
            let t = first.origin;
            for _ in 0..4 {
                call(&first, t, false);
            }
            assert_eq!(first.state(), BreakerState::Open);
            assert_eq!(gauge(), Some(1.0));
            let second = CircuitBreaker::new(config()).unwrap();
            assert_eq!(gauge(), Some(1.0), "the first breaker is still open");
            for _ in 0..4 {
                call(&second, t, false);
            }
            assert_eq!(gauge(), Some(2.0));
            // A failed probe keeps it open; a good one closes it.
            let later = t + Duration::from_secs(5);
            assert!(call(&second, later, false));
            assert_eq!(gauge(), Some(2.0));
            assert!(call(&second, later + Duration::from_secs(5), true));
            assert_eq!(gauge(), Some(1.0));
            drop(second);
            assert_eq!(gauge(), Some(1.0));
            drop(first);
            assert_eq!(
                gauge(),
                Some(0.0),
                "an open breaker dropped takes its 1 back"
            );
        });
    }

    #[test]
    fn cancelled_calls_do_not_open_the_breaker() {
        let b = CircuitBreaker::new(config()).unwrap();
        for _ in 0..50 {
            drop(b.try_call().expect("closed"));
        }
        let later = Instant::now() + Duration::from_secs(60);
        for _ in 0..50 {
            drop(b.try_call_abandoned_after(later).expect("closed"));
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.times_opened(), 0);
    }

    /// But a Redis that hangs opens it even when every caller gives up before the command
    /// timeout would: a call abandoned after its deadline counts as failed.
    #[test]
    fn calls_abandoned_past_their_deadline_open_the_breaker() {
        let b = CircuitBreaker::new(config()).unwrap();
        for _ in 0..4 {
            drop(b.try_call_abandoned_after(Instant::now()).expect("closed"));
        }
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn opens_after_min_calls_failures_in_a_row_despite_earlier_successes() {
        let b = CircuitBreaker::new(config()).unwrap();
        let t = b.origin;
        for _ in 0..1000 {
            assert!(call(&b, t, true));
        }
        for _ in 0..3 {
            assert!(call(&b, t, false));
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(call(&b, t, false));
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn old_failures_age_out_of_the_window() {
        let b = CircuitBreaker::new(config()).unwrap();
        let t = b.origin;
        for _ in 0..3 {
            assert!(call(&b, t, false));
        }
        // Eleven seconds on, those three no longer count; if they did, 4 failures of 6 calls
        // would open it now.
        let later = t + Duration::from_secs(11);
        assert!(call(&b, later, true));
        assert!(call(&b, later, true));
        assert!(call(&b, later, false));
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn bad_settings_are_named() {
        let mut c = config();
        c.failure_rate = 0.0;
        assert_eq!(
            c.validate().unwrap_err().setting,
            "redis.breaker.failure_rate"
        );
        let mut c = config();
        c.min_calls = 0;
        assert_eq!(c.validate().unwrap_err().setting, "redis.breaker.min_calls");
        let mut c = config();
        c.cool_down = Duration::ZERO;
        assert_eq!(c.validate().unwrap_err().setting, "redis.breaker.cool_down");
    }
}
