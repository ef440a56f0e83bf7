//! Fuzzing (proptest-driven, so it runs in every CI run) of every decoder of outside data:
//! client settings (strings a user or a config file hands us), builder settings, calculator
//! configurations in JSON, topic names. None may panic; every rejection is a typed error that
//! says what is wrong.

use std::time::Duration;

use kafka_smart_producer::config::CalculatorConfig;
use kafka_smart_producer::monitor::{KafkaLagCollector, MonitorConfig, MonitorError};
use kafka_smart_producer::rdkafka::ClientConfig;
use kafka_smart_producer::routing::{KeyCacheConfig, RouterConfig};
use kafka_smart_producer::{AsyncSmartProducer, BuildError};
use proptest::prelude::*;

/// Settings this library reads itself, plus a few librdkafka ones and arbitrary keys.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "partitioner",
            "batch.size",
            "sticky.partitioning.linger.ms",
            "queue.buffering.max.messages",
            "queue.buffering.max.kbytes",
            "linger.ms",
            "acks",
            "client.id",
            "sasl.password",
            "security.protocol",
            "statistics.interval.ms",
        ])
        .prop_map(str::to_owned),
        1 => "[a-z.]{1,24}",
        1 => any::<String>(),
    ]
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        "[0-9]{0,25}",
        prop::sample::select(vec![
            "murmur2_random",
            "random",
            "fnv1a",
            "",
            " 10 ",
            "1e3",
            "-0"
        ])
        .prop_map(str::to_owned),
        any::<String>(),
    ]
}

fn client_config() -> impl Strategy<Value = ClientConfig> {
    prop::collection::vec((key(), value()), 0..6).prop_map(|pairs| {
        let mut config = ClientConfig::new();
        // Loopback only: nothing here ever connects (validate() creates no client).
        config.set("bootstrap.servers", "127.0.0.1:1");
        for (k, v) in pairs {
            config.set(k, v);
        }
        config
    })
}

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (0u64..10_000).prop_map(Duration::from_millis),
        any::<u64>().prop_map(Duration::from_nanos),
        any::<u64>().prop_map(Duration::from_secs),
    ]
}

fn assert_explains(error: &BuildError) {
    match error {
        BuildError::Config(config) => {
            let message = error.to_string();
            assert!(
                message.starts_with(&format!("invalid `{}` = ", config.setting)),
                "{message}"
            );
            assert!(message.contains(": expected "), "{message}");
        }
        BuildError::Kafka { context, source } => {
            assert!(!context.is_empty());
            assert!(!source.to_string().is_empty());
        }
        other => panic!("unexpected error kind: {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn producer_settings_are_accepted_or_explained(
        kafka in client_config(),
        group in prop_oneof![Just("processors".to_owned()), any::<String>()],
        topics in prop::collection::vec(prop_oneof![Just("orders".to_owned()), any::<String>()], 0..3),
        refresh in duration(),
        staleness in prop::option::of(duration()),
        timeout in prop::option::of(duration()),
        capacity in any::<u64>(),
        ttl in duration(),
        sticky_bytes in prop::option::of(any::<u32>()),
        sticky_linger in prop::option::of(duration()),
        queue_timeout in duration(),
        smart in any::<bool>(),
    ) {
        let mut monitor = MonitorConfig::default().with_refresh_interval(refresh);
        if let Some(s) = staleness { monitor = monitor.with_max_staleness(s); }
        if let Some(t) = timeout { monitor = monitor.with_collect_timeout(t); }
        let mut router = RouterConfig::default()
            .with_key_cache(KeyCacheConfig::default().with_capacity(capacity).with_ttl(ttl));
        if let Some(b) = sticky_bytes { router = router.with_sticky_batch_bytes(b); }
        if let Some(l) = sticky_linger { router = router.with_sticky_linger(l); }
        let builder = AsyncSmartProducer::builder(kafka)
            .consumer_group(group)
            .topics(topics)
            .monitor(monitor)
            .router(router)
            .queue_timeout(queue_timeout)
            .smart_enabled(smart);
        if let Err(error) = builder.validate() {
            assert_explains(&error);
        }
    }

    #[test]
    fn calculator_configurations_decode_or_explain(text in prop_oneof![
        any::<String>(),
        r#"\{"kind":"(threshold|relative|[a-z]{0,8})"(,"(health_threshold|max_lag|hot_factor|min_lag)":(-?[0-9]{1,20}(\.[0-9]{1,5})?|null|"x"))*\}"#,
    ]) {
        if let Ok(config) = serde_json::from_str::<CalculatorConfig>(&text) {
            match config.build() {
                Ok(calculator) => prop_assert!(CalculatorConfig::NAMES.contains(&calculator.name())),
                Err(error) => prop_assert!(error.to_string().contains(": expected "), "{error}"),
            }
        }
        if let Err(error) = text.parse::<CalculatorConfig>() {
            prop_assert_eq!(error.setting, "calculator");
        }
    }

    #[test]
    fn lag_reader_settings_are_accepted_or_explained(kafka in client_config(), extra in prop::collection::vec((key(), value()), 0..3)) {
        let mut builder = KafkaLagCollector::builder(&kafka);
        for (k, v) in extra {
            builder = builder.set(k, v);
        }
        match builder.build() {
            Ok(_) | Err(MonitorError::Config(_)) | Err(MonitorError::Kafka { .. }) => {}
            Err(other) => panic!("unexpected error kind: {other:?}"),
        }
    }

    #[test]
    fn topic_names_are_checked_like_kafka_does(name in prop_oneof![any::<String>(), "[a-zA-Z0-9._-]{0,260}"]) {
        let builder = AsyncSmartProducer::builder(ClientConfig::new())
            .consumer_group("g")
            .topics([name.clone()]);
        let valid = !name.is_empty()
            && name.len() <= 249
            && name != "."
            && name != ".."
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        let error = builder.validate().err();
        let topic_error = matches!(&error, Some(BuildError::Config(e)) if e.setting == "topics");
        prop_assert_eq!(!topic_error, valid, "{:?}", error);
    }
}
