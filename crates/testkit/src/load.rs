//! A steady load of messages through a producer, recorded in a [`Ledger`](crate::Ledger).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ksp_producer::AsyncSmartProducer;
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use tokio::task::JoinSet;

use crate::{Ledger, Outcome};

/// A steady load: `rate` messages per second for `duration`, keyless, or keyed over `keys`
/// distinct keys.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Load {
    /// Topic.
    pub topic: String,
    /// Messages per second.
    pub rate: u32,
    /// How long.
    pub duration: Duration,
    /// `Some(n)`: keyed over `n` keys; `None`: keyless.
    pub keys: Option<u64>,
}

impl Load {
    /// `rate` keyless messages per second to `topic` for `duration`.
    pub fn new(topic: impl Into<String>, rate: u32, duration: Duration) -> Self {
        Self {
            topic: topic.into(),
            rate,
            duration,
            keys: None,
        }
    }

    /// Keyed over `keys` distinct keys.
    #[must_use]
    pub fn keyed(mut self, keys: u64) -> Self {
        self.keys = Some(keys);
        self
    }

    /// Sends the load through `producer`, recording every message in `ledger`, and waits for
    /// every `produce` to resolve. Sends are paced every 10 ms and do not wait for each other.
    pub async fn run(&self, producer: &AsyncSmartProducer, ledger: &Arc<Ledger>) {
        let started = Instant::now();
        let steps = (self.duration.as_millis() / 10).max(1) as u64;
        let per_step = f64::from(self.rate) / 100.0;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut owed = 0.0;
        let mut sends = JoinSet::new();
        for _ in 0..steps {
            tick.tick().await;
            owed += per_step;
            while owed >= 1.0 {
                owed -= 1.0;
                let id = ledger.open(started.elapsed());
                let key = self
                    .keys
                    .map(|n| format!("key-{}", id.wrapping_mul(0x9e37_79b9) % n.max(1)));
                let (producer, ledger, topic) =
                    (producer.clone(), ledger.clone(), self.topic.clone());
                sends.spawn(async move {
                    let payload = ledger.payload(id);
                    let mut record = FutureRecord::to(&topic).payload(&payload);
                    if let Some(key) = &key {
                        record = record.key(key);
                    }
                    let sent = Instant::now();
                    let (route, outcome) = match producer.produce(record).await {
                        Ok(d) => (
                            d.route,
                            Outcome::Delivered {
                                partition: d.partition,
                                offset: d.offset,
                            },
                        ),
                        Err(e) => (
                            e.route(),
                            Outcome::Failed {
                                error: e.error().to_string(),
                                handed_back: e
                                    .message()
                                    .and_then(|m| m.payload())
                                    .is_some_and(|p| p == payload.as_bytes()),
                                queue_full: e.is_queue_full(),
                            },
                        ),
                    };
                    ledger.close(id, sent.elapsed(), route, outcome);
                });
            }
            while sends.try_join_next().is_some() {}
        }
        while sends.join_next().await.is_some() {}
    }
}
