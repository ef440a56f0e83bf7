//! Reading lag and health the way the producer's monitor does, and the plain table of it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use comfy_table::{Cell, Color, Table};
use ksp_core::{HotPartitionCalculator, LagCollector, LagRequest, PartitionHealth, TopicHealth};
use ksp_monitor::{KafkaLagCollector, MonitorConfig, TopicTracker};
use rdkafka::ClientConfig;

use crate::Target;

/// Reads the group's lag and judges it, remembering what the monitor remembers between rounds.
pub(crate) struct Reader {
    collector: KafkaLagCollector,
    calculator: Arc<dyn HotPartitionCalculator>,
    group: String,
    topics: Vec<String>,
    timeout: Duration,
    /// What the monitor remembers between rounds (rates, uncommitted partitions, damping),
    /// per topic: the same health the producer would route by.
    trackers: Mutex<HashMap<String, TopicTracker>>,
    started: Instant,
}

/// One read: each watched topic, in the order given, with its health when lag was reported.
pub(crate) type Reading = Vec<(String, Option<TopicHealth>)>;

impl Reader {
    pub(crate) fn new(target: &Target) -> anyhow::Result<Self> {
        let mut kafka = ClientConfig::new();
        kafka.set("bootstrap.servers", &target.bootstrap);
        for (k, v) in &target.set {
            kafka.set(k, v);
        }
        Ok(Self {
            collector: KafkaLagCollector::builder(&kafka).build()?,
            calculator: target.calculator.build()?,
            group: target.group.clone(),
            topics: target.topic.clone(),
            timeout: target.timeout,
            trackers: Mutex::default(),
            started: Instant::now(),
        })
    }

    pub(crate) fn group(&self) -> &str {
        &self.group
    }

    pub(crate) fn topics(&self) -> &[String] {
        &self.topics
    }

    /// Collects once and updates each topic's health.
    pub(crate) async fn read(&self) -> anyhow::Result<Reading> {
        let request = LagRequest::new(&self.group, &self.topics, self.timeout);
        let lags = self.collector.collect(&request).await?;
        let mut healths: HashMap<String, TopicHealth> = HashMap::new();
        {
            let mut trackers = self.trackers.lock().unwrap_or_else(PoisonError::into_inner);
            for lag in lags {
                let topic = lag.topic.clone();
                let health = trackers
                    .entry(topic.clone())
                    .or_insert_with(|| TopicTracker::new(&MonitorConfig::default()))
                    .update(self.started.elapsed(), lag, self.calculator.as_ref());
                healths.insert(topic, health);
            }
        }
        Ok(self
            .topics
            .iter()
            .map(|topic| (topic.clone(), healths.remove(topic)))
            .collect())
    }

    /// Collects once and renders the plain tables.
    pub(crate) async fn table(&self) -> anyhow::Result<String> {
        let reading = self.read().await?;
        let mut out = String::new();
        for (topic, health) in reading {
            match health {
                Some(health) => {
                    out.push_str(&render(&self.group, &health));
                    out.push('\n');
                }
                None => out.push_str(&format!("topic {topic}: no lag reported\n")),
            }
        }
        Ok(out)
    }
}

/// How the producer judges a partition, in a word.
pub(crate) fn verdict(p: &PartitionHealth) -> (&'static str, bool) {
    if !p.lag.leader_available {
        ("no leader", false)
    } else if p.healthy {
        ("healthy", true)
    } else {
        ("HOT", false)
    }
}

/// "12.3s", or "-" when unknown.
pub(crate) fn seconds(t: Option<Duration>) -> String {
    t.map_or_else(|| "-".to_owned(), |t| format!("{:.1}s", t.as_secs_f64()))
}

/// A rate per second, rounded, or "-" when unknown.
pub(crate) fn rate(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"))
}

/// A count, or "-" when unknown.
pub(crate) fn count(v: Option<i64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// The topic's one-line summary: routable partitions and how shares are planned.
pub(crate) fn summary(group: &str, health: &TopicHealth) -> String {
    format!(
        "topic {} · group {group} · {} of {} partitions routable · shares by {}",
        health.topic(),
        health.routable_partitions().len(),
        health.partition_count(),
        if health.is_capacity_planned() {
            "capacity"
        } else {
            "score"
        }
    )
}

/// One topic's plain table.
pub(crate) fn render(group: &str, health: &TopicHealth) -> String {
    let mut table = Table::new();
    table.set_header(vec![
        "partition",
        "committed",
        "high watermark",
        "lag",
        "time-lag",
        "drain/s",
        "capacity/s",
        "arrival/s",
        "consumer",
        "share",
        "score",
        "health",
    ]);
    let shares = health.keyless_shares();
    for (p, share) in health.partitions().iter().zip(shares) {
        let rates = p.lag.rates.unwrap_or_default();
        let (word, good) = verdict(p);
        let verdict = Cell::new(word).fg(if good { Color::Green } else { Color::Red });
        table.add_row(vec![
            Cell::new(p.partition),
            Cell::new(count(p.lag.committed)),
            Cell::new(count(p.lag.high_watermark)),
            Cell::new(count(p.lag.lag)),
            Cell::new(seconds(rates.time_lag)),
            Cell::new(rate(rates.drain_rate)),
            Cell::new(rate(rates.capacity)),
            Cell::new(rate(rates.arrival_rate)),
            Cell::new(rates.state.as_str()),
            Cell::new(format!("{:.0}%", share * 100.0)),
            Cell::new(format!("{:.2}", p.score)),
            verdict,
        ]);
    }
    format!("{}\n{table}\n", summary(group, health))
}
