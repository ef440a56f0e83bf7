//! Every file under examples/config loads, and the three spellings of the advanced form agree.

use std::path::Path;
use std::time::Duration;

use kafka_smart_producer::SmartProducerConfig;
use kafka_smart_producer::config::{CalculatorConfig, ConfigFileError};

fn load(name: &str) -> SmartProducerConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/config")
        .join(name);
    SmartProducerConfig::load_with_env(&path, std::iter::empty())
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn every_example_file_loads_and_builds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.contains("redis") && cfg!(not(feature = "redis")) {
            let err = SmartProducerConfig::load_with_env(dir.join(&name), std::iter::empty())
                .unwrap_err();
            assert!(err.to_string().contains("redis"), "{err}");
            continue;
        }
        let config = load(&name);
        config.builder().unwrap().validate().unwrap();
        assert!(config.consumer_group().is_some(), "{name}");
        seen += 1;
    }
    assert!(seen >= 5, "{seen} files");
}

#[test]
fn toml_yaml_and_json_spell_the_same_configuration() {
    let toml = load("advanced.toml");
    assert_eq!(toml, load("advanced.yaml"));
    assert_eq!(toml, load("advanced.json"));
    assert_eq!(
        toml.health_monitor.refresh_interval,
        Some(Duration::from_secs(3))
    );
    assert_eq!(toml.kafka["enable.idempotence"], "true");
    assert_eq!(toml.kafka["linger.ms"], "5");
}

#[test]
fn the_python_libraries_keys_are_understood() {
    let c = load("python-style.yaml");
    assert_eq!(c.bootstrap_servers.as_deref(), Some("localhost:9092"));
    assert_eq!(c.cache.capacity, Some(2000));
    assert_eq!(c.cache.ttl, Some(Duration::from_secs(600)));
    assert_eq!(
        c.health_monitor.refresh_interval,
        Some(Duration::from_secs(3))
    );
    c.builder().unwrap().validate().unwrap();
    let simple = load("simple.toml");
    assert_eq!(simple.topics, ["orders", "payments"]);
    assert!(matches!(
        load("advanced.toml").health_monitor.calculator,
        Some(CalculatorConfig::Threshold { .. })
    ));
}

#[test]
fn environment_variables_override_the_file() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config/simple.toml");
    let env = [
        ("KSP_CONSUMER_GROUP", "other-group"),
        ("KSP_KAFKA__SASL_PASSWORD", "hunter2"),
        ("KSP_HEALTH_MONITOR__REFRESH_INTERVAL", "750ms"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let c = SmartProducerConfig::load_with_env(&path, env).unwrap();
    assert_eq!(c.consumer_group(), Some("other-group"));
    assert_eq!(
        c.health_monitor.refresh_interval,
        Some(Duration::from_millis(750))
    );
    assert!(!format!("{c:?}").contains("hunter2"));
    let builder = c.builder().unwrap();
    assert!(!format!("{builder:?}").contains("hunter2"));
}

#[test]
fn bad_files_say_what_is_wrong() {
    let dir = std::env::temp_dir().join(format!("ksp-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        SmartProducerConfig::load_with_env(&path, std::iter::empty()).unwrap_err()
    };
    let e = write("a.toml", "topics = [\"t\"]\nconsumer_grup = \"g\"\n");
    assert!(e.to_string().contains("consumer_grup"), "{e}");
    let e = write("b.yaml", "health_monitor:\n  refresh_interval: soon\n");
    assert!(e.to_string().contains("soon"), "{e}");
    let e = write("c.ini", "x=1");
    assert!(matches!(e, ConfigFileError::UnknownFormat { .. }), "{e}");
    let e = write(
        "d.json",
        r#"{"health_monitor": {"calculator": {"kind": "median"}}}"#,
    );
    assert!(e.to_string().contains("median"), "{e}");
    let e = SmartProducerConfig::load_with_env(dir.join("missing.toml"), std::iter::empty())
        .unwrap_err();
    assert!(e.to_string().contains("missing.toml"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
