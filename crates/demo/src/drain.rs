//! A real consumer that drains each partition at its own pace.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::{DemoResult, kafka_error};

/// How often the drain loop wakes up.
const TICK: Duration = Duration::from_millis(5);

/// A consumer of one topic for one group that reads each partition at a fixed rate and
/// commits what it read, so that the group's lag behaves like that of a real service with
/// one slow instance.
///
/// It assigns itself every partition (no group join, no rebalance delay), resumes from the
/// group's committed offsets (or the beginning), and runs on its own thread until dropped or
/// [`stop`](Self::stop)ped.
pub struct DrainingConsumer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<DrainStats>,
    /// Each partition's rate, messages per second (`f64` bits): settable while it runs.
    rates: Arc<[AtomicU64]>,
}

struct DrainStats {
    consumed: Vec<AtomicU64>,
    /// Each message read: where, when produced, and how long it waited.
    samples: Mutex<Vec<ReadSample>>,
}

/// One message read by a [`DrainingConsumer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadSample {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its produce timestamp, in milliseconds since the Unix epoch.
    pub produced_at_ms: i64,
    /// End-to-end latency: produce timestamp → read, in milliseconds.
    pub latency_ms: u32,
}

impl DrainingConsumer {
    /// Starts configuring a drain of `partitions` partitions of `topic` for `group`.
    pub fn builder(
        kafka: &ClientConfig,
        group: &str,
        topic: &str,
        partitions: i32,
    ) -> DrainingConsumerBuilder {
        DrainingConsumerBuilder {
            kafka: kafka.clone(),
            group: group.to_owned(),
            topic: topic.to_owned(),
            rates: vec![f64::INFINITY; partitions.max(0) as usize],
            commit_interval: Duration::from_millis(100),
        }
    }

    /// From now on, `partition` is read at `per_second` messages per second (0 stalls it,
    /// `f64::INFINITY` reads as fast as possible). Unknown partitions are ignored.
    pub fn set_partition_rate(&self, partition: i32, per_second: f64) {
        if let Some(rate) = usize::try_from(partition)
            .ok()
            .and_then(|p| self.rates.get(p))
        {
            rate.store(per_second.max(0.0).to_bits(), Ordering::Relaxed);
        }
    }

    /// Each partition's current rate, messages per second.
    pub fn partition_rates(&self) -> Vec<f64> {
        self.rates
            .iter()
            .map(|r| f64::from_bits(r.load(Ordering::Relaxed)))
            .collect()
    }

    /// Messages read so far, per partition.
    pub fn consumed(&self) -> Vec<u64> {
        self.stats
            .consumed
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// End-to-end latencies (produce timestamp to read) seen so far, in milliseconds, and
    /// clears them.
    pub fn take_latencies_ms(&self) -> Vec<u32> {
        self.take_consumed().iter().map(|c| c.latency_ms).collect()
    }

    /// Every message read so far (partition, produce time, latency), and clears them.
    pub fn take_consumed(&self) -> Vec<ReadSample> {
        std::mem::take(
            &mut *self
                .stats
                .samples
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Stops reading (after a last commit) and waits for the thread to end.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for DrainingConsumer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl fmt::Debug for DrainingConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DrainingConsumer")
            .field("consumed", &self.consumed())
            .finish_non_exhaustive()
    }
}

/// Configures a [`DrainingConsumer`].
#[derive(Debug)]
#[must_use = "a builder does nothing until `start` is called"]
pub struct DrainingConsumerBuilder {
    kafka: ClientConfig,
    group: String,
    topic: String,
    rates: Vec<f64>,
    commit_interval: Duration,
}

impl DrainingConsumerBuilder {
    /// Every partition is read at `per_second` messages per second (default: as fast as
    /// possible).
    pub fn rate(mut self, per_second: f64) -> Self {
        self.rates.iter_mut().for_each(|r| *r = per_second);
        self
    }

    /// `partition` is read at `per_second` messages per second.
    pub fn partition_rate(mut self, partition: i32, per_second: f64) -> Self {
        if let Some(rate) = self.rates.get_mut(partition as usize) {
            *rate = per_second;
        }
        self
    }

    /// How often read offsets are committed. Default 100 ms.
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval;
        self
    }

    /// Assigns the partitions and starts draining on a new thread.
    pub fn start(self) -> DemoResult<DrainingConsumer> {
        let consumer: BaseConsumer = self
            .kafka
            .clone()
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            // Fetch as soon as anything is there: the latencies it reports should be the
            // queueing behind a slow consumer, not the broker's fetch wait.
            .set("fetch.wait.max.ms", "10")
            .create()
            .map_err(kafka_error("creating the draining consumer"))?;
        let consumer = Arc::new(consumer);
        let mut assignment = TopicPartitionList::new();
        for partition in 0..self.rates.len() as i32 {
            assignment
                .add_partition_offset(&self.topic, partition, Offset::Stored)
                .map_err(kafka_error("building the assignment"))?;
        }
        consumer
            .assign(&assignment)
            .map_err(kafka_error("assigning partitions"))?;
        let queues = (0..self.rates.len() as i32)
            .map(|p| consumer.split_partition_queue(&self.topic, p))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                kafka_error("splitting partition queues")(rdkafka::error::KafkaError::Canceled)
            })?;

        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(DrainStats {
            consumed: self.rates.iter().map(|_| AtomicU64::new(0)).collect(),
            samples: Mutex::default(),
        });
        let rates: Arc<[AtomicU64]> = self
            .rates
            .iter()
            .map(|r| AtomicU64::new(r.to_bits()))
            .collect();
        let thread = {
            let stop = stop.clone();
            let stats = stats.clone();
            let topic = self.topic;
            let rates = rates.clone();
            let commit_interval = self.commit_interval;
            std::thread::Builder::new()
                .name("ksp-drain".into())
                .spawn(move || {
                    let mut budget = vec![0.0f64; rates.len()];
                    let mut next: Vec<Option<i64>> = vec![None; rates.len()];
                    let mut last = Instant::now();
                    let mut last_commit = Instant::now();
                    let commit = |next: &[Option<i64>]| {
                        let mut tpl = TopicPartitionList::new();
                        for (p, offset) in next.iter().enumerate() {
                            if let Some(offset) = offset {
                                let _ = tpl.add_partition_offset(
                                    &topic,
                                    p as i32,
                                    Offset::Offset(*offset),
                                );
                            }
                        }
                        if tpl.count() > 0 {
                            let _ = consumer.commit(&tpl, CommitMode::Sync);
                        }
                    };
                    while !stop.load(Ordering::Relaxed) {
                        // Serves events; messages all go to the partition queues.
                        let _ = consumer.poll(Duration::ZERO);
                        let now = Instant::now();
                        let dt = now.duration_since(last).as_secs_f64();
                        last = now;
                        for (p, queue) in queues.iter().enumerate() {
                            // A burst allowance of 100 ms keeps an idle partition from
                            // saving up reads.
                            let rate = f64::from_bits(rates[p].load(Ordering::Relaxed));
                            budget[p] = if rate.is_finite() {
                                (budget[p] + rate * dt).min(rate * 0.1 + 1.0)
                            } else {
                                f64::MAX
                            };
                            let mut latencies = Vec::new();
                            while budget[p] >= 1.0 {
                                match queue.poll(Duration::ZERO) {
                                    Some(Ok(message)) => {
                                        next[p] = Some(message.offset() + 1);
                                        budget[p] -= 1.0;
                                        stats.consumed[p].fetch_add(1, Ordering::Relaxed);
                                        if let Some(ts) = message.timestamp().to_millis() {
                                            let now_ms = SystemTime::now()
                                                .duration_since(UNIX_EPOCH)
                                                .map_or(0, |d| d.as_millis() as i64);
                                            latencies.push(ReadSample {
                                                partition: p as i32,
                                                offset: message.offset(),
                                                produced_at_ms: ts,
                                                latency_ms: (now_ms - ts)
                                                    .clamp(0, i64::from(u32::MAX))
                                                    as u32,
                                            });
                                        }
                                    }
                                    _ => break,
                                }
                            }
                            if !latencies.is_empty() {
                                stats
                                    .samples
                                    .lock()
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .extend(latencies);
                            }
                        }
                        if last_commit.elapsed() >= commit_interval {
                            commit(&next);
                            last_commit = Instant::now();
                        }
                        std::thread::sleep(TICK);
                    }
                    commit(&next);
                })?
        };
        Ok(DrainingConsumer {
            stop,
            thread: Some(thread),
            stats,
            rates,
        })
    }
}
