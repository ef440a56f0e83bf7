//! The operations kit in `docs/`: the Grafana dashboard (`docs/grafana/`) and the Prometheus
//! alert rules (`docs/prometheus/alerts.yml`) use only metrics the library exports, with labels
//! those metrics carry; the metrics table in `docs/operations.md` lists exactly what it exports.
//!
//! The exported names and labels are read from what Prometheus would scrape: the
//! `metrics-exporter-prometheus` exposition of a producer with every optional part on (Redis
//! fleet and shared key moves, strict key order) on the embedded cluster. `promtool check
//! rules` and `promtool test rules` (run by the test command) check the rules' syntax and that
//! they fire when they should.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use kafka_smart_producer::AsyncSmartProducer;
use kafka_smart_producer::monitor::MonitorConfig;
use kafka_smart_producer::rdkafka::producer::FutureRecord;
use kafka_smart_producer::redis::RedisConfig;
use kafka_smart_producer::routing::{KeyOrderConfig, RouterConfig};
use ksp_testkit::RedisServer;
use metrics_exporter_prometheus::PrometheusBuilder;
use regex::Regex;

/// Labels every scraped series carries, added by Prometheus.
const SCRAPE_LABELS: [&str; 2] = ["instance", "job"];

/// Each exported series name, with its labels and the values each label takes.
type Exported = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn parse_exposition(text: &str) -> Exported {
    let label = Regex::new(r#"(\w+)="((?:[^"\\]|\\.)*)""#).unwrap();
    let mut exported = Exported::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = exported.entry(line[..name_end].to_owned()).or_default();
        if line[name_end..].starts_with('{') {
            let close = line.rfind('}').expect("a closed label set");
            for captures in label.captures_iter(&line[name_end..close]) {
                labels
                    .entry(captures[1].to_owned())
                    .or_default()
                    .insert(captures[2].to_owned());
            }
        }
    }
    exported
}

/// One PromQL expression of the kit, with where it comes from and the labels its legend or
/// annotations read.
struct Expression {
    origin: String,
    promql: String,
    reads: Vec<String>,
}

fn dashboard_expressions(path: &Path) -> Vec<Expression> {
    let text = std::fs::read_to_string(path).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let legend = Regex::new(r"\{\{\s*(\w+)\s*\}\}").unwrap();
    let mut out = Vec::new();
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{} panels", panels.len());
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or_default();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let reads = legend
                .captures_iter(target["legendFormat"].as_str().unwrap_or_default())
                .map(|c| c[1].to_owned())
                .collect();
            out.push(Expression {
                origin: format!("dashboard panel {title:?}"),
                promql: target["expr"].as_str().expect("a PromQL target").to_owned(),
                reads,
            });
        }
    }
    // Template variables: `label_values(metric{…}, label)` reads `label` from `metric`.
    let label_values = Regex::new(r"^label_values\((.*),\s*(\w+)\)$").unwrap();
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        let Some(query) = variable["query"]["query"].as_str() else {
            continue;
        };
        let captures = label_values
            .captures(query)
            .unwrap_or_else(|| panic!("variable query {query:?} is not label_values(…)"));
        out.push(Expression {
            origin: format!("dashboard variable {}", variable["name"]),
            promql: captures[1].to_owned(),
            reads: vec![captures[2].to_owned()],
        });
    }
    out
}

fn alert_expressions(path: &Path) -> Vec<Expression> {
    let text = std::fs::read_to_string(path).unwrap();
    let rules: serde_norway::Value = serde_norway::from_str(&text).expect("the rules are YAML");
    let template = Regex::new(r"\$labels\.(\w+)").unwrap();
    let mut out = Vec::new();
    for group in rules["groups"].as_sequence().expect("rule groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("alerting rules only");
            let mut reads = Vec::new();
            if let Some(annotations) = rule["annotations"].as_mapping() {
                for text in annotations.values().filter_map(|v| v.as_str()) {
                    reads.extend(template.captures_iter(text).map(|c| c[1].to_owned()));
                }
            }
            out.push(Expression {
                origin: format!("alert {name}"),
                promql: rule["expr"].as_str().expect("expr").to_owned(),
                reads,
            });
        }
    }
    out
}

/// What an expression uses: the library's metrics it selects (names as exported), the
/// label names it matches on, groups by or joins on, its exact matchers (label, value), and
/// the labels its `by (…)` clauses keep and its `without (…)` clauses drop.
#[derive(Debug, Default)]
struct Uses {
    metrics: Vec<String>,
    labels: Vec<String>,
    exact: Vec<(String, String)>,
    kept: Option<BTreeSet<String>>,
    dropped: BTreeSet<String>,
}

fn parse_promql(promql: &str) -> Uses {
    let selector = Regex::new(r"\b(ksp_\w+)\s*(\{[^}]*\})?").unwrap();
    let matcher = Regex::new(r#"(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)""#).unwrap();
    let clause =
        Regex::new(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)").unwrap();
    let mut uses = Uses::default();
    for captures in selector.captures_iter(promql) {
        uses.metrics.push(captures[1].to_owned());
        let Some(set) = captures.get(2) else { continue };
        for m in matcher.captures_iter(set.as_str()) {
            uses.labels.push(m[1].to_owned());
            // Exact matchers (and their negations) must name a value the label takes;
            // dashboard variables (`$group`) and regular expressions are not checked.
            if matches!(&m[2], "=" | "!=") && !m[3].contains('$') {
                uses.exact.push((m[1].to_owned(), m[3].to_owned()));
            }
        }
    }
    for captures in clause.captures_iter(promql) {
        let names: Vec<String> = captures[2]
            .split(',')
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        match &captures[1] {
            "by" => uses
                .kept
                .get_or_insert_default()
                .extend(names.iter().cloned()),
            "without" => uses.dropped.extend(names.iter().cloned()),
            _ => {}
        }
        uses.labels.extend(names);
    }
    uses
}

/// What is wrong with `expressions` against `exported`; every metric they use is added to
/// `used`.
fn check(
    expressions: &[Expression],
    exported: &Exported,
    used: &mut BTreeSet<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for expression in expressions {
        let origin = &expression.origin;
        let uses = parse_promql(&expression.promql);
        if uses.metrics.is_empty() {
            problems.push(format!("{origin}: selects no ksp_ metric"));
        }
        // A legend or annotation reads a label the result still has.
        for read in &expression.reads {
            let kept = uses.kept.as_ref().is_none_or(|kept| kept.contains(read));
            if !kept || uses.dropped.contains(read) {
                problems.push(format!(
                    "{origin}: reads {read:?}, which the aggregation drops"
                ));
            }
        }
        for metric in &uses.metrics {
            let Some(has) = exported.get(metric) else {
                problems.push(format!("{origin}: {metric} is not exported"));
                continue;
            };
            used.insert(family(metric, exported).to_owned());
            for label in uses.labels.iter().chain(&expression.reads) {
                if !has.contains_key(label) && !SCRAPE_LABELS.contains(&label.as_str()) {
                    problems.push(format!(
                        "{origin}: {metric} has no label {label:?} (it has {:?})",
                        has.keys().collect::<Vec<_>>()
                    ));
                }
            }
            for (label, value) in &uses.exact {
                if let Some(values) = has.get(label)
                    && !values.contains(value)
                {
                    problems.push(format!(
                        "{origin}: {metric}'s {label} is never {value:?} (it is one of {values:?})"
                    ));
                }
            }
        }
    }
    problems
}

/// The metric a series belongs to: a histogram's `_sum` and `_count` series are its own.
fn family<'a>(series: &'a str, exported: &Exported) -> &'a str {
    for suffix in ["_sum", "_count", "_bucket"] {
        if let Some(base) = series.strip_suffix(suffix)
            && exported.contains_key(base)
        {
            return base;
        }
    }
    series
}

fn docs() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/docs"))
}

/// A producer with every part that exports metrics, run until every metric has a series.
async fn exposition() -> String {
    let prometheus = PrometheusBuilder::new().install_recorder().unwrap();
    let kafka = common::cluster_with_slow_partition(1, "orders", "processors", 3).await;
    let redis = RedisServer::start().unwrap();
    let mut redis_config = RedisConfig::new(redis.url());
    redis_config.lease_ttl = Duration::from_millis(1000);
    let producer = AsyncSmartProducer::builder(kafka.client_config())
        .consumer_group("processors")
        .topics(["orders"])
        .monitor(MonitorConfig::default().with_refresh_interval(Duration::from_millis(200)))
        .router(
            // Keys homed on the slow partition wait for it to drain, which it never does:
            // a short bound sends them there after 50 ms (and counts it).
            RouterConfig::default()
                .with_key_order(KeyOrderConfig::strict().with_max_hold(Duration::from_millis(50))),
        )
        .redis(redis_config)
        .build()
        .unwrap();
    // Rates need two collections; leadership a lease round.
    let ready = common::eventually(Duration::from_secs(20), || {
        let text = prometheus.render();
        let ready = producer
            .redis_status()
            .and_then(|s| s.fleet)
            .is_some_and(|f| f.is_leader)
            && text.contains("ksp_partition_capacity{");
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            ready.then_some(())
        }
    })
    .await;
    assert!(ready.is_some(), "{}", prometheus.render());
    for i in 0..100 {
        let key = format!("k{i}");
        producer
            .produce(FutureRecord::to("orders").key(&key).payload("x"))
            .await
            .unwrap();
        producer
            .produce(FutureRecord::<(), _>::to("orders").payload("x"))
            .await
            .unwrap();
    }
    let text = prometheus.render();
    // This process's one producer leads the fleet.
    assert!(text.contains("\nksp_fleet_leader 1\n"), "{text}");
    producer.close(Duration::from_secs(5)).await.unwrap();
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_alert_rules_use_only_exported_metrics_and_labels() {
    common::init_tracing();
    let text = exposition().await;
    let exported = parse_exposition(&text);
    let ours: BTreeSet<String> = exported
        .keys()
        .filter(|name| name.starts_with("ksp_") && family(name, &exported) == name.as_str())
        .cloned()
        .collect();

    let mut used = BTreeSet::new();
    let mut problems = check(
        &dashboard_expressions(&docs().join("grafana/kafka-smart-producer.json")),
        &exported,
        &mut used,
    );
    problems.extend(check(
        &alert_expressions(&docs().join("prometheus/alerts.yml")),
        &exported,
        &mut used,
    ));
    assert!(
        problems.is_empty(),
        "{problems:#?}\nexported: {exported:#?}"
    );
    // And the dashboard shows everything the library exports.
    let unused: Vec<_> = ours.difference(&used).collect();
    assert!(unused.is_empty(), "on no panel or rule: {unused:?}");

    // The metrics table of docs/operations.md lists exactly what is exported (its first
    // column), and where it lists a metric's labels, exactly those.
    let operations = std::fs::read_to_string(docs().join("operations.md")).unwrap();
    let name = Regex::new(r"`(ksp_\w+)(?:\{([^}]*)\})?`").unwrap();
    let mut documented = BTreeSet::new();
    for row in operations.lines().filter(|l| l.starts_with("| `ksp_")) {
        let first = row.split('|').nth(1).unwrap_or_default();
        for captures in name.captures_iter(first) {
            let metric = captures[1].to_owned();
            if let (Some(labels), Some(has)) = (captures.get(2), exported.get(&metric)) {
                let listed: BTreeSet<&str> = labels.as_str().split(',').map(str::trim).collect();
                let actual: BTreeSet<&str> = has
                    .keys()
                    .map(String::as_str)
                    .filter(|l| *l != "quantile")
                    .collect();
                assert_eq!(listed, actual, "docs/operations.md lists {metric}'s labels");
            }
            documented.insert(metric);
        }
    }
    assert_eq!(documented, ours, "docs/operations.md's metrics table");
}

/// The checks above can fail: a name the library does not export, a label a metric lacks, a
/// label read by a legend.
#[test]
fn the_check_finds_unknown_metrics_and_labels() {
    let exported = parse_exposition(
        "# TYPE ksp_partition_lag gauge\n\
         ksp_partition_lag{group=\"g\",topic=\"t\",partition=\"0\"} 5\n\
         ksp_refresh_duration_seconds{group=\"g\",quantile=\"0.5\"} 0.1\n\
         ksp_refresh_duration_seconds_sum{group=\"g\"} 1\n\
         ksp_refresh_duration_seconds_count{group=\"g\"} 10\n",
    );
    let expression = |promql: &str, reads: &[&str]| Expression {
        origin: promql.to_owned(),
        promql: promql.to_owned(),
        reads: reads.iter().map(|r| (*r).to_owned()).collect(),
    };
    let mut used = BTreeSet::new();
    let good = [
        expression(
            r#"sum by (topic) (ksp_partition_lag{group=~"$g", instance="a"})"#,
            &["topic"],
        ),
        expression(
            r#"ksp_partition_lag{topic="t", partition!="0"}"#,
            &["partition"],
        ),
        expression(
            "rate(ksp_refresh_duration_seconds_sum[5m]) / rate(ksp_refresh_duration_seconds_count[5m])",
            &["group"],
        ),
        expression(r#"ksp_refresh_duration_seconds{quantile="0.5"}"#, &[]),
    ];
    assert_eq!(check(&good, &exported, &mut used), Vec::<String>::new());
    assert_eq!(
        used,
        BTreeSet::from([
            "ksp_partition_lag".to_owned(),
            "ksp_refresh_duration_seconds".to_owned()
        ])
    );
    let bad = [
        expression("ksp_partition_lags", &[]),
        expression(r#"ksp_partition_lag{route="x"}"#, &[]),
        expression("sum by (outcome) (ksp_partition_lag)", &[]),
        expression("ksp_partition_lag", &["fallback"]),
        expression(r#"ksp_partition_lag{quantile="0.5"}"#, &[]),
        expression("up", &[]),
        // A value the label never takes.
        expression(r#"ksp_partition_lag{topic="orders"}"#, &[]),
        // A legend reading a label the aggregation drops.
        expression("sum by (topic) (ksp_partition_lag)", &["partition"]),
        expression(
            "max without (partition) (ksp_partition_lag)",
            &["partition"],
        ),
    ];
    let problems = check(&bad, &exported, &mut used);
    assert_eq!(problems.len(), bad.len(), "{problems:#?}");
}
