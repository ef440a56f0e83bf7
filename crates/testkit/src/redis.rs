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
}

impl RedisServer {
    /// Starts a server with persistence off and waits until it answers `PING`.
    pub fn start() -> TestkitResult<Self> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let mut server = Self { port, child: None };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> TestkitResult<()> {
        let binary = std::env::var("KSP_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(&binary)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--loglevel", "warning"])
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

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
