//! The blocking reads a collection is made of, and their retry policy.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::metadata::Metadata;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tracing::{debug, warn};

use super::stats::ReaderContext;

/// A consumer that carries the watched group's id but never subscribes.
pub(crate) type Reader = BaseConsumer<ReaderContext>;

/// A lag reader, destroyed on a blocking thread when its last holder drops it inside a Tokio
/// runtime: dropping a consumer with a group id polls until it is closed, and librdkafka's
/// destroy then joins its threads, which must not stall an async worker. (A runtime shutting
/// down refuses the blocking thread: the reader is then destroyed where it is dropped.)
pub(crate) struct ReaderHandle(Option<Reader>);

impl ReaderHandle {
    pub(crate) fn new(reader: Reader) -> Self {
        Self(Some(reader))
    }
}

impl std::ops::Deref for ReaderHandle {
    type Target = Reader;

    fn deref(&self) -> &Reader {
        // Only `drop` takes it out.
        self.0
            .as_ref()
            .expect("the reader is present until dropped")
    }
}

impl Drop for ReaderHandle {
    fn drop(&mut self) {
        if let Some(reader) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(move || drop(reader))),
                Err(_) => drop(reader),
            }
        }
    }
}

/// Shortest time worth starting a request with.
const MIN_ATTEMPT: Duration = Duration::from_millis(5);

/// Up to this many watched topics, metadata is read one request per topic (in parallel);
/// above, one request for every topic of the cluster, filtered here. rust-rdkafka can ask for
/// one topic or for all, not for a list: a handful of requests is cheaper than the whole
/// cluster's metadata for a few topics, one request cheaper than hundreds.
pub(crate) const METADATA_PER_TOPIC_UP_TO: usize = 4;

/// Why one step of a collection failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("the refresh budget ran out")]
    OutOfBudget,
    #[error("a blocking client call failed: {0}")]
    Blocking(String),
}

impl ReadError {
    fn is_retriable(&self) -> bool {
        match self {
            Self::Kafka(e) => e.rdkafka_error_code().is_some_and(is_retriable),
            Self::OutOfBudget | Self::Blocking(_) => false,
        }
    }
}

/// Errors worth asking again for within the same refresh.
///
/// Not `UNSTABLE_OFFSET_COMMIT`: it answers a request for *stable* offsets while a
/// transactional commit is pending, which lasts as long as the transaction; retrying the whole
/// request would spend the refresh budget on it. The reader does not ask for stable offsets
/// (it reads with `read_uncommitted`), and a partition that still gets it is skipped for the
/// round.
pub(crate) fn is_retriable(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::NotLeaderForPartition
            | C::LeaderNotAvailable
            | C::NotCoordinator
            | C::CoordinatorLoadInProgress
            | C::CoordinatorNotAvailable
            | C::RequestTimedOut
            | C::OperationTimedOut
            | C::NetworkException
            | C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::UnknownLeaderEpoch
            | C::FencedLeaderEpoch
            | C::OffsetNotAvailable
            | C::NotEnoughReplicas
            | C::KafkaStorageError
    )
}

/// Runs the blocking `op` on Tokio's blocking pool, retrying retriable failures with
/// exponential backoff until `deadline`. `op` receives the timeout to use for its request.
pub(crate) async fn retrying<T, F>(
    what: &'static str,
    deadline: Instant,
    max_timeout: Duration,
    op: F,
) -> Result<T, ReadError>
where
    T: Send + 'static,
    F: Fn(Duration) -> Result<T, ReadError> + Send + Sync + 'static,
{
    let op = Arc::new(op);
    let attempt = || {
        let op = op.clone();
        async move {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining < MIN_ATTEMPT {
                return Err(ReadError::OutOfBudget);
            }
            let timeout = remaining.min(max_timeout);
            tokio::task::spawn_blocking(move || op(timeout))
                .await
                .map_err(|e| ReadError::Blocking(e.to_string()))?
        }
    };
    attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(20))
                .with_max_delay(Duration::from_millis(500))
                .with_max_times(16)
                .with_jitter(),
        )
        .when(|e: &ReadError| e.is_retriable())
        // Give up, with the last real error, when the next attempt would not fit in the budget
        // (otherwise the caller's timeout fires first and the error says only "timed out").
        .adjust(move |_, delay| delay.filter(|&d| Instant::now() + d + MIN_ATTEMPT < deadline))
        .notify(|e: &ReadError, after: Duration| debug!(what, error = %e, ?after, "retrying"))
        .await
}

/// Partitions of one topic, with their leader when it is available.
pub(crate) struct TopicLayout {
    pub(crate) topic: String,
    /// `(partition, leader)`; `leader` is `None` when unavailable.
    pub(crate) partitions: Vec<(i32, Option<i32>)>,
}

/// What metadata says of one watched topic.
pub(crate) enum Layout {
    /// Its partitions and leaders.
    Found(TopicLayout),
    /// It does not exist (yet): not reported, not an error.
    Missing,
    /// A topic-level error (authorization, say): this topic fails, the others do not.
    Failed(RDKafkaErrorCode),
}

/// Reads the layout of `topics` out of one metadata response.
pub(crate) fn layouts_from(metadata: &Metadata, topics: &[String]) -> Vec<(String, Layout)> {
    let live: HashSet<i32> = metadata.brokers().iter().map(|b| b.id()).collect();
    topics
        .iter()
        .map(|topic| {
            let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
                return (topic.clone(), Layout::Missing);
            };
            if let Some(error) = found.error() {
                let code = RDKafkaErrorCode::from(error);
                let layout = if code == RDKafkaErrorCode::UnknownTopicOrPartition {
                    Layout::Missing
                } else {
                    Layout::Failed(code)
                };
                return (topic.clone(), layout);
            }
            let partitions = found
                .partitions()
                .iter()
                .map(|p| {
                    let leader_lost = p.error().is_some_and(|e| {
                        RDKafkaErrorCode::from(e) == RDKafkaErrorCode::LeaderNotAvailable
                    });
                    let available = p.leader() >= 0 && live.contains(&p.leader()) && !leader_lost;
                    (p.id(), available.then_some(p.leader()))
                })
                .collect();
            let layout = TopicLayout {
                topic: topic.clone(),
                partitions,
            };
            (topic.clone(), Layout::Found(layout))
        })
        .collect()
}

/// Metadata of one topic (`Some`) or of the whole cluster (`None`).
pub(crate) fn read_metadata(
    reader: &Reader,
    topic: Option<&str>,
    timeout: Duration,
) -> Result<Metadata, ReadError> {
    Ok(reader.fetch_metadata(topic, timeout)?)
}

pub(crate) type Offsets = HashMap<(String, i32), i64>;

/// Reads offsets of `tpl`. A partition with an error of its own is left out (a retriable one
/// fails the read, so that it is retried).
pub(crate) fn read_offsets(
    tpl: &TopicPartitionList,
    call: impl FnOnce(TopicPartitionList) -> KafkaResult<TopicPartitionList>,
) -> Result<Offsets, ReadError> {
    let result = call(tpl.clone())?;
    let mut offsets = Offsets::new();
    for element in result.elements() {
        if let Err(error) = element.error() {
            if error.rdkafka_error_code().is_some_and(is_retriable) {
                return Err(error.into());
            }
            warn!(
                topic = element.topic(),
                partition = element.partition(),
                %error,
                "offsets of one partition could not be read this round",
            );
            continue;
        }
        if let Offset::Offset(offset) = element.offset() {
            offsets.insert((element.topic().to_owned(), element.partition()), offset);
        }
    }
    Ok(offsets)
}

/// One list of partitions per leader broker, each partition's offset set to `offset` (a
/// ListOffsets "timestamp": `End` for the high watermark, `Beginning` for the low one).
pub(crate) fn per_leader<'a>(
    partitions: impl Iterator<Item = (&'a str, i32, i32)>,
    offset: Offset,
) -> Vec<(i32, TopicPartitionList)> {
    let mut by_leader: BTreeMap<i32, TopicPartitionList> = BTreeMap::new();
    for (topic, partition, leader) in partitions {
        // Offset::End and Beginning are always valid here.
        let _ = by_leader
            .entry(leader)
            .or_default()
            .add_partition_offset(topic, partition, offset);
    }
    by_leader.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retriable_codes() {
        assert!(is_retriable(RDKafkaErrorCode::NotCoordinator));
        assert!(is_retriable(RDKafkaErrorCode::NotLeaderForPartition));
        assert!(!is_retriable(RDKafkaErrorCode::UnknownTopicOrPartition));
        assert!(!ReadError::OutOfBudget.is_retriable());
    }

    /// Regression: `UNSTABLE_OFFSET_COMMIT` lasts as long as the transaction whose offset
    /// commit is pending; it was retried for the whole request until the budget was gone.
    #[test]
    fn unstable_offset_commit_is_not_retried() {
        assert!(!is_retriable(RDKafkaErrorCode::UnstableOffsetCommit));
    }
}
