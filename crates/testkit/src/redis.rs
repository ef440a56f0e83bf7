//! A real `redis-server` for tests, on a free loopback port.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{TestkitError, TestkitResult};

/// A `redis-server` process the test owns: started on a free port of 127.0.0.1, killed on
/// drop, and killable and restartable (on the same port) mid-test.
///
/// The binary is `redis-server` from `PATH`, or `$KSP_REDIS_SERVER`.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    /// Extra arguments (cluster mode), and the directory holding its files.
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server with persistence off and waits until it answers `PING`.
    pub fn start() -> TestkitResult<Self> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let mut server = Self {
            port,
            child: None,
            extra: Vec::new(),
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> TestkitResult<()> {
        let binary = std::env::var("KSP_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(&binary)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--loglevel", "warning"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                TestkitError::Demo(format!(
                    "cannot start `{binary}` ({e}); install it (Debian: apt-get install \
                     redis-server) or point KSP_REDIS_SERVER at it"
                ))
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(TestkitError::Demo(format!(
            "redis-server on port {} did not answer within 10 s",
            self.port
        )))
    }

    /// Whether the server answers `PING` now.
    pub fn ping(&self) -> bool {
        self.command(&["PING"])
            .is_ok_and(|r| r.starts_with("+PONG"))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL: no goodbye to clients) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) -> TestkitResult<()> {
        self.kill();
        self.spawn()
    }

    /// Sends one command and returns the raw RESP reply (for tests that plant data).
    pub fn command(&self, args: &[&str]) -> std::io::Result<String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        stream.write_all(&request)?;
        let mut reply = vec![0u8; 1 << 16];
        let n = stream.read(&mut reply)?;
        Ok(String::from_utf8_lossy(&reply[..n]).into_owned())
    }

    /// `SET key value` with raw bytes as value (planting corrupt payloads).
    pub fn set(&self, key: &str, value: &str) -> std::io::Result<()> {
        let reply = self.command(&["SET", key, value])?;
        if reply.starts_with("+OK") {
            Ok(())
        } else {
            Err(std::io::Error::other(reply))
        }
    }
}

/// A Redis Cluster of `masters` `redis-server` processes (no replicas) on free loopback ports,
/// its slots assigned with `redis-cli --cluster create`; removed on drop.
///
/// The fleet's keys carry a hash tag, so the scripts that touch several of them run in one
/// slot; tests run the same bodies here and on a single server.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    /// Starts the nodes, creates the cluster and waits until every node reports it healthy.
    pub fn start(masters: usize) -> TestkitResult<Self> {
        let dir = std::env::temp_dir().join(format!(
            "ksp-redis-cluster-{}-{}",
            std::process::id(),
            free_port()?
        ));
        std::fs::create_dir_all(&dir)?;
        let mut nodes = Vec::with_capacity(masters);
        for _ in 0..masters {
            let port = cluster_port()?;
            let config = dir.join(format!("nodes-{port}.conf"));
            let mut node = RedisServer {
                port,
                child: None,
                extra: vec![
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    config.display().to_string(),
                    "--cluster-node-timeout".into(),
                    "2000".into(),
                    "--dir".into(),
                    dir.display().to_string(),
                ],
            };
            node.spawn()?;
            nodes.push(node);
        }
        let cluster = Self { nodes, dir };
        let cli = std::env::var("KSP_REDIS_CLI").unwrap_or_else(|_| "redis-cli".into());
        let mut create = Command::new(&cli);
        create.args(["--cluster", "create"]);
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let output = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .map_err(|e| TestkitError::Demo(format!("cannot run `{cli}`: {e}")))?;
        if !output.status.success() {
            return Err(TestkitError::Demo(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&output.stdout)
            )));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let ready = cluster.nodes.iter().all(|n| {
                n.command(&["CLUSTER", "INFO"])
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            });
            if ready {
                return Ok(cluster);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(TestkitError::Demo(
            "the redis cluster did not become healthy within 20 s".into(),
        ))
    }

    /// `redis-cluster://127.0.0.1:P1?node=127.0.0.1:P2&…`, as fred reads it.
    pub fn url(&self) -> String {
        let mut nodes = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port));
        let first = nodes.next().unwrap_or_default();
        let rest: Vec<String> = nodes.map(|n| format!("node={n}")).collect();
        if rest.is_empty() {
            format!("redis-cluster://{first}")
        } else {
            format!("redis-cluster://{first}?{}", rest.join("&"))
        }
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port `p` with `p` and its cluster bus port `p + 10000` both free: below the kernel's
/// ephemeral range, so that the bus port exists.
fn cluster_port() -> std::io::Result<u16> {
    let seed = u64::from(std::process::id()) ^ u64::from(free_port()?) << 16;
    for i in 0..2000u64 {
        let port = 20_000 + ((seed.wrapping_mul(0x9e37_79b9) + i * 7919) % 10_000) as u16;
        let free = |p: u16| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok();
        if free(port) && free(port + 10_000) {
            return Ok(port);
        }
    }
    Err(std::io::Error::other(
        "no free port pair for a redis cluster node",
    ))
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
