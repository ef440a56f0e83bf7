//! The collector lease: which instance of the fleet talks to Kafka, and its term.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fred::prelude::*;
use tracing::{info, warn};

use super::Shared;

/// Takes the lease if nobody holds it, and starts a new term: the term counter only grows, so a
/// later leader's snapshots always order after an earlier one's.
///
/// KEYS[1] = lease, KEYS[2] = term counter; ARGV[1] = instance id, ARGV[2] = TTL in ms.
/// Returns the new term, or 0 when the lease is held.
const ACQUIRE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0
";

/// Renews the lease only if this instance still holds it.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Releases the lease only if this instance holds it.
pub(super) const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

impl Shared {
    /// Holds or seeks the lease until cancelled.
    pub(super) async fn hold_lease(self: Arc<Self>) {
        let ttl = self.client.config().lease_ttl;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let mut last_renewed: Option<Instant> = None;
        loop {
            if self.leader.load(Ordering::Acquire) {
                let keys = vec![self.keys.lease.clone()];
                let args = vec![self.id.clone(), ttl_ms.to_string()];
                let renewed = self
                    .client
                    .call(|c| async move { c.eval::<i64, _, _, _>(RENEW, keys, args).await })
                    .await;
                match renewed {
                    Ok(1) => last_renewed = Some(Instant::now()),
                    Ok(_) => self.step_down("another instance holds the lease"),
                    Err(e) => {
                        // Without renewal the lease expires at the latest `ttl` after the
                        // last success; stop acting as leader by then.
                        if last_renewed.is_none_or(|t| t.elapsed() >= ttl) {
                            self.step_down(&format!("could not renew the lease: {e}"));
                        }
                    }
                }
            } else {
                let keys = vec![self.keys.lease.clone(), self.keys.term.clone()];
                let args = vec![self.id.clone(), ttl_ms.to_string()];
                let acquired = self
                    .client
                    .call(|c| async move { c.eval::<u64, _, _, _>(ACQUIRE, keys, args).await })
                    .await;
                if let Ok(term) = acquired
                    && term > 0
                {
                    last_renewed = Some(Instant::now());
                    self.term.store(term, Ordering::Release);
                    self.sequence.store(0, Ordering::Release);
                    if !self.leader.swap(true, Ordering::AcqRel) {
                        metrics::gauge!("ksp_fleet_leader").increment(1.0);
                    }
                    self.stats.became_leader.fetch_add(1, Ordering::Relaxed);
                    info!(instance = %self.id, term, lease = %self.keys.lease, "this instance now collects lag for the fleet");
                    self.updates.send_modify(|v| *v = v.wrapping_add(1));
                }
            }
            // The leader renews three times per TTL; followers try ten times per TTL, so a
            // dead leader is replaced at most a tenth of a TTL after its lease expires.
            let pause = if self.leader.load(Ordering::Acquire) {
                ttl / 3
            } else {
                ttl / 10
            };
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = tokio::time::sleep(pause.max(Duration::from_millis(1))) => {}
                () = self.wake.notified() => {}
            }
        }
    }

    pub(super) fn step_down(&self, why: &str) {
        if self.leader.swap(false, Ordering::AcqRel) {
            metrics::gauge!("ksp_fleet_leader").decrement(1.0);
            warn!(instance = %self.id, reason = why, "no longer collecting lag for the fleet");
        }
    }
}
