//! Strict key order on the embedded cluster: two producer instances share health through
//! Redis and send the same 1 000 keys, each key's messages handed from one instance to the
//! other (a message is sent only after the key's previous one was delivered, by the other
//! instance); one consumer is slow, then recovers. A consumer that processes each partition in
//! order and commits after processing checks every key's sequence numbers.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kafka_smart_producer::AsyncSmartProducer;
use kafka_smart_producer::monitor::{DampingConfig, MonitorConfig};
use kafka_smart_producer::rdkafka::ClientConfig;
use kafka_smart_producer::rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use kafka_smart_producer::rdkafka::message::Message;
use kafka_smart_producer::rdkafka::producer::FutureRecord;
use kafka_smart_producer::rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use kafka_smart_producer::redis::RedisConfig;
use kafka_smart_producer::routing::{KeyOrderConfig, Partitioner, Route, RouterConfig};
use ksp_testkit::{LagScenario, MockKafka, RedisServer};

const TOPIC: &str = "ordered";
const GROUP: &str = "ordered-consumers";
const PARTITIONS: usize = 4;
const SLOW: usize = 3;
const KEYS: usize = 1000;
const PER_KEY: u32 = 10;

/// What the consumer saw.
#[derive(Default)]
struct Seen {
    /// Per key, the highest sequence number processed.
    last: HashMap<String, u32>,
    /// Per key, how many messages.
    count: HashMap<String, u32>,
    out_of_order: Vec<(String, u32, u32)>,
}

/// Processes each partition in order at its own pace (the slow one at `slow_rate` per second
/// until `fast` is set) and commits what it processed every 50 ms.
fn consume(
    kafka: &ClientConfig,
    slow_rate: f64,
    fast: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) -> std::thread::JoinHandle<()> {
    let consumer: BaseConsumer = kafka
        .clone()
        .set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for p in 0..PARTITIONS as i32 {
        assignment
            .add_partition_offset(TOPIC, p, Offset::Stored)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let consumer = Arc::new(consumer);
    let queues: Vec<_> = (0..PARTITIONS as i32)
        .map(|p| consumer.split_partition_queue(TOPIC, p).unwrap())
        .collect();
    std::thread::spawn(move || {
        let mut next: Vec<Option<i64>> = vec![None; PARTITIONS];
        let mut budget = 0.0f64;
        let mut last = Instant::now();
        let mut last_commit = Instant::now();
        // Bounded: the test stops it, or 5 minutes pass.
        let deadline = Instant::now() + Duration::from_secs(300);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let _ = consumer.poll(Duration::ZERO);
            let dt = last.elapsed().as_secs_f64();
            last = Instant::now();
            budget = (budget + slow_rate * dt).min(slow_rate * 0.1 + 1.0);
            for (p, queue) in queues.iter().enumerate() {
                let limited = p == SLOW && !fast.load(Ordering::Relaxed);
                // The fast consumers: up to 200 messages a pass (5 ms apart).
                for _ in 0..200 {
                    if limited && budget < 1.0 {
                        break;
                    }
                    let Some(Ok(message)) = queue.poll(Duration::ZERO) else {
                        break;
                    };
                    if limited {
                        budget -= 1.0;
                    }
                    let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
                    let seq: u32 = std::str::from_utf8(message.payload().unwrap())
                        .unwrap()
                        .parse()
                        .unwrap();
                    let mut seen = seen.lock().unwrap();
                    *seen.count.entry(key.clone()).or_default() += 1;
                    let last = seen.last.entry(key.clone()).or_default();
                    if seq < *last {
                        let previous = *last;
                        seen.out_of_order.push((key, seq, previous));
                    } else {
                        *last = seq;
                    }
                    next[p] = Some(message.offset() + 1);
                }
            }
            if last_commit.elapsed() >= Duration::from_millis(50) {
                let mut tpl = TopicPartitionList::new();
                for (p, offset) in next.iter().enumerate() {
                    if let Some(offset) = offset {
                        tpl.add_partition_offset(TOPIC, p as i32, Offset::Offset(*offset))
                            .unwrap();
                    }
                }
                if tpl.count() > 0 {
                    let _ = consumer.commit(&tpl, CommitMode::Sync);
                }
                last_commit = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

fn producer(
    kafka: &ClientConfig,
    redis: &RedisServer,
    order: &KeyOrderConfig,
) -> AsyncSmartProducer {
    let mut redis_config = RedisConfig::new(redis.url());
    redis_config.key_prefix = "order".into();
    redis_config.cluster = "mock".into();
    redis_config.lease_ttl = Duration::from_secs(1);
    // A recovered consumer is trusted again after 5 s (60 s by default), so keys come home
    // within the run (5 s, no more than 10 s after flapping).
    let mut damping = DampingConfig::default();
    damping.recovery_hold = Duration::from_secs(5);
    damping.max_hold = Duration::from_secs(10);
    let mut kafka = kafka.clone();
    kafka
        .set("linger.ms", "2")
        .set("enable.idempotence", "true");
    AsyncSmartProducer::builder(kafka)
        .consumer_group(GROUP)
        .topics([TOPIC])
        .monitor(
            MonitorConfig::default()
                .with_refresh_interval(Duration::from_millis(250))
                .with_damping(damping),
        )
        .router(RouterConfig::default().with_key_order(order.clone()))
        .redis(redis_config)
        .build()
        .unwrap()
}

/// Per key, where each of its messages went and why, in order.
type Journeys = HashMap<String, Vec<(Route, i32)>>;

/// What one run showed.
struct Run {
    seen: Seen,
    routes: HashMap<Route, u64>,
    /// Per key, the route of each message, in order.
    journeys: Journeys,
    failed: u64,
    all_in: bool,
}

/// Two instances, 1 000 keys × 10 messages at about 400 messages a second; the slow consumer
/// (20 messages a second) recovers after 15 s.
async fn run(order: KeyOrderConfig) -> Run {
    let kafka = MockKafka::start(1).unwrap();
    LagScenario::new(TOPIC, PARTITIONS)
        .create(&kafka, GROUP)
        .await
        .unwrap();
    let redis = RedisServer::start().unwrap();
    let config = kafka.client_config();
    let producers = [
        producer(&config, &redis, &order),
        producer(&config, &redis, &order),
    ];
    let (fast, stop) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let seen = Arc::new(Mutex::new(Seen::default()));
    let consumer = consume(&config, 20.0, fast.clone(), stop.clone(), seen.clone());

    let started = Instant::now();
    let routes: Arc<Mutex<HashMap<Route, u64>>> = Arc::default();
    let journeys: Arc<Mutex<Journeys>> = Arc::default();
    let failed = Arc::new(AtomicU64::new(0));
    let recovery = {
        let fast = fast.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(15)).await;
            fast.store(true, Ordering::Relaxed);
        })
    };
    futures::stream::iter(0..KEYS)
        .map(|k| {
            let producers = producers.clone();
            let routes = routes.clone();
            let journeys = journeys.clone();
            let failed = failed.clone();
            async move {
                let key = format!("account-{k}");
                // Spread the keys' starts over the first 2.5 s.
                tokio::time::sleep(Duration::from_micros((k as u64 * 2500) % 2_500_000)).await;
                for seq in 1..=PER_KEY {
                    let payload = seq.to_string();
                    let producer = &producers[seq as usize % 2];
                    match producer
                        .produce(FutureRecord::to(TOPIC).key(&key).payload(&payload))
                        .await
                    {
                        Ok(delivery) => {
                            *routes.lock().unwrap().entry(delivery.route).or_default() += 1;
                            journeys
                                .lock()
                                .unwrap()
                                .entry(key.clone())
                                .or_default()
                                .push((delivery.route, delivery.partition));
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2500)).await;
                }
            }
        })
        .buffer_unordered(KEYS)
        .collect::<Vec<()>>()
        .await;
    recovery.await.unwrap();
    let sent_for = started.elapsed();

    // Everything is consumed (bounded wait).
    let total = KEYS as u32 * PER_KEY;
    let all_in = common::eventually(Duration::from_secs(60), || {
        let seen = seen.clone();
        async move {
            let n: u32 = seen.lock().unwrap().count.values().sum();
            (n >= total).then_some(n)
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    consumer.join().unwrap();
    for producer in &producers {
        producer.close(Duration::from_secs(5)).await.unwrap();
    }
    let routes = routes.lock().unwrap().clone();
    eprintln!("sent for {sent_for:?}; routes {routes:?}");
    Run {
        seen: std::mem::take(&mut *seen.lock().unwrap()),
        routes,
        journeys: std::mem::take(&mut *journeys.lock().unwrap()),
        failed: failed.load(Ordering::Relaxed),
        all_in: all_in.is_some(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_never_reorder_a_key_through_a_slow_consumer_and_its_recovery() {
    common::init_tracing();
    let Run {
        seen,
        routes,
        journeys,
        failed,
        all_in,
    } = run(KeyOrderConfig::strict().with_max_hold(Duration::from_secs(60))).await;
    assert_eq!(failed, 0);
    assert!(all_in, "consumed {:?}", seen.count.values().sum::<u32>());
    assert!(
        seen.out_of_order.is_empty(),
        "{} out of order, e.g. {:?}",
        seen.out_of_order.len(),
        &seen.out_of_order[..seen.out_of_order.len().min(5)]
    );
    // Every key's messages, each exactly once.
    assert_eq!(seen.count.len(), KEYS);
    assert!(seen.count.values().all(|&n| n == PER_KEY));
    // The slow partition's keys moved off it, then came home after the recovery; no bound
    // was hit.
    assert_eq!(routes.get(&Route::Pinned), None, "{routes:?}");
    let slow_keys: Vec<_> = journeys
        .iter()
        .filter(|(k, _)| {
            Partitioner::ConsistentRandom.home(Some(k.as_bytes()), PARTITIONS as i32)
                == Some(SLOW as i32)
        })
        .collect();
    assert!(slow_keys.len() > 150, "{}", slow_keys.len());
    let moved_and_back = slow_keys
        .iter()
        .filter(|(_, j)| {
            j.iter()
                .any(|&(r, p)| r == Route::Moved && p != SLOW as i32)
        })
        .count();
    let home_at_the_end = slow_keys
        .iter()
        .filter(|(_, j)| j.last() == Some(&(Route::Home, SLOW as i32)))
        .count();
    eprintln!(
        "{} keys homed on the slow partition: {moved_and_back} moved, {home_at_the_end} home at the end",
        slow_keys.len()
    );
    assert!(
        moved_and_back >= 20,
        "{moved_and_back} of {}",
        slow_keys.len()
    );
    assert_eq!(home_at_the_end, slow_keys.len());
}

/// The same run under relaxed key order: the checker above sees keys reordered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relaxed_key_order_reorders_keys_in_the_same_run() {
    common::init_tracing();
    let run = run(KeyOrderConfig::default()).await;
    eprintln!(
        "relaxed: {} of {} messages out of order",
        run.seen.out_of_order.len(),
        KEYS as u32 * PER_KEY
    );
    assert_eq!(run.failed, 0);
    assert!(run.all_in);
    assert!(!run.seen.out_of_order.is_empty());
    assert!(run.seen.count.values().all(|&n| n == PER_KEY));
}
