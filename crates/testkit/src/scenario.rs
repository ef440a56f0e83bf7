//! Putting a consumer group into a chosen lag.

use rdkafka::ClientConfig;

use crate::{TestkitResult, commit_offsets, produce_counts};

/// A topic's messages and a group's committed offsets, to reach a chosen lag per partition.
///
/// ```no_run
/// # async fn demo(kafka: &rdkafka::ClientConfig) -> ksp_testkit::TestkitResult<()> {
/// // Partition 2 lags 500 messages behind; the others are caught up.
/// ksp_testkit::LagScenario::new("orders", 4)
///     .lag(2, 500)
///     .apply(kafka, "order-processors")
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct LagScenario {
    topic: String,
    produced: Vec<u64>,
    committed: Vec<Option<i64>>,
}

impl LagScenario {
    /// A scenario for `partitions` partitions of `topic`; by default each partition gets 10
    /// messages, all consumed (lag 0).
    pub fn new(topic: impl Into<String>, partitions: usize) -> Self {
        Self {
            topic: topic.into(),
            produced: vec![10; partitions],
            committed: vec![Some(10); partitions],
        }
    }

    /// `partition` has `lag` messages waiting (its committed offset is that far behind).
    #[must_use]
    pub fn lag(mut self, partition: usize, lag: u64) -> Self {
        let produced = self.produced[partition].max(lag);
        self.produced[partition] = produced;
        self.committed[partition] = Some((produced - lag) as i64);
        self
    }

    /// `partition` gets `produced` messages and the group has no committed offset there.
    #[must_use]
    pub fn uncommitted(mut self, partition: usize, produced: u64) -> Self {
        self.produced[partition] = produced;
        self.committed[partition] = None;
        self
    }

    /// `partition` gets `produced` messages and the group committed `committed`.
    #[must_use]
    pub fn offsets(mut self, partition: usize, produced: u64, committed: i64) -> Self {
        self.produced[partition] = produced;
        self.committed[partition] = Some(committed);
        self
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Partitions of the topic.
    pub fn partitions(&self) -> usize {
        self.produced.len()
    }

    /// Messages produced to each partition.
    pub fn produced(&self) -> &[u64] {
        &self.produced
    }

    /// The group's committed offset of each partition.
    pub fn committed(&self) -> &[Option<i64>] {
        &self.committed
    }

    /// The lag each partition ends up with.
    pub fn expected_lags(&self) -> Vec<i64> {
        self.produced
            .iter()
            .zip(&self.committed)
            .map(|(&p, c)| p as i64 - c.unwrap_or(0))
            .collect()
    }

    /// Creates the topic on `kafka` with the scenario's partition count, then
    /// [`apply`](Self::apply)s the scenario.
    pub async fn create(&self, kafka: &crate::MockKafka, group: &str) -> TestkitResult<()> {
        kafka.create_topic(&self.topic, self.produced.len() as i32)?;
        self.apply(&kafka.client_config(), group).await
    }

    /// Produces the messages and commits the offsets. The topic must exist.
    pub async fn apply(&self, kafka: &ClientConfig, group: &str) -> TestkitResult<()> {
        produce_counts(kafka, &self.topic, &self.produced).await?;
        let offsets: Vec<(i32, i64)> = self
            .committed
            .iter()
            .enumerate()
            .filter_map(|(p, c)| c.map(|c| (p as i32, c)))
            .collect();
        if !offsets.is_empty() {
            commit_offsets(kafka, group, &self.topic, &offsets)?;
        }
        Ok(())
    }
}
