//! `ksp check-config`: every example file is valid, broken ones are refused with the library's
//! error, secrets never reach the output, and environment overrides apply.

use std::path::{Path, PathBuf};
use std::process::Command;

fn ksp(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ksp"));
    command.args(args);
    // Only the overrides a test sets: none leak in from the environment running it.
    for (var, _) in std::env::vars().filter(|(k, _)| k.starts_with("KSP_")) {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    let out = command.output().expect("ksp runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/config");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// A file in a fresh temporary directory.
fn file(name: &str, text: &str) -> (tempdir::Dir, String) {
    let dir = tempdir::Dir::new(name);
    let path = dir.0.join(name);
    std::fs::write(&path, text).unwrap();
    let path = path.display().to_string();
    (dir, path)
}

mod tempdir {
    /// A directory removed when dropped.
    pub(crate) struct Dir(pub(crate) std::path::PathBuf);

    impl Dir {
        pub(crate) fn new(tag: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("ksp-check-config-{}-{tag}", std::process::id()));
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[test]
fn every_example_file_is_valid_and_printed_with_its_effective_settings() {
    let files = examples();
    assert!(files.len() >= 6, "{files:?}");
    for path in files {
        let (ok, out, err) = ksp(&["check-config", &path.display().to_string()], &[]);
        assert!(ok, "{}: {err}", path.display());
        assert!(out.contains("is valid"), "{out}");
        assert!(out.contains("Effective monitor settings"), "{out}");
        assert!(out.contains("refresh_interval"), "{out}");
        assert!(out.contains("key_order"), "{out}");
    }
}

#[test]
fn broken_files_are_refused_with_the_setting_the_value_and_what_is_allowed() {
    let cases = [
        (
            "bad-range.toml",
            "topics = [\"t\"]\nconsumer_group = \"g\"\n[health_monitor]\nrefresh_interval = \"2h\"\n",
            "invalid `refresh_interval` = 7200s: expected between 10ms and 3600s",
        ),
        (
            "typo.toml",
            "topics = [\"t\"]\n[health_monitor]\nrefresh_intervall = \"2s\"\n",
            "refresh_intervall",
        ),
        (
            "strict.yaml",
            "topics: [t]\nkey_order:\n  mode: strict\n  max_held_messages: 0\n",
            "key_order.max_held_messages",
        ),
        (
            "unknown.ini",
            "topics = t\n",
            "unknown configuration format",
        ),
        (
            "bad-kafka.toml",
            "topics = [\"t\"]\nconsumer_group = \"g\"\n[kafka]\n\"linger.ms\" = \"soon\"\n",
            "linger.ms",
        ),
        ("no-group.toml", "topics = [\"t\"]\n", "consumer group"),
    ];
    for (name, text, expected) in cases {
        let (_dir, path) = file(name, text);
        let (ok, out, err) = ksp(&["check-config", &path], &[]);
        assert!(!ok, "{name} accepted: {out}");
        assert!(err.contains(expected), "{name}: {err}");
    }
    let (ok, _, err) = ksp(&["check-config", "/nonexistent/ksp.toml"], &[]);
    assert!(!ok);
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn secrets_are_redacted_and_environment_overrides_apply() {
    let (_dir, path) = file(
        "secret.toml",
        "\"bootstrap.servers\" = \"localhost:9092\"\ntopics = [\"t\"]\nconsumer_group = \"g\"\n\
         [kafka]\n\"sasl.password\" = \"hunter2\"\n\
         [redis]\nurl = \"redis://user:s3cret@redis:6379/0\"\n",
    );
    let (ok, out, err) = ksp(
        &["check-config", &path],
        &[("KSP_HEALTH_MONITOR__REFRESH_INTERVAL", "7s")],
    );
    assert!(ok, "{err}");
    assert!(!out.contains("hunter2"), "{out}");
    assert!(!out.contains("s3cret"), "{out}");
    assert!(out.contains("7s"), "{out}");
    let (ok, _, err) = ksp(
        &["check-config", &path],
        &[("KSP_HEALTH_MONITOR__REFRESH_INTERVAL", "forever")],
    );
    assert!(!ok);
    assert!(err.contains("\"forever\" is not a duration"), "{err}");
}

/// `cargo install --path crates/cli` builds `ksp` from its normal dependencies: none of them is
/// test machinery (the test kit, testcontainers and its Docker client).
#[test]
fn the_ksp_binary_pulls_no_test_machinery() {
    let out = Command::new(env!("CARGO"))
        .args(["tree", "-p", "ksp-cli", "-e", "normal", "--prefix", "none"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(tree.contains("ksp-producer"), "{tree}");
    for test_only in ["ksp-testkit", "testcontainers", "bollard"] {
        assert!(!tree.contains(test_only), "{test_only} in:\n{tree}");
    }
}

/// Bug: `check-config` passed a file without brokers, which `build()` then refused: it ran
/// every check but the lag reader's.
#[test]
fn a_file_without_brokers_is_refused_like_build_refuses_it() {
    let (_dir, path) = file(
        "no-brokers.toml",
        "topics = [\"t\"]\nconsumer_group = \"g\"\n",
    );
    let (ok, _, err) = ksp(&["check-config", &path], &[]);
    assert!(!ok);
    assert!(
        err.contains("invalid `bootstrap.servers` = <unset>"),
        "{err}"
    );
}
