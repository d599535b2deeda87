//! TLS and SASL of Kafka clients: the librdkafka properties that the
//! manifest's `tls` and `sasl` tables set, and the last error that
//! librdkafka reported, which explains a connection that fails.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::manifest::{SaslCredentials, TlsFiles};

/// Returns the librdkafka properties for the TLS files and SASL credentials:
/// `security.protocol` (`SSL`, `SASL_SSL` or `SASL_PLAINTEXT`), the
/// `ssl.*.location` files and the `sasl.*` credentials.
pub(super) fn properties(
    tls: Option<&TlsFiles>,
    sasl: Option<&SaslCredentials>,
) -> BTreeMap<String, String> {
    let mut properties = BTreeMap::new();
    let protocol = match (tls.is_some(), sasl.is_some()) {
        (true, true) => "SASL_SSL",
        (true, false) => "SSL",
        (false, true) => "SASL_PLAINTEXT",
        (false, false) => return properties,
    };
    properties.insert("security.protocol".to_owned(), protocol.to_owned());
    if let Some(tls) = tls {
        let files = [
            ("ssl.ca.location", &tls.ca),
            ("ssl.certificate.location", &tls.cert),
            ("ssl.key.location", &tls.key),
        ];
        for (key, path) in files {
            if let Some(path) = path {
                properties.insert(key.to_owned(), path.display().to_string());
            }
        }
    }
    if let Some(sasl) = sasl {
        properties.insert(
            "sasl.mechanism".to_owned(),
            sasl.mechanism.as_str().to_owned(),
        );
        properties.insert("sasl.username".to_owned(), sasl.username.clone());
        properties.insert("sasl.password".to_owned(), sasl.password.clone());
    }
    properties
}

/// Shortest time between two log lines of the same kind of client error.
/// During an outage librdkafka reports the same error many times a second.
const REPEAT_INTERVAL: Duration = Duration::from_secs(10);

/// A client context that logs the errors librdkafka reports and keeps the
/// last one, to explain a failed connection attempt.
pub(super) struct ErrorRecorder {
    broker: String,
    last: LastError,
    /// When each kind of error was last logged, and how many reports of it
    /// were left out since.
    logged: Mutex<BTreeMap<String, (Instant, u64)>>,
}

/// The last error that an `ErrorRecorder` recorded, readable after the
/// recorder moved into a client.
#[derive(Clone, Default)]
pub(super) struct LastError(Arc<Mutex<Option<String>>>);

impl LastError {
    /// Returns the last error that librdkafka reported, if any.
    pub fn get(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, text: String) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(text);
    }
}

impl ErrorRecorder {
    /// Returns the recorder and the handle that reads what it records.
    pub fn new(broker: &str) -> (Self, LastError) {
        let last = LastError::default();
        let recorder = ErrorRecorder {
            broker: broker.to_owned(),
            last: last.clone(),
            logged: Mutex::default(),
        };
        (recorder, last)
    }

    /// Returns whether a report of `kind` is logged now, and how many
    /// reports of it were left out before it.
    fn should_log(&self, kind: String) -> Option<u64> {
        let mut logged = self.logged.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match logged.get_mut(&kind) {
            Some((at, left_out)) if now.duration_since(*at) < REPEAT_INTERVAL => {
                *left_out += 1;
                None
            }
            Some((at, left_out)) => {
                let earlier = *left_out;
                *at = now;
                *left_out = 0;
                Some(earlier)
            }
            None => {
                logged.insert(kind, (now, 0));
                Some(0)
            }
        }
    }
}

impl ClientContext for ErrorRecorder {
    fn error(&self, error: KafkaError, reason: &str) {
        match self.should_log(error.to_string()) {
            Some(0) => tracing::warn!(broker = %self.broker, %error, reason, "Kafka client error"),
            Some(repeats) => tracing::warn!(broker = %self.broker, %error, reason, repeats,
                "Kafka client error, repeated since the last report"),
            None => {}
        }
        // "All brokers are down" follows the error that explains why, so
        // keeping it would hide the cause.
        if error != KafkaError::Global(RDKafkaErrorCode::AllBrokersDown) {
            self.last.set(format!("{error}: {reason}"));
        }
    }
}

/// Returns the fix for a librdkafka error text about TLS or SASL, if it is
/// one. librdkafka 2.12 words these errors as matched here.
pub(super) fn hint(broker: &str, error: &str) -> Option<String> {
    // The broker addresses in the text start with `sasl_ssl://` or
    // `ssl://`, which do not show the cause.
    let error = error
        .to_ascii_lowercase()
        .replace("sasl_ssl://", "")
        .replace("ssl://", "");
    if error.contains("connecting to a ssl listener") || error.contains("security.protocol") {
        return Some(format!(
            "the broker's listener may expect TLS: add a `tls` table to broker `{broker}`"
        ));
    }
    if error.contains("certificate verify failed") {
        return Some(format!(
            "the broker's certificate did not verify: set `tls.ca` of broker `{broker}` to the \
             PEM file of the CA that signed it, and check that the certificate names the host \
             of `bootstrap`"
        ));
    }
    if error.contains("mechanism handshake failed") {
        return Some(format!(
            "the broker did not accept the SASL mechanism: set `sasl.mechanism` of broker \
             `{broker}` to one that the broker supports"
        ));
    }
    if error.contains("sasl authentication") || error.contains("authentication failed") {
        return Some(format!(
            "the broker rejected the SASL credentials: check `sasl.mechanism`, `sasl.username` \
             and `sasl.password` of broker `{broker}`"
        ));
    }
    if error.contains("ssl") || error.contains("tls") {
        return Some(format!(
            "the TLS connection failed: check `tls` of broker `{broker}` and that `bootstrap` \
             names the broker's TLS listener"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first report of each kind is logged, and repeats within
    /// `REPEAT_INTERVAL` are counted instead.
    #[test]
    fn repeated_errors_logged_once() {
        let (recorder, _) = ErrorRecorder::new("stream");
        assert_eq!(recorder.should_log("down".to_owned()), Some(0));
        assert_eq!(recorder.should_log("down".to_owned()), None);
        assert_eq!(recorder.should_log("down".to_owned()), None);
        assert_eq!(recorder.should_log("refused".to_owned()), Some(0));

        // Once the interval has passed, the next report is logged with the
        // count of those left out.
        recorder.logged.lock().unwrap().get_mut("down").unwrap().0 -= REPEAT_INTERVAL;
        assert_eq!(recorder.should_log("down".to_owned()), Some(2));
        assert_eq!(recorder.should_log("down".to_owned()), None);
    }
}
