//! Backpressure: waiting for room in librdkafka's local queue, for a bounded time.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use ksp_core::ConfigError;
use rdkafka::ClientConfig;
use tokio::sync::Notify;

/// librdkafka's default `queue.buffering.max.messages`.
const DEFAULT_MAX_MESSAGES: usize = 100_000;
/// librdkafka's default `queue.buffering.max.kbytes`.
const DEFAULT_MAX_KBYTES: usize = 1_048_576;

/// The room in librdkafka's local queue, mirrored in two counters so that a full queue is
/// waited on (woken by each delivery report) instead of polled.
///
/// librdkafka refuses a message (`QueueFull`) when its queue holds
/// `queue.buffering.max.messages` messages or `queue.buffering.max.kbytes` of payload.
/// `rdkafka`'s own `FutureProducer::send` then sleeps 100 ms and tries again, in a loop. Here a
/// send first reserves a message and its payload size, at once when there is room, otherwise
/// waiting at most `queue_timeout` for deliveries to free some; the reservation is held until
/// the message's delivery report arrives. So librdkafka's queue never overflows because of this
/// producer, waiting costs nothing while there is room, and a send that cannot get room in time
/// fails with `QueueFull` and its message handed back.
///
/// Not a `tokio::sync::Semaphore`: its release takes a mutex every time, and reservations are
/// released on whatever thread delivers the report; two semaphores cost about 230 ns a message
/// (measured: 144 ns per cross-thread acquire/release against 30 ns for an atomic counter),
/// a tenth of a send at 500 000 msg/s. Here the fast path is two compare-and-swaps to take room
/// and two subtractions to give it back; the `Notify` is touched only when someone waits.
pub(crate) struct LocalQueue {
    room: Arc<Room>,
    max_messages: usize,
    max_kbytes: usize,
    timeout: Duration,
}

struct Room {
    messages: AtomicUsize,
    bytes: AtomicUsize,
    /// `usize::MAX` when librdkafka's message-count limit is off.
    max_messages: usize,
    max_bytes: usize,
    /// Sends waiting for room: releases only notify when there are some, and a new send does
    /// not take room ahead of them.
    waiting: AtomicUsize,
    notify: Notify,
    /// The line of waiting sends.
    line: tokio::sync::Mutex<()>,
}

impl Room {
    /// Takes room for a message of `bytes` payload bytes, if there is.
    fn try_take(&self, bytes: usize) -> bool {
        self.try_take_then(bytes, true)
    }

    /// [`try_take`](Self::try_take); `wake_on_refusal` passes on the message place held a
    /// moment when the bytes did not fit. The head of the line, the only waiter, must not: it
    /// would wake itself and spin without ever yielding.
    fn try_take_then(&self, bytes: usize, wake_on_refusal: bool) -> bool {
        if self
            .messages
            .fetch_update(SeqCst, SeqCst, |m| (m < self.max_messages).then_some(m + 1))
            .is_err()
        {
            return false;
        }
        if self
            .bytes
            .fetch_update(SeqCst, SeqCst, |b| {
                (b.saturating_add(bytes) <= self.max_bytes).then_some(b + bytes)
            })
            .is_err()
        {
            self.messages.fetch_sub(1, SeqCst);
            // The head of the line may have been refused the message place held here a moment.
            if wake_on_refusal {
                self.wake();
            }
            return false;
        }
        true
    }

    fn give_back(&self, bytes: usize) {
        self.messages.fetch_sub(1, SeqCst);
        self.bytes.fetch_sub(bytes, SeqCst);
        self.wake();
    }

    fn wake(&self) {
        // Sequentially consistent with the waiter's increment-then-retry: either this sees
        // the waiter, or the waiter's retry sees the room given back.
        if self.waiting.load(SeqCst) > 0 {
            self.notify.notify_one();
        }
    }

    /// Waits until room for `bytes` is taken, in arrival order: only the sender at the head of
    /// the line (holding `line`) tries; the others wait for the line, which tokio's mutex hands
    /// over first come, first served. So two sends of the same key that both had to wait keep
    /// their order. Cancel-safe: nothing is held until it returns, and a wakeup it received but
    /// did not use is passed on by `Notify` to the next waiter.
    async fn take(&self, bytes: usize) {
        let _waiting = Waiting::new(&self.waiting);
        let _head = self.line.lock().await;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.try_take_then(bytes, false) {
                return;
            }
            notified.await;
        }
    }
}

/// Counts a send as waiting for as long as it exists (also when its future is dropped).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, SeqCst);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// Room reserved for one message until its delivery report.
pub(crate) struct Reservation<'a> {
    room: &'a Arc<Room>,
    bytes: usize,
}

impl Reservation<'_> {
    /// The same reservation, owning its queue, to outlive the `produce` call.
    pub(crate) fn into_owned(self) -> OwnedReservation {
        let owned = OwnedReservation {
            room: self.room.clone(),
            bytes: self.bytes,
        };
        std::mem::forget(self);
        owned
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.room.give_back(self.bytes);
    }
}

pub(crate) struct OwnedReservation {
    room: Arc<Room>,
    bytes: usize,
}

impl Drop for OwnedReservation {
    fn drop(&mut self) {
        self.room.give_back(self.bytes);
    }
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
        Ok(Self {
            room: Arc::new(Room {
                messages: AtomicUsize::new(0),
                bytes: AtomicUsize::new(0),
                // 0 disables librdkafka's message-count limit.
                max_messages: if max_messages == 0 {
                    usize::MAX
                } else {
                    max_messages
                },
                max_bytes: max_kbytes.saturating_mul(1024),
                waiting: AtomicUsize::new(0),
                notify: Notify::new(),
                line: tokio::sync::Mutex::new(()),
            }),
            max_messages,
            max_kbytes,
            timeout,
        })
    }

    /// Reserves room for a message with `payload` bytes of payload; `None` if there was none
    /// within `queue_timeout`.
    ///
    /// Cancel-safe: dropping the future releases whatever it had reserved.
    pub(crate) async fn reserve(&self, payload: usize) -> Option<Reservation<'_>> {
        // A payload larger than the whole queue can never fit; librdkafka rejects such a
        // message itself (`message.max.bytes`), so let it through to get that error.
        let bytes = payload.min(self.room.max_bytes);
        // Nobody waiting: take room at once if there is. Otherwise join the line.
        if self.room.waiting.load(SeqCst) > 0 || !self.room.try_take(bytes) {
            if self.timeout.is_zero() {
                return None;
            }
            // Boxed: the wait's timer would otherwise make every send's future larger, and
            // futures are moved (into a task, a `FuturesUnordered`) by the byte.
            Box::pin(tokio::time::timeout(self.timeout, self.room.take(bytes)))
                .await
                .ok()?;
        }
        Some(Reservation {
            room: &self.room,
            bytes,
        })
    }

    /// The configuration to create librdkafka's producer with: `kafka`, with librdkafka's
    /// queue limits raised to twice the limits this queue enforces, plus one batch.
    ///
    /// librdkafka calls the delivery callbacks of a whole event (a batch, or every message of
    /// a partition that timed out or was purged) before it destroys those messages, and only
    /// destroying a message frees its place in librdkafka's count. A send admitted here as
    /// soon as a report arrived could otherwise find librdkafka full. Reported-but-not-yet-freed
    /// messages are at most one event's, which is at most everything admitted here; with that
    /// much headroom librdkafka never refuses a message this queue admitted. The configured
    /// limits are still the ones enforced, here.
    pub(crate) fn client_config(&self, kafka: &ClientConfig) -> Result<ClientConfig, ConfigError> {
        let batch_messages = setting(kafka, "batch.num.messages", 1, 10_000)?;
        let batch_bytes = setting(kafka, "batch.size", 1, 1_000_000)?;
        let mut config = kafka.clone();
        if self.max_messages > 0 {
            let raised = self
                .max_messages
                .saturating_mul(2)
                .saturating_add(batch_messages)
                .min(i32::MAX as usize);
            config.set("queue.buffering.max.messages", raised.to_string());
        }
        let raised = self
            .max_kbytes
            .saturating_mul(2)
            .saturating_add(batch_bytes.div_ceil(1024) + 1)
            .min(i32::MAX as usize);
        config.set("queue.buffering.max.kbytes", raised.to_string());
        Ok(config)
    }

    /// Room for a message with `payload` bytes of payload if there is some now and nobody is
    /// waiting for it.
    pub(crate) fn try_reserve(&self, payload: usize) -> Option<OwnedReservation> {
        let bytes = payload.min(self.room.max_bytes);
        (self.room.waiting.load(SeqCst) == 0 && self.room.try_take(bytes)).then(|| {
            OwnedReservation {
                room: self.room.clone(),
                bytes,
            }
        })
    }

    /// How long a send waits for room.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Messages that can still be queued without waiting (`None`: no count limit).
    pub(crate) fn available_messages(&self) -> Option<usize> {
        (self.max_messages > 0).then(|| {
            self.max_messages
                .saturating_sub(self.room.messages.load(SeqCst))
        })
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

    /// Many tasks taking and giving back room on a small queue, across threads: never more
    /// than the limit at once, and no task waits forever (a lost wakeup would leave some
    /// waiting until their 60 s timeout and fail this test).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_contention_the_limit_holds_and_no_wakeup_is_lost() {
        use std::sync::atomic::AtomicUsize;
        let q = Arc::new(queue("5", "1024", Duration::from_secs(60)));
        let holding = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let (q, holding, most) = (q.clone(), holding.clone(), most.clone());
                tokio::spawn(async move {
                    for _ in 0..200 {
                        let r = q.reserve(1).await.expect("room within 60 s");
                        let now = holding.fetch_add(1, SeqCst) + 1;
                        most.fetch_max(now, SeqCst);
                        tokio::task::yield_now().await;
                        holding.fetch_sub(1, SeqCst);
                        drop(r);
                    }
                })
            })
            .collect();
        let all = futures::future::join_all(tasks);
        tokio::time::timeout(Duration::from_secs(30), all)
            .await
            .expect("no task stuck waiting");
        assert!(most.load(SeqCst) <= 5, "{}", most.load(SeqCst));
        assert_eq!(q.available_messages(), Some(5));
        assert_eq!(q.room.waiting.load(SeqCst), 0);
    }

    /// A send that arrives while others wait for room does not take the room a delivery
    /// frees ahead of them: waiting sends get room in arrival order, so two sends of one key
    /// that both wait keep their order.
    #[tokio::test(start_paused = true)]
    async fn waiting_sends_get_room_in_arrival_order() {
        let q = Arc::new(queue("1", "1024", Duration::from_secs(10)));
        let held = q.reserve(1).await.unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let waiter = |i: usize| {
            let (q, order) = (q.clone(), order.clone());
            tokio::spawn(async move {
                let room = q.reserve(1).await.expect("room");
                order.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(1)).await;
                drop(room);
            })
        };
        let first = waiter(1);
        tokio::task::yield_now().await;
        let second = waiter(2);
        tokio::task::yield_now().await;
        // Room comes back; a third send arrives before the waiters have run.
        drop(held);
        let late = q.reserve(1);
        tokio::pin!(late);
        assert!(
            futures::poll!(&mut late).is_pending(),
            "no jumping the line"
        );
        let late = late.await.unwrap();
        order.lock().unwrap().push(3);
        drop(late);
        first.await.unwrap();
        second.await.unwrap();
        assert_eq!(*order.lock().unwrap(), [1, 2, 3]);
    }

    /// Regression: the head of the line, refused because the bytes did not fit although a
    /// message place was free, woke itself and spun without yielding: `queue_timeout` never
    /// fired, and on a one-thread runtime nothing else ever ran again.
    #[tokio::test(start_paused = true)]
    async fn a_send_waiting_for_bytes_times_out_instead_of_spinning() {
        let q = queue("100", "1", Duration::from_millis(100));
        let _held = q.reserve(1000).await.unwrap();
        let started = tokio::time::Instant::now();
        assert!(q.reserve(100).await.is_none());
        assert_eq!(started.elapsed(), Duration::from_millis(100));
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
    fn librdkafka_gets_twice_the_limit_and_a_batch_of_headroom() {
        let q = queue("50", "1000", Duration::ZERO);
        let mut kafka = ClientConfig::new();
        kafka
            .set("batch.num.messages", "100")
            .set("batch.size", "10240");
        let config = q.client_config(&kafka).unwrap();
        assert_eq!(config.get("queue.buffering.max.messages"), Some("200"));
        assert_eq!(config.get("queue.buffering.max.kbytes"), Some("2011"));
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
        // Found by the decoder fuzz test: a huge limit made the old semaphore-based queue panic.
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
