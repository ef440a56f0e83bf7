//! Backends: the same test body runs on the embedded cluster, an external cluster, or a
//! testcontainers container; on a spawned redis-server, an external Redis, or a container.
//!
//! Chosen by environment:
//!
//! | variable | values | default |
//! |---|---|---|
//! | `KSP_TEST_KAFKA` | `embedded`, `external` (needs `KSP_KAFKA_BOOTSTRAP`), `container` (cargo feature `testcontainers` and a Docker engine), `auto` | `auto`: external if `KSP_KAFKA_BOOTSTRAP` is set, else embedded |
//! | `KSP_TEST_REDIS` | `spawn`, `external` (needs `KSP_REDIS_URL`), `container`, `auto` | `auto`: external if `KSP_REDIS_URL` is set, else spawn |
//!
//! `container` falls back to the embedded cluster (or a spawned redis-server) when no Docker
//! engine answers. Every fixture prints the backend it used to stderr, so a test log always
//! says what it ran against.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

use crate::{LagScenario, MockKafka, RedisServer, TestkitError, TestkitResult, kafka_error};

/// A Kafka cluster for a test, on whichever backend the environment asks for.
pub struct TestKafka {
    backend: KafkaBackend,
    bootstrap: String,
}

enum KafkaBackend {
    Embedded(MockKafka),
    External,
    /// Held so the container lives as long as the fixture.
    #[cfg(feature = "testcontainers")]
    Container(
        #[expect(
            dead_code,
            reason = "held so that the container lives as long as the fixture"
        )]
        Box<
            testcontainers_modules::testcontainers::ContainerAsync<
                testcontainers_modules::kafka::apache::Kafka,
            >,
        >,
    ),
}

impl TestKafka {
    /// Starts (or connects to) the cluster the environment names; see the module docs.
    pub async fn start() -> TestkitResult<Self> {
        let choice = std::env::var("KSP_TEST_KAFKA").unwrap_or_else(|_| "auto".into());
        Self::start_with(&choice).await
    }

    /// Starts the backend `choice` names (`embedded`, `external`, `container`, `auto`),
    /// whatever `KSP_TEST_KAFKA` says.
    pub async fn start_with(choice: &str) -> TestkitResult<Self> {
        let external = std::env::var("KSP_KAFKA_BOOTSTRAP").ok();
        let kafka = match (choice, external) {
            ("external" | "auto", Some(bootstrap)) => Self {
                backend: KafkaBackend::External,
                bootstrap,
            },
            ("external", None) => {
                return Err(TestkitError::Demo(
                    "KSP_TEST_KAFKA=external needs KSP_KAFKA_BOOTSTRAP".into(),
                ));
            }
            ("container", _) => match Self::container().await {
                Ok(kafka) => kafka,
                Err(why) => {
                    eprintln!(
                        "ksp-testkit: no Kafka container ({why}); using the embedded cluster"
                    );
                    Self::embedded()?
                }
            },
            ("embedded" | "auto", _) => Self::embedded()?,
            (other, _) => {
                return Err(TestkitError::Demo(format!(
                    "KSP_TEST_KAFKA={other:?}: expected embedded, external, container or auto"
                )));
            }
        };
        eprintln!(
            "ksp-testkit: kafka backend = {} ({})",
            kafka.backend(),
            kafka.bootstrap
        );
        Ok(kafka)
    }

    fn embedded() -> TestkitResult<Self> {
        let mock = MockKafka::start(3)?;
        Ok(Self {
            bootstrap: mock.bootstrap_servers().to_owned(),
            backend: KafkaBackend::Embedded(mock),
        })
    }

    #[cfg(feature = "testcontainers")]
    async fn container() -> Result<Self, String> {
        use testcontainers_modules::kafka::apache::{KAFKA_PORT, Kafka};
        let (node, port) = start_container(Kafka::default(), KAFKA_PORT).await?;
        Ok(Self {
            bootstrap: format!("127.0.0.1:{port}"),
            backend: KafkaBackend::Container(Box::new(node)),
        })
    }

    #[cfg(not(feature = "testcontainers"))]
    async fn container() -> Result<Self, String> {
        Err("ksp-testkit was built without the `testcontainers` feature".into())
    }

    /// Which backend runs: `embedded`, `external` or `container`.
    pub fn backend(&self) -> &'static str {
        match self.backend {
            KafkaBackend::Embedded(_) => "embedded",
            KafkaBackend::External => "external",
            #[cfg(feature = "testcontainers")]
            KafkaBackend::Container(_) => "container",
        }
    }

    /// The bootstrap servers.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// A client configuration pointing at the cluster.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        config
    }

    /// The embedded cluster, for fault injection (`None` on the other backends).
    pub fn mock(&self) -> Option<&MockKafka> {
        match &self.backend {
            KafkaBackend::Embedded(mock) => Some(mock),
            _ => None,
        }
    }

    /// Creates `topic` with `partitions` partitions (replication 1).
    pub async fn create_topic(&self, topic: &str, partitions: i32) -> TestkitResult<()> {
        if let Some(mock) = self.mock() {
            return mock.create_topic(topic, partitions);
        }
        let admin: AdminClient<DefaultClientContext> = self
            .client_config()
            .create()
            .map_err(kafka_error("creating an admin client"))?;
        let topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = admin
            .create_topics([&topic], &options)
            .await
            .map_err(kafka_error("creating a topic"))?;
        for result in results {
            if let Err((name, code)) = result
                && code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists
            {
                return Err(TestkitError::Demo(format!("creating topic {name}: {code}")));
            }
        }
        Ok(())
    }

    /// Creates the scenario's topic and puts `group` into its lags.
    pub async fn apply(&self, scenario: &LagScenario, group: &str) -> TestkitResult<()> {
        self.create_topic(scenario.topic(), scenario.partitions() as i32)
            .await?;
        scenario.apply(&self.client_config(), group).await
    }
}

impl std::fmt::Debug for TestKafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestKafka")
            .field("backend", &self.backend())
            .field("bootstrap", &self.bootstrap)
            .finish()
    }
}

/// A Redis for a test, on whichever backend the environment asks for.
pub struct TestRedis {
    backend: RedisBackend,
    url: String,
}

enum RedisBackend {
    Spawned(RedisServer),
    External,
    /// Held so the container lives as long as the fixture.
    #[cfg(feature = "testcontainers")]
    Container(
        #[expect(
            dead_code,
            reason = "held so that the container lives as long as the fixture"
        )]
        Box<
            testcontainers_modules::testcontainers::ContainerAsync<
                testcontainers_modules::redis::Redis,
            >,
        >,
    ),
}

impl TestRedis {
    /// Starts (or connects to) the Redis the environment names; see the module docs.
    pub async fn start() -> TestkitResult<Self> {
        let choice = std::env::var("KSP_TEST_REDIS").unwrap_or_else(|_| "auto".into());
        Self::start_with(&choice).await
    }

    /// Starts the backend `choice` names (`spawn`, `external`, `container`, `auto`), whatever
    /// `KSP_TEST_REDIS` says.
    pub async fn start_with(choice: &str) -> TestkitResult<Self> {
        let external = std::env::var("KSP_REDIS_URL").ok();
        let redis = match (choice, external) {
            ("external" | "auto", Some(url)) => Self {
                backend: RedisBackend::External,
                url,
            },
            ("external", None) => {
                return Err(TestkitError::Demo(
                    "KSP_TEST_REDIS=external needs KSP_REDIS_URL".into(),
                ));
            }
            ("container", _) => match Self::container().await {
                Ok(redis) => redis,
                Err(why) => {
                    eprintln!("ksp-testkit: no Redis container ({why}); spawning redis-server");
                    Self::spawned()?
                }
            },
            ("spawn" | "auto", _) => Self::spawned()?,
            (other, _) => {
                return Err(TestkitError::Demo(format!(
                    "KSP_TEST_REDIS={other:?}: expected spawn, external, container or auto"
                )));
            }
        };
        eprintln!(
            "ksp-testkit: redis backend = {} ({})",
            redis.backend(),
            redis.url
        );
        Ok(redis)
    }

    fn spawned() -> TestkitResult<Self> {
        let server = RedisServer::start()?;
        Ok(Self {
            url: server.url(),
            backend: RedisBackend::Spawned(server),
        })
    }

    #[cfg(feature = "testcontainers")]
    async fn container() -> Result<Self, String> {
        use testcontainers_modules::redis::{REDIS_PORT, Redis};
        let (node, port) = start_container(Redis::default(), REDIS_PORT.into()).await?;
        Ok(Self {
            url: format!("redis://127.0.0.1:{port}"),
            backend: RedisBackend::Container(Box::new(node)),
        })
    }

    #[cfg(not(feature = "testcontainers"))]
    async fn container() -> Result<Self, String> {
        Err("ksp-testkit was built without the `testcontainers` feature".into())
    }

    /// Which backend runs: `spawned`, `external` or `container`.
    pub fn backend(&self) -> &'static str {
        match self.backend {
            RedisBackend::Spawned(_) => "spawned",
            RedisBackend::External => "external",
            #[cfg(feature = "testcontainers")]
            RedisBackend::Container(_) => "container",
        }
    }

    /// The URL to connect to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The spawned server, to kill and restart it (`None` on the other backends).
    pub fn server(&mut self) -> Option<&mut RedisServer> {
        match &mut self.backend {
            RedisBackend::Spawned(server) => Some(server),
            _ => None,
        }
    }
}

impl std::fmt::Debug for TestRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestRedis")
            .field("backend", &self.backend())
            .field("url", &ksp_redis_free_redact(&self.url))
            .finish()
    }
}

/// Hides a password in a URL without depending on the Redis crate.
fn ksp_redis_free_redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://<redacted>@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Starts a container of `image` and finds the host port that `port` is published on; the
/// error, rendered, when there is no Docker engine (or anything else goes wrong).
#[cfg(feature = "testcontainers")]
async fn start_container<I: testcontainers_modules::testcontainers::Image>(
    image: I,
    port: testcontainers_modules::testcontainers::core::ContainerPort,
) -> Result<
    (
        testcontainers_modules::testcontainers::ContainerAsync<I>,
        u16,
    ),
    String,
> {
    use testcontainers_modules::testcontainers::runners::AsyncRunner;
    let node = image.start().await.map_err(|e| e.to_string())?;
    let port = node
        .get_host_port_ipv4(port)
        .await
        .map_err(|e| e.to_string())?;
    Ok((node, port))
}
