//! [`SmartProducer`]: the blocking flavour, over rdkafka's `ThreadedProducer`.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ksp_core::HealthSnapshot;
use ksp_monitor::{MonitorError, MonitorResult, MonitorStats, MonitorStatus};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Message, ToBytes};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, NoCustomPartitioner, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::{ClientConfig, ClientContext};
use tokio::runtime::{Handle, RuntimeFlavor};

use crate::async_producer::{Delivery, METADATA_TIMEOUT, is_unknown_partition};
use crate::backpressure::{LocalQueue, OwnedReservation};
use crate::builder::AsyncSmartProducerBuilder;
use crate::error::{BuildError, ProduceError, RecordParts};
use crate::metrics::SendMetrics;
use crate::router::{Decision, Fallback, Route, Router};
use crate::routing::{Inspect, Pending, Routed, Routing};
use crate::summary::TopicSummary;

/// What a [`SmartProducer::send`] callback receives.
pub type DeliveryOutcome = Result<Delivery, ProduceError>;

type Callback = Box<dyn FnOnce(DeliveryOutcome) + Send + 'static>;

/// What travels with a message through librdkafka: how it was routed, its callback, and its
/// room in the local queue, given back when the report has been handled. (The callback is
/// in a mutex only because librdkafka's opaque must be `Sync`; it is taken exactly once.)
pub struct Opaque {
    route: Route,
    callback: Mutex<Option<Callback>>,
    _room: Option<OwnedReservation>,
}

impl fmt::Debug for Opaque {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opaque")
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

/// A Kafka producer for code without an async runtime: [`AsyncSmartProducer`]'s routing over
/// rdkafka's `ThreadedProducer`, whose own thread serves delivery reports.
///
/// Built from the same [`AsyncSmartProducerBuilder`] (`SmartProducer::builder` is
/// `AsyncSmartProducer::builder`, finished with [`build_blocking`]). It makes the same
/// decisions as the async producer, records the same metrics, agrees key moves with a fleet
/// through Redis the same way, and enforces the same queue bound, waiting for room up to
/// `queue_timeout`.
///
/// The health monitor needs a Tokio runtime: inside one, it runs there; otherwise the producer
/// starts a one-thread runtime of its own (thread `ksp-monitor`), stopped by
/// [`close`](Self::close) or on drop. `send` blocks the calling thread only to wait for queue
/// room (at most `queue_timeout`), for a key's first move to be agreed with the fleet (a
/// bounded wait), under strict key order for its key's turn (at most `max_hold`), and, when a
/// strict-order send is refused for a partition librdkafka does not know yet, for fresh
/// metadata (at most 5 s). On a thread of a multi-thread Tokio runtime it waits through
/// `block_in_place`. On the thread of a one-thread runtime, which is the one that would have
/// to run what it waits for, and inside one of this producer's callbacks (on librdkafka's
/// polling thread, whose delivery callbacks give queue room back), it never waits: a full
/// queue fails at once, a key's first move uses the detour already agreed or the local one (so
/// a key moving for the first time in a fleet may then split), `refresh_health` returns
/// [`MonitorError::WouldBlock`] and `close` stops the monitor in the background.
///
/// ```no_run
/// use ksp_producer::blocking::SmartProducer;
/// use rdkafka::ClientConfig;
/// use rdkafka::producer::BaseRecord;
///
/// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let mut kafka = ClientConfig::new();
/// kafka.set("bootstrap.servers", "localhost:9092");
/// let producer = SmartProducer::builder(kafka)
///     .consumer_group("order-processors")
///     .topics(["orders"])
///     .build_blocking()?;
/// producer.send(BaseRecord::to("orders").key("customer-42").payload("{}"), |outcome| {
///     match outcome {
///         Ok(d) => println!("partition {} offset {}", d.partition, d.offset),
///         Err(e) => eprintln!("failed: {e}"),
///     }
/// })?;
/// producer.close(std::time::Duration::from_secs(5))?;
/// # Ok(()) }
/// ```
///
/// [`AsyncSmartProducer`]: crate::AsyncSmartProducer
/// [`build_blocking`]: AsyncSmartProducerBuilder::build_blocking
pub struct SmartProducer {
    producer: ThreadedProducer<CallbackContext>,
    queue: LocalQueue,
    routing: Option<Routing>,
    metrics: SendMetrics,
    /// The runtime the monitor runs on: ours, or the one the producer was built in.
    handle: Handle,
    // Dropped last: the routing's tasks run on it.
    runtime: Option<RuntimeThread>,
}

impl SmartProducer {
    /// Starts configuring: the same builder as the async producer's; finish it with
    /// [`build_blocking`](AsyncSmartProducerBuilder::build_blocking).
    pub fn builder(kafka: ClientConfig) -> AsyncSmartProducerBuilder {
        AsyncSmartProducerBuilder::new(kafka)
    }

    /// Hands `record` to librdkafka; `on_delivery` runs (on librdkafka's polling thread) with
    /// where it landed or why it failed. Returns how it was routed.
    ///
    /// Waits up to `queue_timeout` for room when the local queue is full (not on a one-thread
    /// Tokio runtime's thread, nor inside one of this producer's callbacks: see the type's
    /// documentation).
    ///
    /// # Errors
    ///
    /// Fails at once, handing the record back inside the error (and dropping `on_delivery`
    /// unrun), when librdkafka refuses it or the queue stayed full.
    pub fn send<K, P, F>(
        &self,
        record: BaseRecord<'_, K, P>,
        on_delivery: F,
    ) -> Result<Route, ProduceError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
        F: FnOnce(DeliveryOutcome) + Send + 'static,
    {
        let payload = record.payload.map_or(0, |p| p.to_bytes().len());
        let Some(room) = self.reserve(payload) else {
            let route = self.decide(&record).route;
            let full = KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull);
            return Err(ProduceError::refused(full, parts(&record), route));
        };
        let routed = self.route(&record, payload);
        let mut route = routed.decision.route;
        let opaque = Box::new(Opaque {
            route,
            callback: Mutex::new(Some(Box::new(on_delivery))),
            _room: Some(room),
        });
        let mut routed_record = BaseRecord::with_opaque_to(record.topic, opaque);
        routed_record.partition = routed.decision.partition;
        routed_record.key = record.key;
        routed_record.payload = record.payload;
        routed_record.timestamp = record.timestamp;
        routed_record.headers = record.headers;
        let may_resend = routed.may_resend_unpartitioned();
        let sent = match self.producer.send(routed_record) {
            Ok(()) => Ok(()),
            Err((error, mut record)) if may_resend && is_unknown_partition(&error) => {
                // The cluster has partitions this producer's metadata does not know yet.
                route = Route::Fallback(Fallback::PartitionUnknownToProducer);
                record.partition = None;
                record.delivery_opaque.route = route;
                self.producer.send(record)
            }
            Err((error, record)) => {
                if routed.in_order && is_unknown_partition(&error) {
                    // Strict key order: the key must go where it was placed. Partitions were
                    // just added: refused, and librdkafka learns them for the next try (where
                    // this thread may wait for it).
                    if self.may_block() {
                        let fetch = || {
                            self.producer
                                .client()
                                .fetch_metadata(Some(record.topic), METADATA_TIMEOUT)
                        };
                        let _ = match Handle::try_current() {
                            Ok(current)
                                if current.runtime_flavor() == RuntimeFlavor::MultiThread =>
                            {
                                tokio::task::block_in_place(fetch)
                            }
                            _ => fetch(),
                        };
                    }
                }
                Err((error, record))
            }
        };
        let first_move = routed.first_move;
        // Enqueued (or refused): the key's next sends may follow.
        drop(routed);
        match sent {
            Ok(()) => {
                self.metrics.record(route, first_move);
                Ok(route)
            }
            Err((error, record)) => {
                let route = record.delivery_opaque.route;
                let parts = RecordParts {
                    topic: record.topic,
                    key: record.key,
                    payload: record.payload,
                    timestamp: record.timestamp,
                    partition: record.partition,
                    headers: record.headers,
                };
                Err(ProduceError::refused(error, parts, route))
            }
        }
    }

    /// Room in the local queue: at once, or waiting up to `queue_timeout` where blocking is
    /// allowed.
    fn reserve(&self, payload: usize) -> Option<OwnedReservation> {
        if let Some(room) = self.queue.try_reserve(payload) {
            return Some(room);
        }
        if self.queue.timeout().is_zero() || !self.may_block() {
            return None;
        }
        self.block_on(async {
            self.queue
                .reserve(payload)
                .await
                .map(crate::backpressure::Reservation::into_owned)
        })
    }

    fn route<K, P>(&self, record: &BaseRecord<'_, K, P>, payload: usize) -> Routed
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let Some(routing) = &self.routing else {
            return Routed::disabled(record.partition);
        };
        let key = record.key.map(ToBytes::to_bytes);
        let size = key.map_or(0, <[u8]>::len) + payload;
        match routing.route(record.topic, record.partition, key, size) {
            Pending::Ready(routed) => routed,
            #[cfg(feature = "redis")]
            Pending::InLine if key.is_some() => {
                let key = key.unwrap_or_default();
                if self.may_block() {
                    self.block_on(routing.route_in_line(record.topic, key, size))
                } else {
                    routing.route_without_waiting(record.topic, key, size)
                }
            }
            Pending::Held => {
                let key = key.unwrap_or_default();
                if self.may_block() {
                    self.block_on(routing.route_held(record.topic, key, size))
                } else {
                    routing.route_held_now(record.topic, key, size)
                }
            }
            // Only keyed messages (with Redis) have a line; decide as usual otherwise.
            Pending::InLine => Routed::plain(
                routing.peek(record.topic, record.partition, key, size),
                false,
            ),
        }
    }

    /// Where `record` would go now, without sending it.
    pub fn decide<K, P, D>(&self, record: &BaseRecord<'_, K, P, D>) -> Decision
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
        D: rdkafka::util::IntoOpaque,
    {
        match &self.routing {
            Some(routing) => {
                let key = record.key.map(ToBytes::to_bytes);
                let size =
                    key.map_or(0, <[u8]>::len) + record.payload.map_or(0, |p| p.to_bytes().len());
                routing.peek(record.topic, record.partition, key, size)
            }
            None => Routed::disabled(record.partition).decision,
        }
    }

    fn inspect(&self) -> Inspect<'_> {
        Inspect(self.routing.as_ref())
    }

    /// The partitions of `topic` new messages may go to now; `None` without fresh health.
    pub fn healthy_partitions(&self, topic: &str) -> Option<Vec<i32>> {
        self.inspect().healthy_partitions(topic)
    }

    /// The health of `topic`.
    pub fn topic_summary(&self, topic: &str) -> Option<TopicSummary> {
        self.inspect().topic_summary(topic)
    }

    /// The health of every watched topic, by topic name.
    pub fn health_summary(&self) -> Vec<TopicSummary> {
        self.inspect().health_summary()
    }

    /// The current health snapshot (empty when smart routing is disabled).
    pub fn health(&self) -> Arc<HealthSnapshot> {
        self.inspect().health()
    }

    /// The monitor's counters and last outcome; `None` when smart routing is disabled.
    pub fn monitor_stats(&self) -> Option<MonitorStats> {
        self.inspect().monitor_stats()
    }

    /// Whether the health monitor runs; `None` when smart routing is disabled.
    pub fn monitor_status(&self) -> Option<MonitorStatus> {
        self.inspect().monitor_status()
    }

    /// How the Redis L2 is doing; `None` without one.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis_status(&self) -> Option<crate::redis::RedisStatus> {
        self.inspect().redis_status()
    }

    /// The router, for inspection.
    pub fn router(&self) -> Option<&Router> {
        self.routing.as_ref().map(|r| &*r.router)
    }

    /// Collects lag now (blocks until the new snapshot is published).
    ///
    /// # Errors
    ///
    /// As [`AsyncSmartProducer::refresh_health`](crate::AsyncSmartProducer::refresh_health).
    pub fn refresh_health(&self) -> MonitorResult<u64> {
        let monitor = self.inspect().monitor()?.clone();
        self.block_on_if_allowed(async move { monitor.refresh_now().await })
            .unwrap_or(Err(MonitorError::WouldBlock))
    }

    /// Messages that can still be handed to librdkafka without waiting for room (`None`: no
    /// count limit).
    pub fn queue_room(&self) -> Option<usize> {
        self.queue.available_messages()
    }

    /// Waits until every message sent so far is delivered or failed, at most `timeout`.
    ///
    /// # Errors
    ///
    /// librdkafka's `OperationTimedOut` when messages are still in flight after `timeout`.
    pub fn flush(&self, timeout: Duration) -> KafkaResult<()> {
        self.producer.flush(timeout)
    }

    /// Stops the health monitor (with Redis, handing a fleet's lease over and closing the
    /// connections, each step at most `command_timeout`) and flushes, at most `timeout` for
    /// the flush.
    ///
    /// # Errors
    ///
    /// As [`flush`](Self::flush).
    pub fn close(&self, timeout: Duration) -> KafkaResult<()> {
        if let Some(routing) = &self.routing {
            let monitor = routing.monitor.clone();
            #[cfg(feature = "redis")]
            let l2 = routing.l2.as_ref().map(crate::redis::L2::stopper);
            let stop = async move {
                #[cfg(feature = "redis")]
                if let Some(l2) = l2 {
                    l2.stop().await;
                }
                monitor.shutdown().await
            };
            // On a one-thread runtime's own thread, the stop runs in the background.
            if let Some(Err(error)) = self.block_on_if_allowed(stop) {
                tracing::warn!(%error, "the health monitor had failed");
            }
        }
        self.flush(timeout)
    }

    /// The underlying rdkafka producer.
    pub fn inner(&self) -> &ThreadedProducer<CallbackContext> {
        &self.producer
    }

    /// Waits for `future` on the monitor's runtime. Callers check [`may_block`] first where
    /// they can do without waiting.
    fn block_on<F: Future>(&self, future: F) -> F::Output {
        match Handle::try_current() {
            // A worker (or blocking) thread of a multi-thread runtime: hand the worker's other
            // tasks over while this thread waits.
            Ok(current) if current.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| self.handle.block_on(future))
            }
            _ => self.handle.block_on(future),
        }
    }

    /// Whether this thread may wait: not on a one-thread runtime's thread (the one that would
    /// have to run what it waits for), nor inside one of this producer's callbacks (on
    /// librdkafka's polling thread, whose delivery callbacks are what give queue room back and
    /// report what was written). A plain thread, or a thread of a multi-thread runtime (via
    /// `block_in_place`), may.
    fn may_block(&self) -> bool {
        IN_CALLBACK_OF.get() != self.producer.context().id
            && Handle::try_current()
                .map_or(true, |h| h.runtime_flavor() == RuntimeFlavor::MultiThread)
    }

    /// Like [`block_on`](Self::block_on) where blocking is allowed; otherwise `future` is left
    /// to run on its own and `None` comes back at once.
    fn block_on_if_allowed<F>(&self, future: F) -> Option<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        if self.may_block() {
            Some(self.block_on(future))
        } else {
            drop(self.handle.spawn(future));
            None
        }
    }
}

thread_local! {
    /// The producer whose callback this thread runs now (its [`CallbackContext::id`]); 0 for
    /// none.
    static IN_CALLBACK_OF: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Marks this thread as running a callback of producer `id`, until dropped (also on a panic).
struct InCallback(u64);

impl InCallback {
    fn enter(id: u64) -> Self {
        Self(IN_CALLBACK_OF.replace(id))
    }
}

impl Drop for InCallback {
    fn drop(&mut self) {
        IN_CALLBACK_OF.set(self.0);
    }
}

fn parts<'a, K, P, D>(record: &BaseRecord<'a, K, P, D>) -> RecordParts<'a, K, P>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
    D: rdkafka::util::IntoOpaque,
{
    RecordParts {
        topic: record.topic,
        key: record.key,
        payload: record.payload,
        timestamp: record.timestamp,
        partition: record.partition,
        headers: record.headers.clone(),
    }
}

/// Runs each message's delivery callback, and hands librdkafka's statistics to the callback
/// given to the builder's [`statistics`](crate::AsyncSmartProducerBuilder::statistics).
#[derive(Default)]
pub struct CallbackContext {
    statistics: Option<crate::context::OnStatistics>,
    /// This producer, to its callbacks: a send from one of them never waits (see
    /// [`SmartProducer::may_block`]).
    id: u64,
}

impl std::fmt::Debug for CallbackContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackContext")
            .field("statistics", &self.statistics.is_some())
            .finish()
    }
}

impl ClientContext for CallbackContext {
    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        let _in_callback = InCallback::enter(self.id);
        crate::context::on_statistics(self.statistics.as_ref(), &statistics);
    }
}

impl ProducerContext for CallbackContext {
    type DeliveryOpaque = Box<Opaque>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Self::DeliveryOpaque) {
        let route = opaque.route;
        let callback = opaque
            .callback
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(callback) = callback else {
            return;
        };
        let outcome = match result {
            Ok(m) => Ok(Delivery {
                partition: m.partition(),
                offset: m.offset(),
                timestamp: m.timestamp(),
                route,
            }),
            Err((error, m)) => Err(ProduceError::new(
                error.clone(),
                Some(m.detach()),
                route,
                m.topic(),
            )),
        };
        // The room is given back when the opaque is dropped, after the callback.
        // A panicking callback must not take librdkafka's polling thread down with it.
        let run = std::panic::AssertUnwindSafe(|| {
            let _in_callback = InCallback::enter(self.id);
            callback(outcome);
        });
        if std::panic::catch_unwind(run).is_err() {
            tracing::error!("a delivery callback panicked");
        }
        drop(opaque);
    }
}

/// A one-thread Tokio runtime on its own thread, for producers built outside any runtime.
struct RuntimeThread {
    handle: Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RuntimeThread {
    fn start() -> Result<Self, BuildError> {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("ksp-monitor".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(runtime.handle().clone()));
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                runtime.shutdown_background();
            })
            .map_err(BuildError::Runtime)?;
        let handle = handle_rx
            .recv()
            .map_err(|_| BuildError::Runtime(std::io::Error::other("runtime thread exited")))?
            .map_err(BuildError::Runtime)?;
        Ok(Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for RuntimeThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take()
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
    }
}

impl AsyncSmartProducerBuilder {
    /// Builds the blocking [`SmartProducer`] instead of the async one.
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build); [`BuildError::Runtime`] if the monitor's own runtime thread
    /// cannot start.
    pub fn build_blocking(self) -> Result<SmartProducer, BuildError> {
        let runtime = match Handle::try_current() {
            Ok(_) => None,
            Err(_) => Some(RuntimeThread::start()?),
        };
        let handle = runtime
            .as_ref()
            .map_or_else(Handle::current, |r| r.handle.clone());
        let parts = {
            let _entered = handle.enter();
            self.into_parts()?
        };
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let producer: ThreadedProducer<CallbackContext, NoCustomPartitioner> = parts
            .kafka
            .create_with_context(CallbackContext {
                statistics: parts.statistics,
                id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            })
            .map_err(|source| BuildError::Kafka {
                context: "creating the rdkafka producer".into(),
                source,
            })?;
        Ok(SmartProducer {
            producer,
            queue: parts.queue,
            routing: parts.routing,
            metrics: SendMetrics::register(),
            handle,
            runtime,
        })
    }
}

impl fmt::Debug for SmartProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmartProducer")
            .field("smart_enabled", &self.routing.is_some())
            .field("router", &self.router())
            .field("own_runtime", &self.runtime.is_some())
            .finish_non_exhaustive()
    }
}
