//! Durations in configuration files: `"250ms"`, `"5s"`, `"1m 30s"`, or a number of seconds.
//!
//! Use with `#[serde(with = "ksp_core::serde_duration")]`. Durations are written back in the
//! human form (`"250ms"`).

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Writes `d` as `"250ms"`, `"5s"`, `"1m 30s"`.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

/// Reads a duration from a string with units or from a number of seconds.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Seconds(f64),
        Text(String),
    }
    match Form::deserialize(d)? {
        Form::Seconds(secs) => Duration::try_from_secs_f64(secs).map_err(|e| {
            serde::de::Error::custom(format_args!("{secs} is not a duration in seconds: {e}"))
        }),
        Form::Text(text) => humantime::parse_duration(text.trim()).map_err(|e| {
            serde::de::Error::custom(format_args!(
                "{text:?} is not a duration such as \"250ms\", \"5s\" or \"1m\": {e}"
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq)]
    struct Holder(#[serde(with = "super")] Duration);

    #[test]
    fn reads_units_and_seconds_and_writes_units() {
        let read = |s: &str| serde_json::from_str::<Holder>(s).map(|h| h.0);
        assert_eq!(read("\"250ms\"").unwrap(), Duration::from_millis(250));
        assert_eq!(read("\"1m 30s\"").unwrap(), Duration::from_secs(90));
        assert_eq!(read("1.5").unwrap(), Duration::from_millis(1500));
        assert!(read("-1").is_err());
        assert!(read("\"soon\"").unwrap_err().to_string().contains("soon"));
        let text = serde_json::to_string(&Holder(Duration::from_millis(250))).unwrap();
        assert_eq!(text, "\"250ms\"");
    }
}
