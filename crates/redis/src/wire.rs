//! The shared health snapshot as it is stored in Redis: versioned, language-neutral JSON.
//!
//! The schema is documented in `docs/redis.md`. A reader accepts only `version` 2 and ignores
//! fields it does not know (a later minor addition must stay readable); everything else about a
//! payload is checked before it is used, and a payload that fails a check is never applied.
//!
//! Nothing in it needs two machines' clocks to agree: each topic says how old its offsets were
//! when published, measured on the publisher's own clock, and Redis stamps the publication with
//! its own clock (see `docs/redis.md`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ksp_core::{PartitionLag, TopicHealth, TopicLag};
use serde::{Deserialize, Serialize};

/// The schema name carried by every payload.
pub const SCHEMA: &str = "kafka-smart-producer/health";
/// The schema version this crate writes and reads.
pub const VERSION: u32 = 2;
/// Payloads larger than this are refused before parsing.
pub const MAX_PAYLOAD_BYTES: usize = 32 << 20;

/// One published snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotPayload {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// Always [`VERSION`].
    pub version: u32,
    /// The consumer group the lags are for.
    pub group: String,
    /// The instance that collected it.
    pub publisher: String,
    /// The publisher's leadership term (each new leader's is higher than the last one's).
    pub term: u64,
    /// Its publications within the term, from 1: with `term`, orders snapshots.
    pub sequence: u64,
    /// When it was published, milliseconds since the Unix epoch, on the publisher's clock
    /// (informational: freshness never compares it with another clock).
    pub published_at_ms: u64,
    /// One entry per topic.
    pub topics: Vec<TopicPayload>,
}

/// One topic of a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicPayload {
    /// Topic name.
    pub topic: String,
    /// How old its offsets were when the snapshot was published, in milliseconds, on the
    /// publisher's own clock.
    pub age_ms: u64,
    /// When its offsets were read, milliseconds since the Unix epoch, on the publisher's clock
    /// (informational).
    pub collected_at_ms: u64,
    /// One entry per partition.
    pub partitions: Vec<PartitionPayload>,
}

/// One partition of a topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionPayload {
    /// Partition id.
    pub partition: i32,
    /// The group's committed offset, or null.
    pub committed: Option<i64>,
    /// Oldest retained offset, or null when not read.
    pub low_watermark: Option<i64>,
    /// Next offset to be produced, or null when not read.
    pub high_watermark: Option<i64>,
    /// The last stable offset, for `read_committed` groups; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_stable_offset: Option<i64>,
    /// Messages waiting, or null when unknown.
    pub lag: Option<i64>,
    /// Whether the partition had a leader.
    pub leader_available: bool,
    /// The publisher's health score in [0, 1] (informational: readers compute their own from
    /// the exact lags).
    #[serde(default)]
    pub score: Option<f64>,
    /// The publisher's verdict (informational, like `score`).
    #[serde(default)]
    pub healthy: Option<bool>,
}

/// Why a payload was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not JSON of the expected shape.
    #[error("not a health snapshot: {0}")]
    Malformed(#[from] serde_json::Error),
    /// Larger than [`MAX_PAYLOAD_BYTES`].
    #[error("payload of {0} bytes is larger than the limit of {MAX_PAYLOAD_BYTES}")]
    TooLarge(usize),
    /// Another schema or another version.
    #[error("schema {schema:?} version {version} is not {SCHEMA:?} version {VERSION}")]
    Version {
        /// The schema found.
        schema: String,
        /// The version found.
        version: u32,
    },
    /// For another consumer group.
    #[error("snapshot is for group {found:?}, not {expected:?}")]
    Group {
        /// The group asked for.
        expected: String,
        /// The group found.
        found: String,
    },
    /// Well-formed JSON with impossible content.
    #[error("invalid snapshot: {0}")]
    Invalid(String),
}

/// Who published a payload, and in which order: what a reader needs to never go back to an
/// older snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publication<'a> {
    /// The consumer group.
    pub group: &'a str,
    /// The publishing instance.
    pub publisher: &'a str,
    /// Its leadership term.
    pub term: u64,
    /// Its publication within the term.
    pub sequence: u64,
    /// The publisher's clock now.
    pub now: SystemTime,
}

impl SnapshotPayload {
    /// A payload of `lags`, with the publisher's scores when it has them.
    pub fn new(
        publication: Publication<'_>,
        lags: &[TopicLag],
        health: &dyn Fn(&TopicLag) -> Option<TopicHealth>,
    ) -> Self {
        let now = publication.now;
        let topics = lags
            .iter()
            .map(|lag| {
                let scored = health(lag);
                TopicPayload {
                    topic: lag.topic.clone(),
                    age_ms: u64::try_from(
                        now.duration_since(lag.collected_at)
                            .unwrap_or_default()
                            .as_millis(),
                    )
                    .unwrap_or(u64::MAX),
                    collected_at_ms: millis(lag.collected_at),
                    partitions: lag
                        .partitions
                        .iter()
                        .map(|p| {
                            let h = scored.as_ref().and_then(|h| h.partition(p.partition));
                            PartitionPayload {
                                partition: p.partition,
                                committed: p.committed,
                                low_watermark: p.low_watermark,
                                high_watermark: p.high_watermark,
                                last_stable_offset: p.last_stable_offset,
                                lag: p.lag,
                                leader_available: p.leader_available,
                                score: h.map(|h| h.score),
                                healthy: h.map(|h| h.healthy),
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        Self {
            schema: SCHEMA.into(),
            version: VERSION,
            group: publication.group.into(),
            publisher: publication.publisher.into(),
            term: publication.term,
            sequence: publication.sequence,
            published_at_ms: millis(now),
            topics,
        }
    }

    /// The JSON text.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("a snapshot always serializes")
    }

    /// Reads and checks a payload for `group`.
    pub fn decode(bytes: &[u8], group: &str) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_PAYLOAD_BYTES {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        // The version is read first, so a future layout is reported as such rather than as
        // malformed.
        #[derive(Deserialize)]
        struct Header {
            schema: String,
            version: u32,
        }
        let header: Header = serde_json::from_slice(bytes)?;
        if header.schema != SCHEMA || header.version != VERSION {
            return Err(DecodeError::Version {
                schema: header.schema,
                version: header.version,
            });
        }
        let payload: Self = serde_json::from_slice(bytes)?;
        if payload.group != group {
            return Err(DecodeError::Group {
                expected: group.into(),
                found: payload.group,
            });
        }
        payload.check()?;
        Ok(payload)
    }

    fn check(&self) -> Result<(), DecodeError> {
        for topic in &self.topics {
            if topic.topic.is_empty() {
                return Err(DecodeError::Invalid("a topic without a name".into()));
            }
            if topic.partitions.len() > TopicHealth::MAX_PARTITIONS as usize {
                return Err(DecodeError::Invalid(format!(
                    "topic {:?} has {} partitions",
                    topic.topic,
                    topic.partitions.len()
                )));
            }
            let mut seen = vec![false; topic.partitions.len()];
            for p in &topic.partitions {
                let slot = usize::try_from(p.partition)
                    .ok()
                    .and_then(|i| seen.get_mut(i))
                    .filter(|s| !**s)
                    .ok_or_else(|| {
                        DecodeError::Invalid(format!(
                            "topic {:?}: partition id {} is negative, repeated or beyond the \
                             partition count",
                            topic.topic, p.partition
                        ))
                    })?;
                *slot = true;
                let negative = [
                    p.committed,
                    p.low_watermark,
                    p.high_watermark,
                    p.last_stable_offset,
                    p.lag,
                ]
                .into_iter()
                .flatten()
                .any(|v| v < 0);
                if negative {
                    return Err(DecodeError::Invalid(format!(
                        "topic {:?} partition {}: a negative offset or lag",
                        topic.topic, p.partition
                    )));
                }
                if p.score.is_some_and(|s| !(0.0..=1.0).contains(&s)) {
                    return Err(DecodeError::Invalid(format!(
                        "topic {:?} partition {}: score outside [0, 1]",
                        topic.topic, p.partition
                    )));
                }
            }
        }
        Ok(())
    }

    /// The lag reports of the requested `topics` (those the payload has), stamped on the
    /// reader's clock: the payload was published `since_published` ago (as Redis measured it),
    /// and each topic's offsets were already `age_ms` old then (as the publisher measured it).
    pub fn lags(
        &self,
        topics: &[String],
        since_published: Duration,
        now: SystemTime,
    ) -> Vec<TopicLag> {
        self.topics
            .iter()
            .filter(|t| topics.contains(&t.topic))
            .map(|t| {
                let partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let mut lag = PartitionLag::unavailable(p.partition);
                        lag.committed = p.committed;
                        lag.low_watermark = p.low_watermark;
                        lag.high_watermark = p.high_watermark;
                        lag.last_stable_offset = p.last_stable_offset;
                        lag.lag = p.lag;
                        lag.leader_available = p.leader_available;
                        lag
                    })
                    .collect();
                let age = since_published.saturating_add(Duration::from_millis(t.age_ms));
                TopicLag::new(
                    t.topic.clone(),
                    partitions,
                    now.checked_sub(age).unwrap_or(UNIX_EPOCH),
                )
            })
            .collect()
    }

    /// Age of the oldest topic's offsets, the payload having been published `since_published`
    /// ago.
    pub fn oldest(&self, since_published: Duration) -> Option<Duration> {
        self.topics
            .iter()
            .map(|t| since_published.saturating_add(Duration::from_millis(t.age_ms)))
            .max()
    }

    /// Where it stands among the fleet's publications: higher is newer.
    pub fn order(&self) -> (u64, u64) {
        (self.term, self.sequence)
    }
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> SnapshotPayload {
        let lag = TopicLag::new(
            "orders",
            vec![
                PartitionLag::from_offsets(0, Some(5), Some(0), 10),
                PartitionLag::unavailable(1),
            ],
            SystemTime::now(),
        );
        let publication = Publication {
            group: "g",
            publisher: "me",
            term: 3,
            sequence: 7,
            now: SystemTime::now(),
        };
        SnapshotPayload::new(publication, &[lag], &|_| None)
    }

    #[test]
    fn round_trips_exact_lags() {
        let payload = sample();
        let back = SnapshotPayload::decode(payload.encode().as_bytes(), "g").unwrap();
        assert_eq!(back, payload);
        let now = SystemTime::now();
        let lags = back.lags(&["orders".to_owned()], Duration::ZERO, now);
        assert_eq!(lags[0].partitions[0].lag, Some(5));
        assert_eq!(lags[0].partitions[0].committed, Some(5));
        assert!(!lags[0].partitions[1].leader_available);
        assert!(
            back.lags(&["other".to_owned()], Duration::ZERO, now)
                .is_empty()
        );
        assert_eq!(back.order(), (3, 7));
    }

    /// The reader's own clock stamps the report: however far apart two machines' clocks
    /// are, a snapshot published 300 ms ago whose offsets were 200 ms old then is 500 ms old.
    #[test]
    fn age_never_compares_two_clocks() {
        let collected = SystemTime::now();
        for publisher_offset in [-5i64, 0, 5] {
            let skewed = |t: SystemTime| {
                if publisher_offset >= 0 {
                    t + Duration::from_secs(publisher_offset as u64)
                } else {
                    t - Duration::from_secs(publisher_offset.unsigned_abs())
                }
            };
            let lag = TopicLag::new(
                "orders",
                vec![PartitionLag::from_lag(0, 1)],
                skewed(collected),
            );
            let publication = Publication {
                group: "g",
                publisher: "p",
                term: 1,
                sequence: 1,
                now: skewed(collected + Duration::from_millis(200)),
            };
            let payload = SnapshotPayload::new(publication, &[lag], &|_| None);
            let reader_now = SystemTime::now();
            let lags = payload.lags(
                &["orders".to_owned()],
                Duration::from_millis(300),
                reader_now,
            );
            assert_eq!(
                reader_now.duration_since(lags[0].collected_at).unwrap(),
                Duration::from_millis(500)
            );
            assert_eq!(
                payload.oldest(Duration::from_millis(300)),
                Some(Duration::from_millis(500))
            );
        }
    }

    #[test]
    fn refuses_other_versions_groups_and_impossible_content() {
        let mut v1 = sample();
        v1.version = 1;
        assert!(matches!(
            SnapshotPayload::decode(v1.encode().as_bytes(), "g"),
            Err(DecodeError::Version { version: 1, .. })
        ));
        assert!(matches!(
            SnapshotPayload::decode(sample().encode().as_bytes(), "other"),
            Err(DecodeError::Group { .. })
        ));
        for mutate in [
            |p: &mut SnapshotPayload| p.topics[0].partitions[1].partition = 0,
            |p: &mut SnapshotPayload| p.topics[0].partitions[1].partition = -1,
            |p: &mut SnapshotPayload| p.topics[0].partitions[1].partition = 7,
            |p: &mut SnapshotPayload| p.topics[0].partitions[0].lag = Some(-3),
            |p: &mut SnapshotPayload| p.topics[0].partitions[0].score = Some(1.5),
            |p: &mut SnapshotPayload| p.topics[0].topic.clear(),
            |p: &mut SnapshotPayload| p.topics[0].partitions[0].last_stable_offset = Some(-1),
        ] {
            let mut p = sample();
            mutate(&mut p);
            let err = SnapshotPayload::decode(p.encode().as_bytes(), "g").unwrap_err();
            assert!(
                matches!(err, DecodeError::Invalid(_) | DecodeError::Malformed(_)),
                "{err}"
            );
        }
        let text = sample().encode();
        for cut in [0, 1, text.len() / 2, text.len() - 1] {
            assert!(SnapshotPayload::decode(&text.as_bytes()[..cut], "g").is_err());
        }
    }

    proptest! {
        /// Fuzz: any bytes at all decode to an error or to a payload that passed every check,
        /// and never panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(p) = SnapshotPayload::decode(&bytes, "g") {
                prop_assert!(p.check().is_ok());
            }
        }

        /// Fuzz: a valid payload with one byte changed, cut short or spliced is refused or
        /// decodes to a payload that passed every check.
        #[test]
        fn mutated_payloads_never_panic(
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = sample().encode().into_bytes();
            let i = at.index(bytes.len());
            bytes[i] = byte;
            let n = cut.index(bytes.len() + 1);
            for candidate in [&bytes[..], &bytes[..n]] {
                if let Ok(p) = SnapshotPayload::decode(candidate, "g") {
                    prop_assert!(p.check().is_ok());
                    let _ = p.lags(&["orders".to_owned()], Duration::from_secs(u64::MAX / 4), SystemTime::now());
                }
            }
        }
    }
}
