//! One collection: metadata, committed offsets, watermarks, put together per topic.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use futures::future::join_all;
use ksp_core::{CollectError, LagCollector, LagRequest, PartitionLag, TopicLag};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tracing::{debug, warn};

use super::reader::{
    Layout, METADATA_PER_TOPIC_UP_TO, Offsets, ReadError, ReaderHandle, TopicLayout, layouts_from,
    per_leader, read_metadata, read_offsets, retrying,
};
use super::{IsolationLevel, KafkaLagCollector};

/// The reader of committed offsets and high watermarks.
pub(super) const HIGH_WATERMARK_READER: &str = "read_uncommitted";
/// The reader of last stable offsets.
pub(super) const LSO_READER: &str = "read_committed";

impl KafkaLagCollector {
    /// The layout of every watched topic that exists and could be read. Topics fail one by
    /// one; only when every topic failed does the read fail.
    async fn layouts(
        &self,
        reader: &Arc<ReaderHandle>,
        topics: &[String],
        deadline: Instant,
    ) -> Result<Vec<TopicLayout>, CollectError> {
        let timeout = self.inner.request_timeout;
        let read = |topic: Option<String>| {
            let reader = reader.clone();
            retrying("metadata", deadline, timeout, move |t| {
                read_metadata(&reader, topic.as_deref(), t)
            })
        };
        let mut found: Vec<(String, Result<Layout, ReadError>)> = Vec::new();
        if topics.len() <= METADATA_PER_TOPIC_UP_TO {
            let reads = topics.iter().map(|topic| async move {
                let read = read(Some(topic.clone())).await;
                let layout = read.map(|metadata| {
                    layouts_from(&metadata, std::slice::from_ref(topic))
                        .pop()
                        .map_or(Layout::Missing, |(_, layout)| layout)
                });
                (topic.clone(), layout)
            });
            found.extend(join_all(reads).await);
        } else {
            let metadata = read(None)
                .await
                .map_err(|e| CollectError::source(format!("metadata of {topics:?}"), e))?;
            found.extend(
                layouts_from(&metadata, topics)
                    .into_iter()
                    .map(|(t, l)| (t, Ok(l))),
            );
        }
        let mut layouts = Vec::new();
        let mut failures = Vec::new();
        for (topic, layout) in found {
            match layout {
                Ok(Layout::Found(layout)) => layouts.push(layout),
                Ok(Layout::Missing) => debug!(%topic, "topic does not exist (yet); not reported"),
                Ok(Layout::Failed(code)) => {
                    failures.push((topic, ReadError::Kafka(KafkaError::MetadataFetch(code))));
                }
                Err(error) => failures.push((topic, error)),
            }
        }
        if layouts.is_empty()
            && let Some((topic, error)) = failures.pop()
        {
            return Err(CollectError::source(
                format!("metadata of `{topic}`"),
                error,
            ));
        }
        for (topic, error) in failures {
            warn!(
                %topic,
                %error,
                "metadata of one topic could not be read; its health is kept until it is stale",
            );
        }
        Ok(layouts)
    }

    /// Watermarks at `offset` for the given partitions, one request per leader, leaders in
    /// parallel. A failing leader only loses its own partitions, which count as unavailable
    /// this round; if every leader fails, the read fails as a whole (the monitor then keeps
    /// its last health rather than publishing a topic with nothing measured).
    async fn watermarks(
        &self,
        reader: &Arc<ReaderHandle>,
        lists: Vec<(i32, TopicPartitionList)>,
        deadline: Instant,
        what: &'static str,
    ) -> Result<Offsets, ReadError> {
        let reads = lists.into_iter().map(|(leader, tpl)| {
            let reader = reader.clone();
            async move {
                let read = retrying(what, deadline, self.inner.request_timeout, move |timeout| {
                    read_offsets(&tpl, |tpl| reader.offsets_for_times(tpl, timeout))
                })
                .await;
                (leader, read)
            }
        });
        let results = join_all(reads).await;
        let leaders = results.len();
        let mut offsets = Offsets::new();
        let mut failures = Vec::new();
        for (leader, read) in results {
            match read {
                Ok(read) => offsets.extend(read),
                Err(error) => failures.push((leader, error)),
            }
        }
        if leaders > 0 && failures.len() == leaders {
            return Err(failures.swap_remove(0).1);
        }
        for (leader, error) in failures {
            warn!(
                leader,
                %error,
                "{what} of one broker's partitions could not be read; they count as unavailable \
                 this round",
            );
        }
        Ok(offsets)
    }

    /// Offsets that only some partitions need (low watermarks, last stable offsets): without
    /// them those partitions lack a detail, the collection does not fail.
    async fn optional_watermarks(
        &self,
        reader: &Arc<ReaderHandle>,
        lists: Vec<(i32, TopicPartitionList)>,
        deadline: Instant,
        what: &'static str,
    ) -> Offsets {
        if lists.is_empty() {
            return Offsets::new();
        }
        self.watermarks(reader, lists, deadline, what)
            .await
            .unwrap_or_else(|error| {
                debug!(%error, "{what} could not be read this round");
                Offsets::new()
            })
    }
}

/// A budget that never runs out, and still adds to the clock without overflowing.
const NO_DEADLINE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

#[async_trait]
impl LagCollector for KafkaLagCollector {
    async fn collect(&self, request: &LagRequest<'_>) -> Result<Vec<TopicLag>, CollectError> {
        // A budget past what the clock can hold (`Duration::MAX`) means no deadline of its own.
        let deadline = Instant::now() + request.budget.min(NO_DEADLINE);
        let group = request.group;
        let reader = self.inner.reader(group, HIGH_WATERMARK_READER)?;
        let timeout = self.inner.request_timeout;

        let layouts = self.layouts(&reader, request.topics, deadline).await?;

        let read_at = SystemTime::now();
        let mut all = TopicPartitionList::new();
        for layout in &layouts {
            for &(partition, _) in &layout.partitions {
                all.add_partition(&layout.topic, partition);
            }
        }
        let available = || {
            layouts.iter().flat_map(|l| {
                l.partitions
                    .iter()
                    .filter_map(|&(p, leader)| leader.map(|leader| (l.topic.as_str(), p, leader)))
            })
        };
        let committed = {
            let reader = reader.clone();
            retrying("committed offsets", deadline, timeout, move |t| {
                read_offsets(&all, |tpl| reader.committed_offsets(tpl, t))
            })
        };
        let highs = self.watermarks(
            &reader,
            per_leader(available(), Offset::End),
            deadline,
            "high watermarks",
        );
        let (committed, highs) = futures::join!(committed, highs);
        let committed = committed.map_err(|e| {
            CollectError::source(format!("committed offsets of group `{group}`"), e)
        })?;
        let highs = highs.map_err(|e| {
            CollectError::source(format!("high watermarks of {:?}", request.topics), e)
        })?;

        let uncommitted =
            available().filter(|(topic, p, _)| !committed.contains_key(&((*topic).to_owned(), *p)));
        let lows = per_leader(uncommitted, Offset::Beginning);
        let lows = self.optional_watermarks(&reader, lows, deadline, "low watermarks");
        let stable = async {
            if self.inner.isolation != IsolationLevel::ReadCommitted {
                return Ok(Offsets::new());
            }
            let reader = self.inner.reader(group, LSO_READER)?;
            let lists = per_leader(available(), Offset::End);
            let offsets = self
                .optional_watermarks(&reader, lists, deadline, "last stable offsets")
                .await;
            let _ = reader.poll(Duration::ZERO);
            Ok::<_, CollectError>(offsets)
        };
        let (lows, stable) = futures::join!(lows, stable);
        let stable = stable?;

        // Serve librdkafka's queued events (statistics, errors) for this reader.
        let _ = reader.poll(Duration::ZERO);

        Ok(layouts
            .into_iter()
            .map(|layout| {
                let partitions = layout
                    .partitions
                    .iter()
                    .map(|&(partition, leader)| {
                        let key = (layout.topic.clone(), partition);
                        let committed = committed.get(&key).copied();
                        match (leader, highs.get(&key)) {
                            (Some(_), Some(&high)) => {
                                let mut lag = PartitionLag::from_offsets(
                                    partition,
                                    committed,
                                    lows.get(&key).copied(),
                                    high,
                                );
                                lag.last_stable_offset = stable.get(&key).copied();
                                lag
                            }
                            _ => {
                                let mut lag = PartitionLag::unavailable(partition);
                                lag.committed = committed;
                                lag
                            }
                        }
                    })
                    .collect();
                TopicLag::new(layout.topic, partitions, read_at)
            })
            .collect())
    }

    fn name(&self) -> &str {
        "kafka"
    }

    /// Closes the lag readers of `group` (each a librdkafka client, with a thread per broker
    /// and its connections): destroyed on a blocking thread once no refresh in flight holds
    /// them. The next `collect` for `group` opens them again;
    /// [`request_counts`](KafkaLagCollector::request_counts) keeps counting the closed ones.
    fn idle(&self, group: &str) {
        self.inner.close_readers(group);
    }
}
