//! Broker TLS and SASL settings: the resolved files and credentials, and the
//! checks on them. A TLS file must exist and contain PEM data, an `amqp` broker
//! with `tls` needs an `amqps://` URL, and the `tls` and `sasl` tables of a
//! `kafka` broker must not be set again through `options`.

use std::fmt;
use std::path::{Path, PathBuf};

use super::{BrokerKind, Entry, Manifest, Problem, SaslMechanism};
use crate::manifest::BrokerDef;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The TLS files of a broker, with paths resolved against the folder of the
/// manifest that names them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file of CA certificates: on AMQP trusted besides the system's, on
    /// Kafka instead of them.
    pub ca: Option<PathBuf>,
    /// PEM file of the client certificate; set together with `key`.
    pub cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    pub key: Option<PathBuf>,
}

/// The SASL credentials of a Kafka broker. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct SaslCredentials {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: String,
}

impl fmt::Debug for SaslCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslCredentials")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// librdkafka properties that the `tls` and `sasl` tables set, and so must
/// not appear in `options` beside them.
pub const KAFKA_SECURITY_PROPERTIES: [&str; 7] = [
    "security.protocol",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "sasl.mechanism",
    "sasl.username",
    "sasl.password",
];

/// Reports every problem with the `tls` and `sasl` tables of the brokers.
pub(super) fn check(manifest: &Manifest, problems: &mut Vec<Problem>) {
    for (name, entry) in &manifest.brokers {
        let def = &entry.def;
        if let Some(sasl) = &def.sasl
            && def.kind == BrokerKind::Amqp
        {
            problems.push(
                Problem::error(
                    "unknown-key",
                    format!("`sasl` does not apply to broker `{name}` of kind `amqp`"),
                )
                .at(entry.file, sasl.username.span())
                .hint(
                    "an `amqp` broker takes its user and password in the URL, such as \
                     `url = \"amqps://app:${RABBITMQ_PASSWORD}@rabbit:5671/%2f\"`",
                ),
            );
        }
        let Some(tls) = &def.tls else {
            if def.kind == BrokerKind::Kafka {
                kafka_options(name, entry, problems);
            }
            continue;
        };
        let files = manifest.broker_tls.get(name).cloned().unwrap_or_default();
        client_pair(name, entry, tls, &files, problems);
        let checks = [
            (&tls.ca, &files.ca, PemKind::Ca),
            (&tls.cert, &files.cert, PemKind::Certificate),
            (&tls.key, &files.key, PemKind::Key),
        ];
        for (written, path, kind) in checks {
            if let (Some(written), Some(path)) = (written, path)
                && let Some(problem) = file_problem(name, path, kind)
            {
                problems.push(problem.at(entry.file, written.span()));
            }
        }
        match def.kind {
            BrokerKind::Amqp => amqps_url(manifest, name, entry, problems),
            BrokerKind::Kafka => kafka_options(name, entry, problems),
        }
    }
}

/// Reports a client certificate without its key, or a key without its
/// certificate.
fn client_pair(
    name: &str,
    entry: &Entry<BrokerDef>,
    tls: &super::TlsDef,
    files: &TlsFiles,
    problems: &mut Vec<Problem>,
) {
    let (given, missing, span) = match (&tls.cert, &tls.key) {
        (Some(cert), None) => ("cert", "key", cert.span()),
        (None, Some(key)) => ("key", "cert", key.span()),
        _ => return,
    };
    // A path that expanded to nothing was reported as an undefined variable.
    if files.cert.is_none() && files.key.is_none() {
        return;
    }
    problems.push(
        Problem::error(
            "missing-key",
            format!("broker `{name}` has `tls.{given}` but no `tls.{missing}`"),
        )
        .at(entry.file, span)
        .hint(
            "a client certificate needs both `cert` (the certificate) and `key` (its private key)",
        ),
    );
}

/// Reports `tls` on an `amqp` broker whose URL is not `amqps://`, which would
/// connect without encryption.
fn amqps_url(
    manifest: &Manifest,
    name: &str,
    entry: &Entry<BrokerDef>,
    problems: &mut Vec<Problem>,
) {
    let Some(url) = manifest.broker_urls.get(name) else {
        return;
    };
    // An undefined `${VAR}` leaves no scheme to check; it is reported already.
    let Some((scheme, _)) = url.split_once("://") else {
        return;
    };
    if scheme.eq_ignore_ascii_case("amqps") {
        return;
    }
    let problem = Problem::error(
        "tls-without-amqps",
        format!(
            "broker `{name}` has `tls` settings but its URL starts with `{scheme}://`, not \
             `amqps://`, so the connection would not be encrypted"
        ),
    )
    .hint("use an `amqps://` URL with the broker's TLS port (RabbitMQ's default is 5671)");
    let problem = match &entry.def.url {
        Some(written) => problem.at(entry.file, written.span()),
        None => problem.at_entry(entry),
    };
    problems.push(problem);
}

/// librdkafka properties that switchyard sets on its Kafka clients, over any
/// value in `options`, each with what decides the value instead.
const KAFKA_RUNTIME_PROPERTIES: [(&str, &str); 11] = [
    (
        "enable.idempotence",
        "the producer is always idempotent, so a retried send is not written twice",
    ),
    (
        "acks",
        "the producer always waits for every in-sync replica (`acks=all`)",
    ),
    (
        "message.timeout.ms",
        "the broker's `confirm_timeout` sets it, such as `confirm_timeout = \"30s\"`",
    ),
    (
        "group.id",
        "a consumer's `group` sets it, and defaults to the consumer's name",
    ),
    (
        "enable.auto.commit",
        "switchyard commits the offsets of handled records itself",
    ),
    (
        "auto.commit.interval.ms",
        "switchyard commits handled offsets every second and when it stops",
    ),
    (
        "enable.auto.offset.store",
        "switchyard stores a record's offset once the record is handled or dead-lettered",
    ),
    (
        "auto.offset.reset",
        "a new group always starts at the first record of each partition, so it misses no event",
    ),
    (
        "allow.auto.create.topics",
        "provisioning creates the manifest's topics, and the broker creates no others",
    ),
    (
        "max.poll.interval.ms",
        "switchyard derives it from each consumer's `limits.timeout` and `retry`",
    ),
    (
        "statistics.interval.ms",
        "consumers report statistics every 5 s for `switchyard_consumer_lag`",
    ),
];

/// Reports a librdkafka property in `options` that switchyard sets itself,
/// or that the `tls` or `sasl` table of the same broker sets too.
fn kafka_options(name: &str, entry: &Entry<BrokerDef>, problems: &mut Vec<Problem>) {
    let def = &entry.def;
    for (key, value) in &def.options {
        if let Some((_, decided_by)) = KAFKA_RUNTIME_PROPERTIES
            .iter()
            .find(|(property, _)| property == key)
        {
            problems.push(
                Problem::error(
                    "conflicting-option",
                    format!(
                        "option `{key}` of broker `{name}` would be ignored: switchyard sets \
                         it on its Kafka clients"
                    ),
                )
                .at(entry.file, value.span())
                .hint(format!("remove `{key}` from `options`; {decided_by}")),
            );
            continue;
        }
        if (def.tls.is_none() && def.sasl.is_none())
            || !KAFKA_SECURITY_PROPERTIES.contains(&key.as_str())
        {
            continue;
        }
        problems.push(
            Problem::error(
                "conflicting-option",
                format!(
                    "option `{key}` of broker `{name}` is also set by its `tls` or `sasl` table"
                ),
            )
            .at(entry.file, value.span())
            .hint(format!(
                "remove `{key}` from `options`; `tls` sets `security.protocol` and the `ssl.*` \
                 files, `sasl` sets `sasl.mechanism`, `sasl.username` and `sasl.password`"
            )),
        );
    }
    if let Some(sasl) = &def.sasl
        && sasl.mechanism == SaslMechanism::Plain
        && def.tls.is_none()
    {
        problems.push(
            Problem::warning(
                "sasl-without-tls",
                format!(
                    "broker `{name}` sends its SASL PLAIN password unencrypted, because it \
                     has no `tls` table"
                ),
            )
            .at(entry.file, sasl.password.span())
            .hint("add `tls = {}` (system CA certificates) or `tls = { ca = \"ca.pem\" }`"),
        );
    }
}

#[derive(Clone, Copy)]
enum PemKind {
    Ca,
    Certificate,
    Key,
}

impl PemKind {
    fn label(self) -> &'static str {
        match self {
            PemKind::Ca => "CA file",
            PemKind::Certificate => "client certificate file",
            PemKind::Key => "client key file",
        }
    }
}

/// Returns the problem with one TLS file, if any: missing, unreadable, or
/// without the PEM blocks it needs.
fn file_problem(broker: &str, path: &Path, kind: PemKind) -> Option<Problem> {
    let label = kind.label();
    let shown = path.display();
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Some(
                Problem::error(
                    "tls-file-not-found",
                    format!("TLS {label} `{shown}` of broker `{broker}` does not exist"),
                )
                .hint(
                    "check the path; a relative path resolves against the manifest's folder, \
                     not the working directory",
                ),
            );
        }
        Err(err) => {
            return Some(
                Problem::error(
                    "tls-file-unreadable",
                    format!("cannot read TLS {label} `{shown}` of broker `{broker}`: {err}"),
                )
                .hint("make the file readable by the user that runs switchyard"),
            );
        }
    };
    let (valid, expected, hint) = match kind {
        PemKind::Ca | PemKind::Certificate => (
            CertificateDer::pem_slice_iter(&bytes)
                .collect::<Result<Vec<_>, _>>()
                .is_ok_and(|certificates| !certificates.is_empty()),
            "a PEM certificate",
            "give a PEM file with `-----BEGIN CERTIFICATE-----` blocks; convert a DER file \
             with `openssl x509 -inform der -in FILE -out FILE.pem`",
        ),
        PemKind::Key => (
            PrivateKeyDer::from_pem_slice(&bytes).is_ok(),
            "an unencrypted PEM private key",
            "give a PEM key that starts with `-----BEGIN PRIVATE KEY-----`, `-----BEGIN RSA \
             PRIVATE KEY-----` or `-----BEGIN EC PRIVATE KEY-----`; decrypt an encrypted key \
             with `openssl pkey -in FILE -out FILE.key`",
        ),
    };
    if valid {
        return None;
    }
    Some(
        Problem::error(
            "tls-file-invalid",
            format!("TLS {label} `{shown}` of broker `{broker}` does not contain {expected}"),
        )
        .hint(hint),
    )
}

/// Resolves one expanded TLS path against the manifest's folder: `None`
/// when it is not set or expanded to nothing.
pub(super) fn resolve_path(expanded: Option<String>, folder: &Path) -> Option<PathBuf> {
    expanded
        .filter(|path| !path.is_empty())
        .map(|path| folder.join(path))
}
