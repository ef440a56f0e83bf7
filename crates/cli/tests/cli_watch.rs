//! `ksp watch` in a real terminal: run under `tmux` against the embedded cluster, driven by
//! keys, read back from the pane. Needs `tmux` (the test command installs it).

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use ksp_testkit::{LagScenario, MockKafka};

/// A detached tmux session on a server of its own, killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("tmux runs (the test command installs it)")
    }

    /// Starts `command` in a 120×30 terminal.
    fn start(command: &str) -> Self {
        let tmux = Self {
            socket: format!("ksp-watch-test-{}", std::process::id()),
        };
        let out = tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "ksp",
            "-x",
            "120",
            "-y",
            "30",
            command,
        ]);
        assert!(out.status.success(), "{out:?}");
        tmux
    }

    fn screen(&self) -> String {
        let out = self.run(&["capture-pane", "-p", "-t", "ksp"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        let out = self.run(&["send-keys", "-t", "ksp", keys]);
        assert!(out.status.success(), "{out:?}");
    }

    /// The screen once it shows `what`, or a failure with the screen after 20 s.
    fn wait_for(&self, what: &str) -> String {
        self.wait_until(what, |screen| screen.contains(what))
    }

    /// The screen once `ready` holds for it, or a failure with the screen after 20 s.
    fn wait_until(&self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen();
            if ready(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the screen never showed {what}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// The footer's read count.
fn reads(screen: &str) -> u64 {
    screen
        .split("read ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no read count:\n{screen}"))
}

fn row<'a>(screen: &'a str, partition: &str) -> &'a str {
    screen
        .lines()
        .find(|l| l.trim_start_matches(['│', ' ']).split_whitespace().next() == Some(partition))
        .unwrap_or_else(|| panic!("no row for partition {partition}:\n{screen}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_draws_partitions_switches_topic_pauses_and_restores_the_terminal() {
    let kafka = MockKafka::start(1).unwrap();
    LagScenario::new("orders", 4)
        .lag(2, 5000)
        .create(&kafka, "g")
        .await
        .unwrap();
    LagScenario::new("payments", 2)
        .lag(1, 300)
        .create(&kafka, "g")
        .await
        .unwrap();
    let command = format!(
        "'{}' watch --bootstrap {} --group g --topic orders,payments --interval 200ms; \
         echo \"ksp exited with $? and $(stty -a | tr ' ;' '\\n\\n' | grep -x -- '-*icanon')\"; \
         sleep 60",
        env!("CARGO_BIN_EXE_ksp"),
        kafka.bootstrap_servers()
    );
    let screen = tokio::task::spawn_blocking(move || {
        let tmux = Tmux::start(&command);
        let screen = tmux.wait_for("3 of 4 partitions routable");
        // The hot partition has the longest bar and is marked; the others are healthy.
        let hot = row(&screen, "2");
        assert!(
            hot.contains("█████") && hot.contains("5000") && hot.contains("HOT"),
            "{screen}"
        );
        assert!(row(&screen, "0").contains("healthy"), "{screen}");
        assert!(
            screen.contains("orders") && screen.contains("payments"),
            "{screen}"
        );
        // Reads go on: the footer counts them.
        tmux.wait_until("3 reads", |s| reads(s) >= 3);

        tmux.keys("Tab");
        let screen = tmux.wait_for("topic payments");
        assert!(row(&screen, "1").contains("300"), "{screen}");

        // Paused: no read, not even one in flight when the key came.
        tmux.keys("p");
        let paused = tmux.wait_for("PAUSED");
        std::thread::sleep(Duration::from_millis(800));
        let still = tmux.screen();
        assert_eq!(
            reads(&paused),
            reads(&still),
            "reads while paused:\n{still}"
        );
        // `r` reads once while paused; `p` resumes.
        tmux.keys("r");
        tmux.wait_until("a read while paused", |s| reads(s) == reads(&still) + 1);
        tmux.keys("p");
        tmux.wait_until("reads going on", |s| {
            reads(s) >= reads(&still) + 3 && !s.contains("PAUSED")
        });

        tmux.keys("q");
        tmux.wait_for("ksp exited with")
    })
    .await
    .unwrap();
    // It exited cleanly, the alternate screen is gone and the terminal is back in canonical
    // (cooked) mode: `stty` says `icanon`, not `-icanon`.
    assert!(screen.contains("ksp exited with 0 and icanon"), "{screen}");
    assert!(!screen.contains("partitions routable"), "{screen}");
}
