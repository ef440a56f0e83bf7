//! The soak's Kafka cluster: librdkafka's mock cluster, in this process or in a child process
//! driven over its standard input.
//!
//! In a child process the memory the soak judges is the producers' and the harness's alone.
//! The embedded broker keeps up to 5 MiB of log per partition, a buffer per message set and
//! the connections of every client; in production none of that is in a producer's process.
//!
//! Both placements apply a fault through the same [`Act::apply`]: in the child it arrives as
//! one line (`down 2`, `errors produce`, …) and is answered with `ok <line>` or
//! `error <line>: <text>` ([`crate::ClusterProcess`]).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::mocking::MockCoordinator;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use super::{GROUP, PARTITIONS, TOPIC};
use crate::faults::REQUEST_ERRORS;
use crate::process::{ClusterProcess, serve_cluster};
use crate::{MockKafka, TestkitResult};

/// Where the soak's embedded cluster runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum BrokerPlacement {
    /// In the soak's own process: its memory (the logs of the topic, up to 5 MiB a partition)
    /// counts in the RSS the soak judges.
    #[default]
    InProcess,
    /// In a child process: `program` run with `args`, which must call [`serve_broker`] (the
    /// `ksp-soak-broker` binary does; so does the soak example with `--serve-broker`). The
    /// child ends when the soak closes its standard input (or ends), or is killed if it
    /// lingers.
    Process {
        /// The program.
        program: PathBuf,
        /// Its arguments.
        args: Vec<String>,
    },
}

impl BrokerPlacement {
    /// In a child process running `program` with `args`.
    pub fn process(program: impl Into<PathBuf>, args: &[&str]) -> Self {
        Self::Process {
            program: program.into(),
            args: args.iter().map(|&a| a.to_owned()).collect(),
        }
    }
}

/// A request type the soak fails on the broker, each with its error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    ListOffsets,
    OffsetFetch,
    Produce,
}

impl Api {
    const ALL: [Self; 3] = [Self::ListOffsets, Self::OffsetFetch, Self::Produce];

    fn name(self) -> &'static str {
        match self {
            Self::ListOffsets => "list-offsets",
            Self::OffsetFetch => "offset-fetch",
            Self::Produce => "produce",
        }
    }

    fn key(self) -> RDKafkaApiKey {
        match self {
            Self::ListOffsets => RDKafkaApiKey::ListOffsets,
            Self::OffsetFetch => RDKafkaApiKey::OffsetFetch,
            Self::Produce => RDKafkaApiKey::Produce,
        }
    }

    /// The error its requests fail with.
    fn error(self) -> RDKafkaRespErr {
        match self {
            Self::ListOffsets | Self::Produce => {
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION
            }
            Self::OffsetFetch => RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
        }
    }
}

/// One change to the cluster: a fault's start or end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Act {
    /// Takes the broker with this id (1–3) down.
    BrokerDown(i32),
    /// Brings the broker with this id back.
    BrokerUp(i32),
    /// Moves the topic's partition's leadership.
    Leader { partition: i32, broker: i32 },
    /// Fails the next [`REQUEST_ERRORS`] requests of this type.
    Errors(Api),
    /// Stops failing them.
    ClearErrors(Api),
    /// Fails (or stops failing) the topic's metadata with `LEADER_NOT_AVAILABLE`.
    TopicError(bool),
    /// Sets a broker's round-trip time.
    RoundTrip { broker: i32, millis: u64 },
}

impl Act {
    /// Applies it to the cluster.
    pub(crate) fn apply(self, kafka: &MockKafka) -> TestkitResult<()> {
        let cluster = kafka.cluster();
        let error = crate::kafka_error(format!("the broker change `{self}`"));
        match self {
            Self::BrokerDown(broker) => cluster.broker_down(broker).map_err(error),
            Self::BrokerUp(broker) => cluster.broker_up(broker).map_err(error),
            Self::Leader { partition, broker } => cluster
                .partition_leader(TOPIC, partition, Some(broker))
                .map_err(error),
            Self::Errors(api) => {
                cluster.request_errors(api.key(), &[api.error(); REQUEST_ERRORS]);
                Ok(())
            }
            Self::ClearErrors(api) => {
                cluster.clear_request_errors(api.key());
                Ok(())
            }
            Self::TopicError(on) => cluster
                .topic_error(
                    TOPIC,
                    if on {
                        RDKafkaRespErr::RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE
                    } else {
                        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR
                    },
                )
                .map_err(error),
            Self::RoundTrip { broker, millis } => cluster
                .broker_round_trip_time(broker, Duration::from_millis(millis))
                .map_err(error),
        }
    }
}

impl fmt::Display for Act {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BrokerDown(b) => write!(f, "down {b}"),
            Self::BrokerUp(b) => write!(f, "up {b}"),
            Self::Leader { partition, broker } => write!(f, "leader {partition} {broker}"),
            Self::Errors(api) => write!(f, "errors {}", api.name()),
            Self::ClearErrors(api) => write!(f, "clear {}", api.name()),
            Self::TopicError(on) => write!(f, "topic-error {}", if *on { "on" } else { "off" }),
            Self::RoundTrip { broker, millis } => write!(f, "rtt {broker} {millis}"),
        }
    }
}

impl FromStr for Act {
    type Err = String;

    fn from_str(line: &str) -> Result<Self, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let number = |i: usize| -> Result<i64, String> {
            words
                .get(i)
                .and_then(|w| w.parse::<i64>().ok())
                .ok_or_else(|| format!("`{line}`: word {} is not a number", i + 1))
        };
        let out_of_range = |i: usize| format!("`{line}`: word {} is out of range", i + 1);
        let small =
            |i: usize| number(i).and_then(|n| i32::try_from(n).map_err(|_| out_of_range(i)));
        let api = || {
            let name = words.get(1).copied().unwrap_or_default();
            Api::ALL
                .into_iter()
                .find(|a| a.name() == name)
                .ok_or_else(|| format!("`{line}`: no request type `{name}`"))
        };
        let act = match words.first().copied() {
            Some("down") => Self::BrokerDown(small(1)?),
            Some("up") => Self::BrokerUp(small(1)?),
            Some("leader") => Self::Leader {
                partition: small(1)?,
                broker: small(2)?,
            },
            Some("errors") => Self::Errors(api()?),
            Some("clear") => Self::ClearErrors(api()?),
            Some("topic-error") => match words.get(1).copied() {
                Some("on") => Self::TopicError(true),
                Some("off") => Self::TopicError(false),
                _ => return Err(format!("`{line}`: `on` or `off` expected")),
            },
            Some("rtt") => Self::RoundTrip {
                broker: small(1)?,
                millis: u64::try_from(number(2)?).map_err(|_| out_of_range(2))?,
            },
            _ => return Err(format!("`{line}`: no such change")),
        };
        let expected = match act {
            Self::Leader { .. } | Self::RoundTrip { .. } => 3,
            _ => 2,
        };
        if words.len() != expected {
            return Err(format!("`{line}`: {expected} words expected"));
        }
        Ok(act)
    }
}

/// The topic and the group's coordinator, as the soak needs them.
fn set_up(kafka: &MockKafka) -> TestkitResult<()> {
    kafka.create_topic(TOPIC, PARTITIONS)?;
    kafka
        .cluster()
        .coordinator(MockCoordinator::Group(GROUP.into()), 1)
        .map_err(crate::kafka_error("placing the coordinator"))
}

/// Serves the soak's cluster for a soak run in the parent process: starts the embedded
/// 3-broker cluster with the soak's topic, prints `bootstrap <address>`, then applies each
/// line of standard input and answers it with `ok <line>` or `error <line>: <text>`, until
/// standard input closes. For a program named in [`BrokerPlacement::Process`].
pub fn serve_broker() -> TestkitResult<()> {
    let kafka = MockKafka::start(3)?;
    set_up(&kafka)?;
    serve_cluster(kafka.bootstrap_servers(), |line| {
        let act = line.parse::<Act>()?;
        act.apply(&kafka).map_err(|e| error_line(&e))
    })
}

/// An error and its sources on one line, each source once (a Kafka error's text may already
/// hold its source's).
fn error_line(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// The cluster, where it runs.
#[derive(Debug)]
pub(crate) enum Cluster {
    InProcess(MockKafka),
    Process(ClusterProcess),
}

impl Cluster {
    /// Starts it with the soak's topic and the group's coordinator on broker 1. Blocks: call
    /// it inside `block_in_place` from async code.
    pub(crate) fn start(placement: &BrokerPlacement) -> TestkitResult<Self> {
        match placement {
            BrokerPlacement::InProcess => {
                let kafka = MockKafka::start(3)?;
                set_up(&kafka)?;
                Ok(Self::InProcess(kafka))
            }
            BrokerPlacement::Process { program, args } => {
                ClusterProcess::start(program, args).map(Self::Process)
            }
        }
    }

    /// A client configuration pointing at it.
    pub(crate) fn client_config(&self) -> ClientConfig {
        match self {
            Self::InProcess(kafka) => kafka.client_config(),
            Self::Process(p) => p.client_config(),
        }
    }

    /// Applies `act`; in a child process, waits for its answer (on a runtime worker, within
    /// `block_in_place`: the runtime must be multi-threaded).
    pub(crate) fn act(&self, act: Act) -> TestkitResult<()> {
        match self {
            Self::InProcess(kafka) => act.apply(kafka),
            Self::Process(p) => tokio::task::block_in_place(|| p.ask(&act.to_string())),
        }
    }

    /// The child process's `statm` file, to read its resident memory from (`None` in this
    /// process).
    pub(crate) fn child_statm(&self) -> Option<String> {
        match self {
            Self::InProcess(_) => None,
            Self::Process(p) => Some(format!("/proc/{}/statm", p.id())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_reads_back_as_itself_and_bad_lines_are_refused() {
        let mut acts = vec![
            Act::BrokerDown(2),
            Act::BrokerUp(3),
            Act::Leader {
                partition: 5,
                broker: 1,
            },
            Act::TopicError(true),
            Act::TopicError(false),
            Act::RoundTrip {
                broker: 1,
                millis: 1499,
            },
        ];
        for api in Api::ALL {
            acts.push(Act::Errors(api));
            acts.push(Act::ClearErrors(api));
        }
        for act in acts {
            assert_eq!(act.to_string().parse::<Act>(), Ok(act), "{act}");
        }
        for bad in [
            "",
            "down",
            "down two",
            "down 2 3",
            "leader 1",
            "errors metadata",
            "topic-error maybe",
            "rtt 1 -5",
            "reboot 1",
        ] {
            assert!(bad.parse::<Act>().is_err(), "{bad:?} was accepted");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_change_applies_in_process_and_a_wrong_one_fails() {
        let cluster = Cluster::start(&BrokerPlacement::InProcess).unwrap();
        assert!(cluster.child_statm().is_none());
        for act in [
            Act::BrokerDown(2),
            Act::BrokerUp(2),
            Act::Leader {
                partition: PARTITIONS - 1,
                broker: 3,
            },
            Act::Errors(Api::Produce),
            Act::ClearErrors(Api::Produce),
            Act::TopicError(true),
            Act::TopicError(false),
            Act::RoundTrip {
                broker: 1,
                millis: 300,
            },
            Act::RoundTrip {
                broker: 1,
                millis: 0,
            },
        ] {
            cluster.act(act).unwrap();
        }
        assert!(cluster.act(Act::BrokerDown(9)).is_err());
        assert!(
            cluster
                .act(Act::Leader {
                    partition: PARTITIONS,
                    broker: 1,
                })
                .is_err()
        );
    }
}
