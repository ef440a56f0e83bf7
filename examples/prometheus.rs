//! The library's metrics, served for Prometheus.
//!
//! ```sh
//! cargo run --example prometheus            # prints the exposition once
//! cargo run --example prometheus -- --serve 60   # also serves http://127.0.0.1:9898/metrics for 60 s
//! ```
//!
//! Install the recorder before building the producer: the send path registers its counters
//! once, at build time.
#![expect(
    clippy::print_stdout,
    reason = "a program that reports on its standard output"
)]

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use kafka_smart_producer::AsyncSmartProducer;
use kafka_smart_producer::monitor::MonitorConfig;
use kafka_smart_producer::rdkafka::producer::FutureRecord;
use ksp_testkit::{LagScenario, MockKafka};
use metrics_exporter_prometheus::PrometheusBuilder;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let serve = std::env::args()
        .skip_while(|a| a != "--serve")
        .nth(1)
        .map(|s| s.parse::<u64>())
        .transpose()?;
    let prometheus = PrometheusBuilder::new().install_recorder()?;

    let kafka = MockKafka::start(3)?;
    LagScenario::new("orders", 8)
        .lag(3, 5000)
        .create(&kafka, "processors")
        .await?;
    let producer = AsyncSmartProducer::builder(kafka.client_config())
        .consumer_group("processors")
        .topics(["orders"])
        .monitor(MonitorConfig::default().with_refresh_interval(Duration::from_millis(500)))
        .build()?;
    producer.refresh_health().await?;
    for i in 0..1000 {
        let key = format!("customer-{}", i % 50);
        let record = FutureRecord::to("orders").key(&key).payload("x");
        producer
            .produce(record)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    print!("{}", prometheus.render());

    if let Some(seconds) = serve {
        let listener = std::net::TcpListener::bind("127.0.0.1:9898")?;
        listener.set_nonblocking(true)?;
        println!("serving http://127.0.0.1:9898/metrics for {seconds} s");
        let until = Instant::now() + Duration::from_secs(seconds);
        while Instant::now() < until {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    stream.set_nonblocking(false)?;
                    let mut request = [0u8; 1024];
                    let _ = stream.read(&mut request);
                    let body = prometheus.render();
                    write!(
                        stream,
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    )?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    producer.close(Duration::from_secs(5)).await?;
    Ok(())
}
