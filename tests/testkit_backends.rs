//! The testkit's backends: one test body, whichever Kafka and Redis the environment provides.
//! Here (no Docker engine) the container backends fall back and say so.

use std::time::Duration;

use kafka_smart_producer::monitor::KafkaLagCollector;
use kafka_smart_producer::{LagCollector, LagRequest};
use ksp_testkit::{LagScenario, TestKafka, TestRedis};

async fn lag_is_read_exactly(kafka: &TestKafka) {
    let topic = format!("orders-{}", kafka.backend());
    let scenario = LagScenario::new(&topic, 4).lag(1, 300).lag(3, 7);
    kafka.apply(&scenario, "testkit-group").await.unwrap();
    let collector = KafkaLagCollector::builder(&kafka.client_config())
        .build()
        .unwrap();
    let topics = [topic];
    let lags = collector
        .collect(&LagRequest::new(
            "testkit-group",
            &topics,
            Duration::from_secs(10),
        ))
        .await
        .unwrap();
    let lags: Vec<i64> = lags[0].partitions.iter().map(|p| p.lag.unwrap()).collect();
    assert_eq!(lags, scenario.expected_lags());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_body_runs_on_the_environments_kafka() {
    let kafka = TestKafka::start().await.unwrap();
    lag_is_read_exactly(&kafka).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_container_backend_runs_or_falls_back_to_the_embedded_cluster() {
    let kafka = TestKafka::start_with("container").await.unwrap();
    let docker = std::path::Path::new("/var/run/docker.sock").exists();
    // With a Docker engine (and the testkit's `testcontainers` feature) it is a container.
    if !docker {
        assert_eq!(kafka.backend(), "embedded");
        assert!(kafka.mock().is_some());
    }
    lag_is_read_exactly(&kafka).await;
    assert!(TestKafka::start_with("nonsense").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_backends_give_a_reachable_server() {
    let mut redis = TestRedis::start_with("container").await.unwrap();
    let docker = std::path::Path::new("/var/run/docker.sock").exists();
    if !docker {
        assert_eq!(redis.backend(), "spawned");
        let server = redis.server().unwrap();
        assert!(server.ping());
        server.kill();
        assert!(!server.ping());
        server.restart().unwrap();
        assert!(server.ping());
    }
    assert!(redis.url().starts_with("redis://127.0.0.1:"));
}
