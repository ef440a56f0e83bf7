//! Serde helper for text settings: a string, or a bare number or boolean taken as the text it
//! was written as (`consumer_group = 42` in a file, `KSP_CONSUMER_GROUP=42` in the
//! environment), never converted through a float on the way.

use serde::{Deserialize, Deserializer};

#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Unsigned(u64),
    Signed(i64),
    Bool(bool),
}

impl From<Scalar> for String {
    fn from(text: Scalar) -> Self {
        match text {
            Scalar::Text(s) => s,
            Scalar::Unsigned(n) => n.to_string(),
            Scalar::Signed(n) => n.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

/// Deserializes a text setting.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Scalar::deserialize(deserializer).map(String::from)
}

/// Deserializes an optional text setting.
pub fn deserialize_option<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    Option::<Scalar>::deserialize(deserializer).map(|t| t.map(String::from))
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize)]
    struct Setting {
        #[serde(deserialize_with = "super::deserialize")]
        value: String,
    }

    #[test]
    fn strings_and_bare_scalars_are_text() {
        let read = |json: &str| serde_json::from_str::<Setting>(json).map(|s| s.value);
        assert_eq!(read(r#"{"value":"1e5"}"#).unwrap(), "1e5");
        assert_eq!(read(r#"{"value":42}"#).unwrap(), "42");
        assert_eq!(read(r#"{"value":-7}"#).unwrap(), "-7");
        assert_eq!(read(r#"{"value":true}"#).unwrap(), "true");
        // A float has no single written form: refused rather than rewritten.
        assert!(read(r#"{"value":1.5}"#).is_err());
    }
}
