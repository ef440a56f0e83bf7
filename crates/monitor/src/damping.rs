//! Flap damping: a partition that turned unhealthy must stay healthy for a while before it is
//! routed to again, and longer each time it flaps.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use ksp_core::{ConfigError, PartitionHealth};

/// How long a partition that turned unhealthy is kept out.
///
/// A consumer that alternates between slow and fast would otherwise flip in and out of the
/// routable set every few refreshes: each time it is let back in it receives a full share,
/// falls behind again, and the messages sent to it in between wait behind its backlog. So a
/// partition that turns unhealthy must then be healthy, continuously, for a *hold* before it
/// counts as healthy again. The first hold is `recovery_hold`; each further flip doubles it, up
/// to `max_hold`. The flip count decays with `penalty_half_life`, so a consumer that settled
/// down is forgiven. This is route flap damping as BGP routers do it.
///
/// Only the calculator's verdict is damped: a partition whose leader is unavailable is
/// unroutable at once, and routable again as soon as its leader is back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct DampingConfig {
    /// The first hold. Default 60 s. Zero disables damping.
    #[serde(with = "ksp_core::serde_duration")]
    pub recovery_hold: Duration,
    /// The longest hold. Default 10 minutes.
    #[serde(with = "ksp_core::serde_duration")]
    pub max_hold: Duration,
    /// Half-life of the flip penalty. Default 5 minutes.
    #[serde(with = "ksp_core::serde_duration")]
    pub penalty_half_life: Duration,
}

impl DampingConfig {
    /// No damping: health follows the calculator round by round.
    pub const DISABLED: Self = Self {
        recovery_hold: Duration::ZERO,
        max_hold: Duration::ZERO,
        penalty_half_life: Duration::from_secs(300),
    };

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let day = Duration::from_secs(24 * 3600);
        if self.recovery_hold > day {
            return Err(ConfigError::duration(
                "damping.recovery_hold",
                self.recovery_hold,
                "at most 24h (0 disables damping)",
            ));
        }
        if self.max_hold < self.recovery_hold || self.max_hold > day {
            return Err(ConfigError::duration(
                "damping.max_hold",
                self.max_hold,
                format!(
                    "between damping.recovery_hold ({:?}) and 24h (default 10 minutes)",
                    self.recovery_hold
                ),
            ));
        }
        if self.penalty_half_life < Duration::from_secs(1) || self.penalty_half_life > day {
            return Err(ConfigError::duration(
                "damping.penalty_half_life",
                self.penalty_half_life,
                "between 1s and 24h",
            ));
        }
        Ok(())
    }
}

impl Default for DampingConfig {
    fn default() -> Self {
        Self {
            recovery_hold: Duration::from_secs(60),
            max_hold: Duration::from_secs(600),
            penalty_half_life: Duration::from_secs(300),
        }
    }
}

/// The flip penalty never grows past this: 2^63 × any hold is far beyond `max_hold` (at most a
/// day), so a higher penalty could not lengthen the hold, only overflow the arithmetic.
const MAX_PENALTY: f64 = 64.0;

/// The hold after a flip with penalty `penalty`: `recovery_hold × 2^(penalty − 1)`, at most
/// `max_hold`. Computed in seconds as a float and capped before it becomes a `Duration`,
/// because `Duration::mul_f64` panics on overflow (a doubling hold overflows after about 60
/// flips).
fn hold_for(config: &DampingConfig, penalty: f64) -> Duration {
    let cap = config.max_hold.max(config.recovery_hold);
    let factor = 2f64.powf((penalty - 1.0).clamp(0.0, MAX_PENALTY));
    let seconds = config.recovery_hold.as_secs_f64() * factor;
    if seconds.is_finite() && seconds < cap.as_secs_f64() {
        Duration::from_secs_f64(seconds)
    } else {
        cap
    }
}

#[derive(Debug, Clone, Default)]
struct PartitionState {
    /// Whether it currently counts as healthy.
    healthy: bool,
    /// Since when the calculator has said healthy, while it is held out.
    healthy_since: Option<Duration>,
    /// How long it is held out this time.
    hold: Duration,
    /// Flip penalty, and when it was last updated.
    penalty: f64,
    penalty_at: Duration,
}

/// The damping state of one topic. Time is whatever monotonic clock the caller uses (the
/// monitor's, or a simulation's), as time since an arbitrary origin.
#[derive(Debug, Clone, Default)]
pub(crate) struct Damper {
    config: DampingConfig,
    partitions: Vec<Option<PartitionState>>,
}

impl Damper {
    /// A damper with no history.
    pub(crate) fn new(config: DampingConfig) -> Self {
        Self {
            config,
            partitions: Vec::new(),
        }
    }

    /// Rewrites `health`'s healthy flags as damped at time `now`. A partition seen for the
    /// first time takes the calculator's verdict as is.
    ///
    /// Holding partitions out is a luxury of spare capacity: if fewer than half the
    /// partitions with a leader would count as healthy, the held ones that the calculator
    /// calls healthy are let back in at once (otherwise nothing might be routable, and
    /// routing would fall back to spreading load over every partition, the worst included).
    pub(crate) fn apply(&mut self, now: Duration, health: &mut [PartitionHealth]) {
        if self.config.recovery_hold.is_zero() {
            return;
        }
        let raw: Vec<bool> = health.iter().map(|h| h.healthy).collect();
        let config = self.config;
        for h in health.iter_mut() {
            let Some(state) = self.state(h.partition, h.healthy, now) else {
                continue;
            };
            h.healthy = state.step(&config, now, h.healthy);
        }
        let eligible = health.iter().filter(|h| h.lag.leader_available).count();
        let healthy = health
            .iter()
            .filter(|h| h.healthy && h.lag.leader_available)
            .count();
        if healthy * 2 < eligible {
            for (h, &raw) in health.iter_mut().zip(&raw) {
                if raw
                    && !h.healthy
                    && let Some(state) = self.state(h.partition, raw, now)
                {
                    state.release();
                    h.healthy = true;
                }
            }
        }
    }

    fn state(
        &mut self,
        partition: i32,
        healthy: bool,
        now: Duration,
    ) -> Option<&mut PartitionState> {
        // The same bound as the health tables: a report of partition 2 000 000 000 must not
        // allocate gigabytes here either.
        let index = usize::try_from(partition)
            .ok()
            .filter(|&i| i < ksp_core::TopicHealth::MAX_PARTITIONS as usize)?;
        if index >= self.partitions.len() {
            self.partitions.resize(index + 1, None);
        }
        Some(
            self.partitions[index].get_or_insert_with(|| PartitionState {
                healthy,
                penalty_at: now,
                ..PartitionState::default()
            }),
        )
    }

    /// Whether `partition` is being held out although the calculator says healthy.
    #[cfg(test)]
    pub(crate) fn is_held(&self, partition: i32) -> bool {
        usize::try_from(partition)
            .ok()
            .and_then(|i| self.partitions.get(i))
            .and_then(Option::as_ref)
            .is_some_and(|s| !s.healthy && s.healthy_since.is_some())
    }
}

impl PartitionState {
    /// Lets a held partition back in before its hold is over (its penalty stays).
    fn release(&mut self) {
        self.healthy = true;
        self.healthy_since = None;
    }

    fn step(&mut self, config: &DampingConfig, now: Duration, raw: bool) -> bool {
        if self.healthy {
            if !raw {
                // Decay the penalty to now, then count this flip.
                let elapsed = now.saturating_sub(self.penalty_at).as_secs_f64();
                let half_life = config.penalty_half_life.as_secs_f64();
                self.penalty =
                    (self.penalty * 0.5f64.powf(elapsed / half_life) + 1.0).min(MAX_PENALTY);
                self.penalty_at = now;
                self.hold = hold_for(config, self.penalty);
                self.healthy = false;
                self.healthy_since = None;
            }
        } else if raw {
            let since = *self.healthy_since.get_or_insert(now);
            if now.saturating_sub(since) >= self.hold {
                self.healthy = true;
                self.healthy_since = None;
            }
        } else {
            self.healthy_since = None;
        }
        self.healthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ksp_core::PartitionLag;

    /// A 30 s first hold, 10 minutes at most, 5 minutes half-life.
    fn thirty() -> DampingConfig {
        DampingConfig {
            recovery_hold: Duration::from_secs(30),
            ..DampingConfig::default()
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn verdicts(raw: &[bool]) -> Vec<PartitionHealth> {
        raw.iter()
            .enumerate()
            .map(|(p, &h)| PartitionHealth::new(PartitionLag::from_lag(p as i32, 0), 1.0, h))
            .collect()
    }

    /// Damps the verdicts of the first `raw.len()` partitions of an 8-partition topic whose
    /// other partitions stay healthy (so that the release rule for too few healthy
    /// partitions does not kick in), and returns theirs.
    fn step(damper: &mut Damper, at: u64, raw: &[bool]) -> Vec<bool> {
        let mut all = raw.to_vec();
        all.resize(8, true);
        let mut health = verdicts(&all);
        damper.apply(secs(at), &mut health);
        health.iter().take(raw.len()).map(|h| h.healthy).collect()
    }

    /// Damps exactly the verdicts given.
    fn step_all(damper: &mut Damper, at: u64, raw: &[bool]) -> Vec<bool> {
        let mut health = verdicts(raw);
        damper.apply(secs(at), &mut health);
        health.iter().map(|h| h.healthy).collect()
    }

    #[test]
    fn first_sight_is_taken_as_is() {
        let mut d = Damper::new(thirty());
        assert_eq!(step(&mut d, 0, &[true, false]), [true, false]);
        // A partition that was never healthy recovers once healthy for the (zero) hold.
        assert_eq!(step(&mut d, 1, &[true, true]), [true, true]);
    }

    #[test]
    fn a_partition_that_turned_unhealthy_waits_the_hold() {
        let mut d = Damper::new(thirty());
        step(&mut d, 0, &[true]);
        assert_eq!(step(&mut d, 10, &[false]), [false]);
        // Healthy again from 20 s: held out until 50 s.
        assert_eq!(step(&mut d, 20, &[true]), [false]);
        assert!(d.is_held(0));
        assert_eq!(step(&mut d, 49, &[true]), [false]);
        assert_eq!(step(&mut d, 50, &[true]), [true]);
        assert!(!d.is_held(0));
    }

    #[test]
    fn relapsing_during_the_hold_restarts_it() {
        let mut d = Damper::new(thirty());
        step(&mut d, 0, &[true]);
        step(&mut d, 10, &[false]);
        step(&mut d, 20, &[true]);
        step(&mut d, 40, &[false]);
        assert_eq!(step(&mut d, 60, &[true]), [false]);
        assert_eq!(step(&mut d, 89, &[true]), [false]);
        assert_eq!(step(&mut d, 90, &[true]), [true]);
    }

    #[test]
    fn each_flip_doubles_the_hold_up_to_the_maximum() {
        let mut d = Damper::new(thirty());
        step(&mut d, 0, &[true]);
        let mut now = 0;
        let mut holds = Vec::new();
        for _ in 0..8 {
            now += 1;
            step(&mut d, now, &[false]);
            let out = now;
            now += 1;
            while step(&mut d, now, &[true]) == [false] {
                now += 1;
            }
            holds.push(now - out - 1);
        }
        // 30 s, then nearly doubling; the penalty keeps decaying while the partition is held
        // out, so a partition that flaps forever settles at the hold where one flip per hold
        // balances the decay (about 150 s with the defaults), well below `max_hold`.
        assert_eq!(holds[0], 30);
        for pair in holds.windows(2) {
            assert!(pair[1] >= pair[0], "{holds:?}");
        }
        assert!((50..=60).contains(&holds[1]), "{holds:?}");
        assert!((120..=600).contains(holds.last().unwrap()), "{holds:?}");
    }

    #[test]
    fn max_hold_caps_the_hold() {
        let mut c = thirty();
        c.max_hold = Duration::from_secs(45);
        let mut d = Damper::new(c);
        step(&mut d, 0, &[true]);
        step(&mut d, 1, &[false]);
        step(&mut d, 2, &[true]);
        step(&mut d, 32, &[true]);
        step(&mut d, 33, &[false]);
        assert_eq!(step(&mut d, 34, &[true]), [false]);
        assert_eq!(step(&mut d, 78, &[true]), [false]);
        assert_eq!(step(&mut d, 79, &[true]), [true]);
    }

    #[test]
    fn the_penalty_decays() {
        let mut d = Damper::new(thirty());
        step(&mut d, 0, &[true]);
        step(&mut d, 1, &[false]);
        step(&mut d, 2, &[true]);
        step(&mut d, 40, &[true]);
        // Ten half-lives later a new flip costs about the base hold again.
        step(&mut d, 3000, &[false]);
        assert_eq!(step(&mut d, 3001, &[true]), [false]);
        assert_eq!(step(&mut d, 3031, &[true]), [false]);
        assert_eq!(step(&mut d, 3032, &[true]), [true]);
    }

    #[test]
    fn holds_are_released_when_too_few_partitions_are_healthy() {
        let mut d = Damper::new(thirty());
        step_all(&mut d, 0, &[true, true, true, true]);
        // Two of four turn unhealthy and recover at once: held, since two of four healthy is
        // still half.
        step_all(&mut d, 1, &[true, true, false, false]);
        assert_eq!(
            step_all(&mut d, 2, &[true, true, true, true]),
            [true, true, false, false]
        );
        // Another falls: one of four is too few, the recovered ones come back at once.
        assert_eq!(
            step_all(&mut d, 3, &[true, false, true, true]),
            [true, false, true, true]
        );
    }

    /// Regression: `recovery_hold.mul_f64(2^(penalty - 1))` was computed before the cap, and
    /// `Duration::mul_f64` panics once the penalty passes about 59, killing the monitor. Four
    /// partitions, two always unhealthy and one flipping every 2 s refresh: the release rule
    /// for "fewer than half healthy" lets the flipping one back in each time, so its penalty
    /// grows by one every other refresh. A simulated day of it, at several accepted settings.
    #[test]
    fn damper_penalty_overflow_does_not_panic_in_a_day_of_flapping() {
        let settings = [
            DampingConfig::default(),
            DampingConfig {
                recovery_hold: secs(1),
                max_hold: secs(2),
                ..DampingConfig::default()
            },
            DampingConfig {
                penalty_half_life: secs(24 * 3600),
                ..DampingConfig::default()
            },
            DampingConfig {
                recovery_hold: secs(24 * 3600),
                max_hold: secs(24 * 3600),
                penalty_half_life: secs(24 * 3600),
            },
        ];
        for config in settings {
            config.validate().unwrap();
            let mut d = Damper::new(config);
            let mut held_out = 0u64;
            for round in 0..(24 * 3600 / 2) {
                let flipping = round % 2 == 0;
                let healthy = step_all(&mut d, round * 2, &[true, false, false, flipping]);
                held_out += u64::from(flipping && !healthy[3]);
                // The always-healthy partition is never held.
                assert!(healthy[0], "{config:?} round {round}");
            }
            // With half of four healthy at best, holds are always released: the flipping
            // partition is let in every time the calculator says healthy.
            assert_eq!(held_out, 0, "{config:?}");
        }
    }

    /// The same day of flapping with spare capacity (eight partitions, one flipping): the hold
    /// grows to `max_hold` and stays there, whatever the settings.
    #[test]
    fn holds_saturate_at_max_hold_under_endless_flapping() {
        for config in [
            DampingConfig::default(),
            DampingConfig {
                recovery_hold: secs(1),
                max_hold: secs(2),
                ..DampingConfig::default()
            },
            DampingConfig {
                penalty_half_life: secs(24 * 3600),
                ..DampingConfig::default()
            },
        ] {
            let mut d = Damper::new(config);
            step(&mut d, 0, &[true]);
            let mut at = 0;
            let mut last_hold = Duration::ZERO;
            // Flip out, then healthy until let back in, 500 times.
            for _ in 0..500 {
                at += 2;
                step(&mut d, at, &[false]);
                let out = at;
                loop {
                    at += 2;
                    if step(&mut d, at, &[true]) == [true] {
                        break;
                    }
                }
                last_hold = secs(at - out - 2);
            }
            assert!(last_hold <= config.max_hold, "{config:?}: {last_hold:?}");
            assert!(
                last_hold + secs(2) >= config.max_hold.min(secs(100)),
                "{config:?}: {last_hold:?}"
            );
        }
    }

    /// Regression: the damper sized its table by the largest partition id it was given,
    /// before the health tables dropped absurd ids: partition 2 000 000 000 from a custom
    /// collector or calculator meant a 100 GB allocation (an abort, not a panic).
    #[test]
    fn absurd_partition_ids_allocate_nothing() {
        let mut d = Damper::new(thirty());
        let mut health = vec![
            PartitionHealth::new(PartitionLag::from_lag(0, 0), 1.0, true),
            PartitionHealth::new(PartitionLag::from_lag(2_000_000_000, 0), 1.0, true),
        ];
        d.apply(secs(0), &mut health);
        assert!(d.partitions.len() <= 1, "{}", d.partitions.len());
    }

    #[test]
    fn disabled_damping_follows_the_calculator() {
        let mut d = Damper::new(DampingConfig::DISABLED);
        step(&mut d, 0, &[true]);
        assert_eq!(step(&mut d, 1, &[false]), [false]);
        assert_eq!(step(&mut d, 2, &[true]), [true]);
    }

    #[test]
    fn settings_are_validated() {
        let c = DampingConfig {
            max_hold: Duration::from_secs(1),
            ..DampingConfig::default()
        };
        assert_eq!(c.validate().unwrap_err().setting, "damping.max_hold");
        let c = DampingConfig {
            penalty_half_life: Duration::ZERO,
            ..DampingConfig::default()
        };
        assert_eq!(
            c.validate().unwrap_err().setting,
            "damping.penalty_half_life"
        );
        DampingConfig::DISABLED.validate().unwrap();
        DampingConfig::default().validate().unwrap();
    }
}
