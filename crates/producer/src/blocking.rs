//! [`SmartProducer`]: the blocking flavour, over rdkafka's `ThreadedProducer`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ksp_monitor::MonitorHandle;
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, ToBytes};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, NoCustomPartitioner, Producer, ProducerContext, ThreadedProducer,
};
use rdkafka::{ClientConfig, ClientContext};
use tokio_util::task::AbortOnDropHandle;

use crate::error::{ProduceError, ProducerError, ProducerResult};
use crate::producer::{AsyncSmartProducerBuilder, Delivery, is_unknown_partition, owned_message};
use crate::router::{Decision, Fallback, Route, Router};

/// What a [`SmartProducer::send`] callback receives.
pub type DeliveryOutcome = Result<Delivery, ProduceError>;

type Callback = Box<dyn FnOnce(DeliveryOutcome) + Send + 'static>;

/// What travels with a message through librdkafka: its route and its callback (in a mutex
/// only because librdkafka's opaque must be `Sync`; it is taken exactly once).
type Opaque = Box<(Route, std::sync::Mutex<Option<Callback>>)>;

/// A Kafka producer for code without an async runtime: [`AsyncSmartProducer`]'s routing over
/// rdkafka's `ThreadedProducer`, whose own thread serves delivery reports.
///
/// Built from the same [`AsyncSmartProducerBuilder`] (`SmartProducer::builder` is
/// `AsyncSmartProducer::builder`, finished with [`build_blocking`]). The health monitor needs a
/// Tokio runtime: inside one, it runs there; otherwise the producer starts a one-thread runtime
/// of its own (thread `ksp-monitor`), stopped by [`close`](Self::close) or on drop.
///
/// ```no_run
/// use ksp_producer::SmartProducer;
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
    router: Option<Arc<Router>>,
    monitor: Option<MonitorHandle>,
    // Dropped before the runtime that runs them.
    _follower: Option<AbortOnDropHandle<()>>,
    #[cfg(feature = "redis")]
    _l2: Option<crate::l2::L2>,
    runtime: Option<RuntimeThread>,
}

impl SmartProducer {
    /// Starts configuring: the same builder as the async producer's; finish it with
    /// [`build_blocking`](AsyncSmartProducerBuilder::build_blocking).
    pub fn builder(kafka: ClientConfig) -> AsyncSmartProducerBuilder {
        crate::AsyncSmartProducer::builder(kafka)
    }

    /// Hands `record` to librdkafka; `on_delivery` runs (on librdkafka's polling thread) with
    /// where it landed or why it failed. Returns how it was routed.
    ///
    /// Fails at once, handing the record back inside the error (and dropping `on_delivery`
    /// unrun), when librdkafka refuses it, e.g. because its local queue is full: there is no
    /// hidden wait.
    // The error hands the message back, as rdkafka's own `send` does; boxing it would cost an
    // allocation on every refused send for no gain.
    #[allow(clippy::result_large_err)]
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
        let decision = self.decide(&record);
        let route = decision.route;
        let topic = record.topic;
        let callback: Callback = Box::new(move |outcome: DeliveryOutcome| {
            on_delivery(outcome.map(|d| Delivery { route, ..d }));
        });
        let mut routed = BaseRecord::with_opaque_to(
            topic,
            Box::new((route, std::sync::Mutex::new(Some(callback)))) as Opaque,
        );
        routed.partition = decision.partition;
        routed.key = record.key;
        routed.payload = record.payload;
        routed.timestamp = record.timestamp;
        routed.headers = record.headers;
        match self.producer.send(routed) {
            Ok(()) => Ok(route),
            Err((error, mut record))
                if route != Route::Explicit && is_unknown_partition(&error) =>
            {
                // The cluster has partitions this producer's metadata does not know yet.
                let fallback = Route::Fallback(Fallback::PartitionUnknownToProducer);
                record.partition = None;
                record.delivery_opaque.0 = fallback;
                self.producer
                    .send(record)
                    .map(|()| fallback)
                    .map_err(|(error, record)| refused(error, record))
            }
            Err((error, record)) => Err(refused(error, record)),
        }
    }

    /// Where `record` would go now, without sending it.
    pub fn decide<K, P, D>(&self, record: &BaseRecord<'_, K, P, D>) -> Decision
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
        D: rdkafka::util::IntoOpaque,
    {
        match &self.router {
            Some(router) => {
                let key = record.key.map(ToBytes::to_bytes);
                let size =
                    key.map_or(0, <[u8]>::len) + record.payload.map_or(0, |p| p.to_bytes().len());
                router.route(record.topic, record.partition, key, size)
            }
            None if record.partition.is_some() => Decision {
                partition: record.partition,
                route: Route::Explicit,
            },
            None => Decision {
                partition: None,
                route: Route::Fallback(Fallback::Disabled),
            },
        }
    }

    /// The partitions of `topic` new messages may go to now; `None` without fresh health.
    pub fn healthy_partitions(&self, topic: &str) -> Option<Vec<i32>> {
        let router = self.router.as_ref()?;
        let snapshot = router.feed().load_full();
        snapshot
            .topic(topic)
            .filter(|t| !t.is_stale())
            .map(|t| t.routable_partitions().to_vec())
    }

    /// The health of `topic`.
    pub fn topic_summary(&self, topic: &str) -> Option<crate::TopicSummary> {
        let snapshot = self.router.as_ref()?.feed().load_full();
        snapshot
            .topic(topic)
            .map(|t| crate::TopicSummary::new(snapshot.version(), t))
    }

    /// Collects lag now (blocks until the new snapshot is published).
    pub fn refresh_health(&self) -> ProducerResult<u64> {
        let monitor = self
            .monitor
            .as_ref()
            .ok_or(ProducerError::SmartRoutingDisabled)?;
        Ok(self.block_on(monitor.refresh_now())?)
    }

    /// Waits until every message sent so far is delivered or failed, at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> ProducerResult<()> {
        self.producer
            .flush(timeout)
            .map_err(|source| ProducerError::Kafka {
                context: format!("flush did not complete within {timeout:?}"),
                source,
            })
    }

    /// Stops the health monitor and flushes, at most `timeout` for the flush.
    pub fn close(&self, timeout: Duration) -> ProducerResult<()> {
        let stopped = match &self.monitor {
            Some(monitor) => self.block_on(monitor.shutdown()),
            None => Ok(()),
        };
        self.flush(timeout)?;
        Ok(stopped?)
    }

    /// The underlying rdkafka producer.
    pub fn inner(&self) -> &ThreadedProducer<CallbackContext> {
        &self.producer
    }

    fn block_on<F: Future>(&self, future: F) -> F::Output {
        match &self.runtime {
            Some(runtime) => runtime.handle.block_on(future),
            // Built inside a runtime: the caller is expected to be on a thread that may block
            // (not an async worker), as for any blocking API.
            None => block_on_here(future),
        }
    }
}

/// Drives a future to completion on this thread (the future's I/O runs on the runtime the
/// monitor lives on; here we only wait for answers from it).
fn block_on_here<F: Future>(future: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime can always be built");
    runtime.block_on(future)
}

#[allow(clippy::result_large_err)]
fn refused<K, P>(error: KafkaError, record: BaseRecord<'_, K, P, Opaque>) -> ProduceError
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    let message = owned_message(
        record.topic,
        record.key,
        record.payload,
        record.timestamp,
        record.partition,
        record.headers,
    );
    ProduceError {
        error,
        message: Some(message),
        route: record.delivery_opaque.0,
        topic: record.topic.to_owned(),
    }
}

/// Runs each message's delivery callback.
#[derive(Debug, Default)]
pub struct CallbackContext;

impl ClientContext for CallbackContext {}

impl ProducerContext for CallbackContext {
    type DeliveryOpaque = Opaque;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Self::DeliveryOpaque) {
        let (route, callback) = *opaque;
        let Some(callback) = callback.into_inner().unwrap_or_else(|p| p.into_inner()) else {
            return;
        };
        let outcome = match result {
            Ok(m) => Ok(Delivery {
                partition: m.partition(),
                offset: m.offset(),
                timestamp: m.timestamp(),
                route,
            }),
            Err((error, m)) => Err(ProduceError {
                error: error.clone(),
                message: Some(m.detach()),
                route,
                topic: m.topic().to_owned(),
            }),
        };
        // A panicking callback must not take librdkafka's polling thread down with it.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| callback(outcome))).is_err() {
            tracing::error!("a delivery callback panicked");
        }
    }
}

/// A one-thread Tokio runtime on its own thread, for producers built outside any runtime.
struct RuntimeThread {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RuntimeThread {
    fn start() -> ProducerResult<Self> {
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
            .map_err(runtime_error)?;
        let handle = handle_rx
            .recv()
            .map_err(|_| runtime_error(std::io::Error::other("runtime thread exited")))?
            .map_err(runtime_error)?;
        Ok(Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

fn runtime_error(e: std::io::Error) -> ProducerError {
    ProducerError::Kafka {
        context: format!("starting the monitor's runtime thread: {e}"),
        source: KafkaError::Canceled,
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
    pub fn build_blocking(self) -> ProducerResult<SmartProducer> {
        let runtime = match tokio::runtime::Handle::try_current() {
            Ok(_) => None,
            Err(_) => Some(RuntimeThread::start()?),
        };
        let parts = {
            let _entered = runtime.as_ref().map(|r| r.handle.enter());
            self.into_parts()?
        };
        let producer: ThreadedProducer<CallbackContext, NoCustomPartitioner> = parts
            .kafka
            .create_with_context(CallbackContext)
            .map_err(|source| ProducerError::Kafka {
                context: "creating the rdkafka producer".into(),
                source,
            })?;
        let (router, monitor, follower, l2) = match parts.routing {
            Some(r) => (Some(r.router), Some(r.monitor), Some(r.follower), r.l2),
            None => (None, None, None, None),
        };
        #[cfg(not(feature = "redis"))]
        let _: Option<()> = l2;
        Ok(SmartProducer {
            producer,
            router,
            monitor,
            _follower: follower,
            #[cfg(feature = "redis")]
            _l2: l2,
            runtime,
        })
    }
}

impl fmt::Debug for SmartProducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmartProducer")
            .field("smart_enabled", &self.router.is_some())
            .field("router", &self.router)
            .field("own_runtime", &self.runtime.is_some())
            .finish_non_exhaustive()
    }
}
