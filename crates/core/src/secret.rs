//! Keeping secrets out of `Debug` output and logs.

use std::collections::BTreeMap;

/// What a secret value is replaced with.
pub const REDACTED: &str = "<redacted>";

/// Whether a client setting holds a secret (a password, a private key, an OAuth secret).
///
/// Broader than rdkafka's own list, which does not cover private keys given inline
/// (`ssl.key.pem`) or `sasl.oauthbearer.config`, which commonly carries a client secret.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password")
        || key.contains("secret")
        || key.contains("token")
        || matches!(
            key.as_str(),
            "ssl.key.pem" | "ssl_key" | "sasl.oauthbearer.config" | "sasl.jaas.config"
        )
}

/// The entries of a configuration with every secret value replaced by [`REDACTED`], sorted by
/// key, for `Debug` output.
pub fn redact<'a>(
    entries: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> BTreeMap<&'a str, &'a str> {
    entries
        .into_iter()
        .map(|(k, v)| (k, if is_secret_key(k) { REDACTED } else { v }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_secret_settings() {
        for key in [
            "sasl.password",
            "ssl.key.password",
            "ssl.keystore.password",
            "ssl.truststore.password",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.config",
            "ssl.key.pem",
            "ssl_key",
            "SASL.PASSWORD",
        ] {
            assert!(is_secret_key(key), "{key}");
        }
        for key in [
            "bootstrap.servers",
            "sasl.username",
            "ssl.ca.location",
            "linger.ms",
        ] {
            assert!(!is_secret_key(key), "{key}");
        }
    }

    #[test]
    fn redact_replaces_only_secrets() {
        let r = redact([("sasl.username", "alice"), ("sasl.password", "hunter2")]);
        assert_eq!(r["sasl.username"], "alice");
        assert_eq!(r["sasl.password"], REDACTED);
        assert!(!format!("{r:?}").contains("hunter2"));
    }
}
