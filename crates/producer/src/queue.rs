//! Backpressure: waiting for room in librdkafka's local queue, for a bounded time.

use std::sync::Arc;
use std::time::Duration;

use ksp_core::ConfigError;
use rdkafka::ClientConfig;
use rdkafka::producer::{DeliveryFuture, FutureProducer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// librdkafka's default `queue.buffering.max.messages`.
const DEFAULT_MAX_MESSAGES: usize = 100_000;
/// librdkafka's default `queue.buffering.max.kbytes`.
const DEFAULT_MAX_KBYTES: usize = 1_048_576;

/// The room in librdkafka's local queue, mirrored in two semaphores so that a full queue is
/// waited on (woken by each delivery report) instead of polled.
///
/// librdkafka refuses a message (`QueueFull`) when its queue holds
/// `queue.buffering.max.messages` messages or `queue.buffering.max.kbytes` of payload.
/// `rdkafka`'s own `FutureProducer::send` then sleeps 100 ms and tries again, in a loop. Here a
/// send first reserves a message and its payload size in these semaphores, at once when there
/// is room, otherwise waiting at most `queue_timeout` for deliveries to free some; the
/// reservation is held until the message's delivery report arrives. So librdkafka's queue never
/// overflows because of this producer, waiting costs nothing while there is room, and a send
/// that cannot get room in time fails with `QueueFull` and its message handed back.
pub(crate) struct LocalQueue {
    messages: Option<Arc<Semaphore>>,
    bytes: Arc<Semaphore>,
    max_messages: usize,
    max_kbytes: usize,
    max_bytes: usize,
    timeout: Duration,
}

/// Room reserved for one message until its delivery report.
pub(crate) struct Reservation {
    _message: Option<OwnedSemaphorePermit>,
    _bytes: Option<OwnedSemaphorePermit>,
}

impl LocalQueue {
    /// Longest accepted `queue_timeout`.
    pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

    /// Mirrors the limits configured in `kafka` (librdkafka's defaults when unset).
    pub(crate) fn new(kafka: &ClientConfig, timeout: Duration) -> Result<Self, ConfigError> {
        if timeout > Self::MAX_TIMEOUT {
            return Err(ConfigError::duration(
                "queue_timeout",
                timeout,
                "at most 3600s (0 fails at once when the queue is full)",
            ));
        }
        // librdkafka's own ranges; anything else it would refuse anyway.
        let max_messages = setting(
            kafka,
            "queue.buffering.max.messages",
            0,
            DEFAULT_MAX_MESSAGES,
        )?;
        let max_kbytes = setting(kafka, "queue.buffering.max.kbytes", 1, DEFAULT_MAX_KBYTES)?;
        let max_bytes = max_kbytes.saturating_mul(1024).min(Semaphore::MAX_PERMITS);
        Ok(Self {
            // 0 disables librdkafka's message-count limit.
            messages: (max_messages > 0).then(|| Arc::new(Semaphore::new(max_messages))),
            bytes: Arc::new(Semaphore::new(max_bytes)),
            max_messages,
            max_kbytes,
            max_bytes,
            timeout,
        })
    }

    /// The configuration to create librdkafka's producer with: `kafka`, with librdkafka's
    /// queue limits raised by one batch above the limits these semaphores enforce.
    ///
    /// librdkafka calls the delivery callbacks of a whole batch before it destroys the
    /// batch's messages, and only destroying a message frees its place in librdkafka's count.
    /// A send admitted here as soon as a report arrived could otherwise still find librdkafka
    /// full. With the headroom, librdkafka never refuses a message this queue admitted; the
    /// configured limits are still the ones enforced, here.
    pub(crate) fn client_config(&self, kafka: &ClientConfig) -> Result<ClientConfig, ConfigError> {
        let batch_messages = setting(kafka, "batch.num.messages", 1, 10_000)?;
        let batch_bytes = setting(kafka, "batch.size", 1, 1_000_000)?;
        let mut config = kafka.clone();
        if self.max_messages > 0 {
            let raised = (self.max_messages + batch_messages).min(i32::MAX as usize);
            config.set("queue.buffering.max.messages", raised.to_string());
        }
        let raised = (self.max_kbytes + batch_bytes.div_ceil(1024) + 1).min(i32::MAX as usize);
        config.set("queue.buffering.max.kbytes", raised.to_string());
        Ok(config)
    }

    /// Reserves room for a message with `payload` bytes of payload; `None` if there was none
    /// within `queue_timeout`.
    ///
    /// Cancel-safe: dropping the future releases whatever it had reserved.
    pub(crate) async fn reserve(&self, payload: usize) -> Option<Reservation> {
        // A payload larger than the whole queue can never fit; librdkafka rejects such a
        // message itself (`message.max.bytes`), so let it through to get that error.
        let bytes = payload.min(self.max_bytes).min(u32::MAX as usize) as u32;
        if let Some(reservation) = self.try_reserve(bytes) {
            return Some(reservation);
        }
        if self.timeout.is_zero() {
            return None;
        }
        let wait = async {
            let message = match &self.messages {
                Some(m) => Some(m.clone().acquire_owned().await.ok()?),
                None => None,
            };
            let bytes = self.bytes.clone().acquire_many_owned(bytes).await.ok()?;
            Some(Reservation {
                _message: message,
                _bytes: Some(bytes),
            })
        };
        tokio::time::timeout(self.timeout, wait)
            .await
            .ok()
            .flatten()
    }

    fn try_reserve(&self, bytes: u32) -> Option<Reservation> {
        let message = match &self.messages {
            Some(m) => Some(m.clone().try_acquire_owned().ok()?),
            None => None,
        };
        let bytes = self.bytes.clone().try_acquire_many_owned(bytes).ok()?;
        Some(Reservation {
            _message: message,
            _bytes: Some(bytes),
        })
    }

    /// Messages that can still be queued without waiting (`None`: no count limit).
    pub(crate) fn available_messages(&self) -> Option<usize> {
        self.messages.as_ref().map(|m| m.available_permits())
    }
}

/// An integer setting of librdkafka's, in `min..=i32::MAX` like librdkafka requires.
fn setting(
    kafka: &ClientConfig,
    key: &'static str,
    min: usize,
    default: usize,
) -> Result<usize, ConfigError> {
    let Some(value) = kafka.get(key) else {
        return Ok(default);
    };
    value
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|n| (min..=i32::MAX as usize).contains(n))
        .ok_or_else(|| {
            ConfigError::new(
                key,
                format_args!("{value:?}"),
                format!("an integer between {min} and 2147483647"),
            )
        })
}

/// A message handed to librdkafka whose delivery report is still awaited.
///
/// If the caller stops waiting (drops the `produce` future), librdkafka still delivers the
/// message; the guard then hands the wait to a task that keeps the message's queue room
/// reserved, and the producer alive, until the report arrives. Nothing is lost and the room
/// accounting stays exact.
pub(crate) struct InFlight<'a> {
    pub(crate) delivery: Option<DeliveryFuture>,
    pub(crate) reservation: Option<Reservation>,
    pub(crate) producer: &'a FutureProducer,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let Some(delivery) = self.delivery.take() else {
            return;
        };
        let reservation = self.reservation.take();
        let producer = self.producer.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = delivery.await;
                drop(reservation);
                drop(producer);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(messages: &str, kbytes: &str, timeout: Duration) -> LocalQueue {
        let mut kafka = ClientConfig::new();
        kafka
            .set("queue.buffering.max.messages", messages)
            .set("queue.buffering.max.kbytes", kbytes);
        LocalQueue::new(&kafka, timeout).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn waits_for_room_until_the_timeout() {
        let q = queue("2", "1024", Duration::from_millis(100));
        let a = q.reserve(10).await.unwrap();
        let _b = q.reserve(10).await.unwrap();
        let started = tokio::time::Instant::now();
        assert!(q.reserve(10).await.is_none());
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        // Room frees as soon as a message is done, not at the next poll.
        let waiting = q.reserve(10);
        tokio::pin!(waiting);
        assert!(futures::poll!(&mut waiting).is_pending());
        drop(a);
        assert!(waiting.await.is_some());
    }

    #[tokio::test]
    async fn payload_bytes_are_limited_too() {
        let q = queue("1000", "1", Duration::ZERO);
        let _big = q.reserve(1000).await.unwrap();
        assert!(q.reserve(100).await.is_none());
        assert!(q.reserve(24).await.is_some());
    }

    #[tokio::test]
    async fn zero_message_limit_means_none() {
        let q = queue("0", "1024", Duration::ZERO);
        assert_eq!(q.available_messages(), None);
        let held: Vec<_> = futures::future::join_all((0..1000).map(|_| q.reserve(1))).await;
        assert!(held.iter().all(Option::is_some));
    }

    #[tokio::test]
    async fn a_payload_larger_than_the_queue_is_passed_through() {
        let q = queue("10", "1", Duration::ZERO);
        assert!(q.reserve(10_000_000).await.is_some());
    }

    #[test]
    fn librdkafka_gets_one_batch_of_headroom() {
        let q = queue("50", "1000", Duration::ZERO);
        let mut kafka = ClientConfig::new();
        kafka
            .set("batch.num.messages", "100")
            .set("batch.size", "10240");
        let config = q.client_config(&kafka).unwrap();
        assert_eq!(config.get("queue.buffering.max.messages"), Some("150"));
        assert_eq!(config.get("queue.buffering.max.kbytes"), Some("1011"));
        // No count limit stays no count limit.
        let q = queue("0", "1000", Duration::ZERO);
        let config = q.client_config(&ClientConfig::new()).unwrap();
        assert_eq!(config.get("queue.buffering.max.messages"), None);
    }

    #[test]
    fn bad_limits_and_timeouts_are_config_errors() {
        let mut kafka = ClientConfig::new();
        kafka.set("queue.buffering.max.messages", "lots");
        let err = LocalQueue::new(&kafka, Duration::ZERO).err().unwrap();
        assert_eq!(err.setting, "queue.buffering.max.messages");
        // Found by the decoder fuzz test: a huge limit made the semaphore constructor panic.
        kafka.set("queue.buffering.max.messages", "9223372036854775807");
        let err = LocalQueue::new(&kafka, Duration::ZERO).err().unwrap();
        assert_eq!(
            err.to_string(),
            "invalid `queue.buffering.max.messages` = \"9223372036854775807\": expected an \
             integer between 0 and 2147483647"
        );
        kafka.set("queue.buffering.max.messages", "0");
        kafka.set("queue.buffering.max.kbytes", "0");
        let err = LocalQueue::new(&kafka, Duration::ZERO).err().unwrap();
        assert_eq!(err.setting, "queue.buffering.max.kbytes");
        let err = LocalQueue::new(&ClientConfig::new(), Duration::from_secs(86_400))
            .err()
            .unwrap();
        assert_eq!(err.setting, "queue_timeout");
    }
}
