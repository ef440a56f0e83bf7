//! An embedded cluster in a child process: the child prints `bootstrap <address>`, then
//! answers each line of its standard input with `ok <line>` or `error <line>: <text>`, until
//! that closes. The benchmarks run the broker there to keep it off the producers' CPUs; the
//! chaos soak, to keep its memory out of the RSS it judges.

use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;

use crate::{TestkitError, TestkitResult};

/// How long a child may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a child may take to answer a request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a child whose standard input closed may take to end before it is killed.
const END_TIMEOUT: Duration = Duration::from_secs(2);

/// A child process serving an embedded cluster, ended when dropped: its standard input is
/// closed, and it is killed if it has not ended within 2 s.
pub struct ClusterProcess {
    child: Mutex<Child>,
    pid: u32,
    program: String,
    pipes: Mutex<Option<Pipes>>,
    bootstrap: String,
    answer_timeout: Duration,
}

struct Pipes {
    stdin: ChildStdin,
    /// The child's lines, read by a thread of their own (so that every wait has a bound).
    lines: Receiver<String>,
}

impl fmt::Debug for ClusterProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterProcess")
            .field("program", &self.program)
            .field("pid", &self.pid)
            .field("bootstrap", &self.bootstrap)
            .finish_non_exhaustive()
    }
}

impl ClusterProcess {
    /// Starts `program` with `args` and waits (up to 60 s) for its address.
    pub fn start(program: &Path, args: &[String]) -> TestkitResult<Self> {
        Self::start_within(program, args, START_TIMEOUT)
    }

    pub(crate) fn start_within(
        program: &Path,
        args: &[String],
        timeout: Duration,
    ) -> TestkitResult<Self> {
        let name = program.display().to_string();
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| TestkitError::Demo(format!("starting the broker process {name}: {e}")))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(TestkitError::Demo(format!(
                "the broker process {name} has no pipes"
            )));
        };
        let (send, lines) = std::sync::mpsc::channel();
        let reader = std::thread::Builder::new()
            .name("ksp-cluster-process".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if send.send(line).is_err() {
                        break;
                    }
                }
            });
        let pid = child.id();
        // From here on, dropping `process` ends the child.
        let mut process = Self {
            child: Mutex::new(child),
            pid,
            program: name,
            pipes: Mutex::new(Some(Pipes { stdin, lines })),
            bootstrap: String::new(),
            answer_timeout: ANSWER_TIMEOUT,
        };
        reader.map_err(|e| process.failed("starting its reader", &e))?;
        let first = {
            let pipes = process.pipes.lock().unwrap_or_else(PoisonError::into_inner);
            let pipes = pipes
                .as_ref()
                .ok_or_else(|| process.failed("reading", &"no pipes"))?;
            process.next_line(pipes, timeout, "its address")?
        };
        process.bootstrap = first
            .strip_prefix("bootstrap ")
            .ok_or_else(|| process.failed("its first line", &format!("{first:?}")))?
            .to_owned();
        Ok(process)
    }

    /// Waits `timeout` for an answer instead of 10 s.
    #[cfg(test)]
    fn answer_within(mut self, timeout: Duration) -> Self {
        self.answer_timeout = timeout;
        self
    }

    /// The cluster's `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// A client configuration pointing at the cluster.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        config
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// The child's resident memory, in bytes (Linux; 0 where `/proc` cannot be read).
    pub fn rss_bytes(&self) -> u64 {
        rss_bytes(&format!("/proc/{}/statm", self.pid))
    }

    /// Sends `request` (one line) and waits (up to 10 s) for its answer. Blocks: from async
    /// code, call it inside `tokio::task::block_in_place`. One request at a time: a second
    /// caller waits for the first one's answer.
    pub fn ask(&self, request: &str) -> TestkitResult<()> {
        let asked = |e: &dyn fmt::Display| {
            TestkitError::Demo(format!(
                "the broker process {}, asked `{request}`: {e}",
                self.program
            ))
        };
        if request.contains(['\n', '\r']) {
            return Err(asked(&"a request is one line"));
        }
        let line = {
            let mut pipes = self.pipes.lock().unwrap_or_else(PoisonError::into_inner);
            let pipes = pipes
                .as_mut()
                .ok_or_else(|| asked(&"its input is closed"))?;
            // Answers that came after their request's wait gave up.
            while pipes.lines.try_recv().is_ok() {}
            pipes
                .stdin
                .write_all(format!("{request}\n").as_bytes())
                .and_then(|()| pipes.stdin.flush())
                .map_err(|e| asked(&e))?;
            self.next_line(pipes, self.answer_timeout, "an answer")?
        };
        if line.strip_prefix("ok ") == Some(request) {
            return Ok(());
        }
        match line
            .strip_prefix("error ")
            .and_then(|rest| rest.strip_prefix(request))
            .and_then(|rest| rest.strip_prefix(": "))
        {
            Some(text) => Err(asked(&text)),
            None => Err(asked(&format!("answered another request: {line:?}"))),
        }
    }

    /// The child's next line, waited for at most `timeout`.
    fn next_line(&self, pipes: &Pipes, timeout: Duration, what: &str) -> TestkitResult<String> {
        match pipes.lines.recv_timeout(timeout) {
            Ok(line) => Ok(line),
            Err(RecvTimeoutError::Timeout) => Err(self.failed(
                &format!("waiting for {what}"),
                &format!("none within {timeout:?}"),
            )),
            Err(RecvTimeoutError::Disconnected) => Err(self.failed(
                &format!("waiting for {what}"),
                &format!("it ended ({})", self.exit_status()),
            )),
        }
    }

    /// How the child ended, waited for up to a second (its output has closed).
    fn exit_status(&self) -> String {
        let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.to_string(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(None) => return "still running".to_owned(),
                Err(e) => return format!("its status unknown: {e}"),
            }
        }
    }

    fn failed(&self, doing: &str, error: &dyn fmt::Display) -> TestkitError {
        TestkitError::Demo(format!(
            "the broker process {}: {doing}: {error}",
            self.program
        ))
    }

    fn end(&mut self) {
        // Closing its standard input ends it; killed if it lingers.
        drop(
            self.pipes
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let child = self.child.get_mut().unwrap_or_else(PoisonError::into_inner);
        let deadline = Instant::now() + END_TIMEOUT;
        // While unwinding from a panic, no wait: killed at once.
        while !std::thread::panicking() && Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ClusterProcess {
    fn drop(&mut self) {
        // Waits for the child: off the runtime's workers when dropped on one.
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread && !std::thread::panicking() {
            tokio::task::block_in_place(|| self.end());
        } else {
            self.end();
        }
    }
}

/// The child's side: prints `bootstrap <bootstrap>`, then answers each line of standard input
/// with `ok <line>` if `apply` accepts it, or `error <line>: <text>`; returns when standard
/// input closes. Standard output is the protocol's: nothing else in the child may write to it
/// (logs go to standard error).
pub fn serve_cluster(
    bootstrap: &str,
    mut apply: impl FnMut(&str) -> Result<(), String>,
) -> TestkitResult<()> {
    let io_error = |e: std::io::Error| TestkitError::Demo(format!("serving the cluster: {e}"));
    let say = |line: String| {
        let mut out = std::io::stdout().lock();
        out.write_all(format!("{line}\n").as_bytes())
            .and_then(|()| out.flush())
            .map_err(io_error)
    };
    say(format!("bootstrap {bootstrap}"))?;
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(io_error)?;
        say(match apply(&line) {
            Ok(()) => format!("ok {line}"),
            Err(text) => format!("error {line}: {}", text.replace('\n', " ")),
        })?;
    }
    Ok(())
}

/// The resident memory a `/proc/<pid>/statm` file gives, in bytes; 0 if unreadable.
pub(crate) fn rss_bytes(statm: &str) -> u64 {
    std::fs::read_to_string(statm)
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> (std::path::PathBuf, Vec<String>) {
        ("sh".into(), vec!["-c".to_owned(), script.to_owned()])
    }

    /// The parent's side, against a stand-in child (`sh`): each kind of answer, one out of
    /// step, a child that ended, one that says something else first, one that says nothing.
    #[test]
    fn a_child_is_answered_line_by_line_and_every_wait_has_a_bound() {
        let (program, args) = sh("echo bootstrap 127.0.0.1:9; \
             read a; echo \"ok $a\"; \
             read b; echo \"error $b: no broker 9\"; \
             read c; echo \"ok something else\"; \
             read d; exit 3");
        let child = ClusterProcess::start(&program, &args).unwrap();
        assert_eq!(child.bootstrap_servers(), "127.0.0.1:9");
        assert_eq!(
            child.client_config().get("bootstrap.servers"),
            Some("127.0.0.1:9")
        );
        child.ask("down 1").unwrap();
        let refused = child.ask("down 9").unwrap_err().to_string();
        assert!(refused.contains("asked `down 9`: no broker 9"), "{refused}");
        let out_of_step = child.ask("up 1").unwrap_err().to_string();
        assert!(
            out_of_step.contains("answered another request"),
            "{out_of_step}"
        );
        let ended = child.ask("up 2").unwrap_err().to_string();
        assert!(ended.contains("it ended (exit status: 3)"), "{ended}");
        assert!(child.ask("two\nlines").is_err());

        let (program, args) = sh("echo hello; read a");
        let wrong = ClusterProcess::start(&program, &args)
            .unwrap_err()
            .to_string();
        assert!(wrong.contains("\"hello\""), "{wrong}");

        let (program, args) = sh("exec sleep 60");
        let started = Instant::now();
        let silent = ClusterProcess::start_within(&program, &args, Duration::from_millis(200))
            .unwrap_err()
            .to_string();
        assert!(silent.contains("none within"), "{silent}");

        // Reads the request and answers it late: that late answer is not taken for the next
        // request's.
        let (program, args) = sh(
            "echo bootstrap 127.0.0.1:9; read a; sleep 1; echo \"ok $a\"; \
             read b; echo \"ok $b\"; exec sleep 60",
        );
        let slow = ClusterProcess::start(&program, &args)
            .unwrap()
            .answer_within(Duration::from_millis(200));
        let late = slow.ask("down 1").unwrap_err().to_string();
        assert!(late.contains("none within"), "{late}");
        std::thread::sleep(Duration::from_millis(2500));
        slow.ask("up 1").unwrap();
        // Dropped: killed, not waited for until it ends by itself.
        assert!(started.elapsed() < Duration::from_secs(30), "{silent}");
    }
}
