//! Every invalid setting is a typed error at build time that names the setting, the value and
//! what is allowed. Checked with `validate()`, which runs every check `build()` runs without
//! creating a client.

use std::time::Duration;

use kafka_smart_producer::config::CalculatorConfig;
use kafka_smart_producer::monitor::MonitorConfig;
use kafka_smart_producer::rdkafka::ClientConfig;
use kafka_smart_producer::routing::{KeyCacheConfig, RouterConfig};
use kafka_smart_producer::{AsyncSmartProducer, AsyncSmartProducerBuilder, BuildError};

fn kafka(extra: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", "127.0.0.1:9092");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    config
}

fn valid(kafka: ClientConfig) -> AsyncSmartProducerBuilder {
    AsyncSmartProducer::builder(kafka)
        .consumer_group("processors")
        .topics(["orders"])
}

type Case = (
    &'static str,
    Box<dyn Fn() -> AsyncSmartProducerBuilder>,
    &'static str,
);

#[test]
fn every_bad_setting_is_named_with_its_value_and_what_is_allowed() {
    let cases: Vec<Case> = vec![
        (
            "refresh_interval",
            Box::new(|| {
                valid(kafka(&[]))
                    .monitor(MonitorConfig::default().with_refresh_interval(Duration::ZERO))
            }),
            "0ns",
        ),
        (
            "refresh_interval",
            Box::new(|| {
                valid(kafka(&[])).monitor(
                    MonitorConfig::default().with_refresh_interval(Duration::from_secs(7200)),
                )
            }),
            "7200s",
        ),
        (
            "max_staleness",
            Box::new(|| {
                valid(kafka(&[]))
                    .monitor(MonitorConfig::default().with_max_staleness(Duration::from_millis(1)))
            }),
            "1ms",
        ),
        (
            "collect_timeout",
            Box::new(|| {
                valid(kafka(&[]))
                    .monitor(MonitorConfig::default().with_collect_timeout(Duration::ZERO))
            }),
            "0ns",
        ),
        (
            "topics",
            Box::new(|| valid(kafka(&[])).topics(Vec::<String>::new())),
            "[]",
        ),
        (
            "topics",
            Box::new(|| valid(kafka(&[])).topics(["orders", "not a topic"])),
            "\"not a topic\"",
        ),
        (
            "consumer_group",
            Box::new(|| valid(kafka(&[])).consumer_group("")),
            "\"\"",
        ),
        (
            "key_cache.capacity",
            Box::new(|| {
                valid(kafka(&[])).router(
                    RouterConfig::default()
                        .with_key_cache(KeyCacheConfig::default().with_capacity(0)),
                )
            }),
            "0",
        ),
        (
            "key_cache.ttl",
            Box::new(|| {
                valid(kafka(&[])).router(
                    RouterConfig::default()
                        .with_key_cache(KeyCacheConfig::default().with_ttl(Duration::ZERO)),
                )
            }),
            "0ns",
        ),
        (
            "sticky_batch_bytes",
            Box::new(|| {
                valid(kafka(&[])).router(RouterConfig::default().with_sticky_batch_bytes(0))
            }),
            "0",
        ),
        (
            "sticky_linger",
            Box::new(|| {
                valid(kafka(&[]))
                    .router(RouterConfig::default().with_sticky_linger(Duration::from_secs(3600)))
            }),
            "3600s",
        ),
        (
            "queue_timeout",
            Box::new(|| valid(kafka(&[])).queue_timeout(Duration::from_secs(86_400))),
            "86400s",
        ),
        (
            "partitioner",
            Box::new(|| valid(kafka(&[("partitioner", "sticky")]))),
            "\"sticky\"",
        ),
        (
            "batch.size",
            Box::new(|| valid(kafka(&[("batch.size", "big")]))),
            "\"big\"",
        ),
        (
            "sticky.partitioning.linger.ms",
            Box::new(|| valid(kafka(&[("sticky.partitioning.linger.ms", "-5")]))),
            "\"-5\"",
        ),
        (
            "queue.buffering.max.messages",
            Box::new(|| valid(kafka(&[("queue.buffering.max.messages", "lots")]))),
            "\"lots\"",
        ),
        (
            "queue.buffering.max.kbytes",
            Box::new(|| valid(kafka(&[("queue.buffering.max.kbytes", "1e9")]))),
            "\"1e9\"",
        ),
    ];
    for (setting, builder, value) in cases {
        let err = builder().validate().unwrap_err();
        let BuildError::Config(config) = &err else {
            panic!("{setting}: not a config error: {err:?}");
        };
        assert_eq!(config.setting, setting, "{err}");
        assert_eq!(config.value, value, "{err}");
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("invalid `{setting}` = {value}: expected ")),
            "{message}"
        );
        // build() refuses it the same way, before creating anything.
        assert_eq!(builder().build().unwrap_err().to_string(), message);
    }
}

/// A calculator's settings are checked when it is built from its configuration (what a
/// configuration file holds); the error is the same kind.
#[test]
fn every_bad_calculator_setting_is_named_with_its_value_and_what_is_allowed() {
    let cases = [
        (
            "health_threshold",
            CalculatorConfig::Threshold {
                health_threshold: 1.5,
                max_lag: 1000,
            },
            "1.5",
        ),
        (
            "max_lag",
            CalculatorConfig::Threshold {
                health_threshold: 0.5,
                max_lag: 0,
            },
            "0",
        ),
        (
            "hot_factor",
            CalculatorConfig::Relative {
                hot_factor: 0.5,
                min_lag: 10,
            },
            "0.5",
        ),
        (
            "min_lag",
            CalculatorConfig::Relative {
                hot_factor: 2.0,
                min_lag: -1,
            },
            "-1",
        ),
    ];
    for (setting, config, value) in cases {
        let err = config.build().err().unwrap();
        assert_eq!(err.setting, setting, "{err}");
        assert_eq!(err.value, value, "{err}");
        assert!(
            err.to_string()
                .starts_with(&format!("invalid `{setting}` = {value}: expected ")),
            "{err}"
        );
    }
}

#[test]
fn unknown_calculator_name_is_a_config_error() {
    let err = "median".parse::<CalculatorConfig>().unwrap_err();
    assert_eq!(err.setting, "calculator");
    assert_eq!(
        err.to_string(),
        "invalid `calculator` = \"median\": expected one of \"threshold\", \"relative\""
    );
}

#[test]
fn librdkafka_settings_are_checked_by_librdkafka() {
    for (key, value) in [
        ("no.such.setting", "1"),
        ("linger.ms", "soon"),
        ("acks", "most"),
    ] {
        let err = valid(kafka(&[(key, value)])).validate().unwrap_err();
        let BuildError::Kafka { context, source } = &err else {
            panic!("{key}: {err:?}");
        };
        assert_eq!(context, "invalid rdkafka client configuration");
        assert!(source.to_string().contains(key), "{source}");
    }
}

#[test]
fn a_plain_producer_needs_no_routing_settings() {
    AsyncSmartProducer::builder(kafka(&[]))
        .smart_enabled(false)
        .validate()
        .unwrap();
    valid(kafka(&[])).validate().unwrap();
}

/// Bug: `validate()` (and so `ksp check-config`) skipped the lag reader's checks, which only
/// `build()` ran: a configuration without brokers passed `validate()` and failed `build()`.
#[test]
fn validate_checks_the_lag_readers_settings_like_build() {
    let no_brokers = || {
        AsyncSmartProducer::builder(ClientConfig::new())
            .consumer_group("processors")
            .topics(["orders"])
    };
    let err = no_brokers().validate().unwrap_err();
    let BuildError::Config(config) = &err else {
        panic!("not a config error: {err:?}");
    };
    assert_eq!(config.setting, "bootstrap.servers", "{err}");
    // `build` says the same, before it looks for a runtime (there is none here).
    let err = no_brokers().build().unwrap_err();
    assert!(
        matches!(&err, BuildError::Config(c) if c.setting == "bootstrap.servers"),
        "{err:?}"
    );
    // Without smart routing there is no lag reader to check.
    AsyncSmartProducer::builder(ClientConfig::new())
        .smart_enabled(false)
        .validate()
        .unwrap();
}

/// Bug: with Redis, `build()` outside a Tokio runtime panicked (the Redis client's connection
/// task was spawned before the monitor's check for a runtime) instead of failing with
/// `NoRuntime`.
#[cfg(feature = "redis")]
#[test]
fn building_with_redis_outside_a_runtime_is_an_error_not_a_panic() {
    use kafka_smart_producer::monitor::MonitorError;
    use kafka_smart_producer::redis::{L2Error, RedisClient, RedisConfig};

    let built = std::panic::catch_unwind(|| {
        valid(kafka(&[]))
            .redis(RedisConfig::new("redis://127.0.0.1:1"))
            .build()
    });
    let err = built.expect("build panicked").unwrap_err();
    assert!(
        matches!(err, BuildError::Monitor(MonitorError::NoRuntime)),
        "{err:?}"
    );
    let connected =
        std::panic::catch_unwind(|| RedisClient::connect(&RedisConfig::new("redis://127.0.0.1:1")));
    let err = connected.expect("connect panicked").unwrap_err();
    assert!(matches!(err, L2Error::NoRuntime), "{err:?}");
}
