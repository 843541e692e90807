//! Extra librdkafka settings (`security.protocol`, `sasl.password`, ...), given to
//! every Kafka client the worker makes, after its own settings.

/// librdkafka settings as `(key, value)` pairs, applied in order (a later pair wins
/// over an earlier one of the same key). Its `Debug` masks the values of keys that
/// name a secret (`sasl.password`, `ssl.key.password`, `*.secret`, `ssl.key.pem`,
/// ...), so settings can be logged.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientOptions(pub Vec<(String, String)>);

impl ClientOptions {
    fn is_secret(key: &str) -> bool {
        let k = key.to_ascii_lowercase();
        ["password", "secret", "key", "token", "jaas"]
            .iter()
            .any(|w| k.contains(w))
    }

    /// One `KEY=VALUE` pair: the key trimmed and not empty, the value as written.
    pub fn parse_pair(s: &str) -> Result<(String, String), String> {
        match s.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
            _ => Err("expected key=value".to_owned()),
        }
    }
}

impl std::ops::Deref for ClientOptions {
    type Target = [(String, String)];

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let shown = if Self::is_secret(k) {
                    "***"
                } else {
                    v.as_str()
                };
                (k, shown)
            }))
            .finish()
    }
}
