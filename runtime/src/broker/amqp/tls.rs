//! TLS for `amqps://` connections: the lapin TLS configuration built from the
//! manifest's PEM files, and readable explanations of handshake failures.
//!
//! lapin (through amq-protocol-tcp, tcp-stream and rustls-connector) does the
//! handshake with rustls and the platform verifier, which trusts the system's
//! CA certificates and the extra ones given here.

use std::error::Error as StdError;
use std::io;

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::uri::{AMQPScheme, AMQPUri};
use rustls::{AlertDescription, CertificateError};

use crate::broker::BrokerError;
use crate::manifest::TlsFiles;

/// Context of one broker connection, for error messages.
pub(super) struct Target<'a> {
    pub broker: &'a str,
    pub redacted_url: &'a str,
    /// The manifest's `tls` files; `None` when the broker has no `tls` table.
    pub files: Option<&'a TlsFiles>,
}

impl Target<'_> {
    fn error(&self, reason: String) -> BrokerError {
        BrokerError::Tls {
            broker: self.broker.to_owned(),
            url: self.redacted_url.to_owned(),
            reason,
        }
    }
}

/// Rejects TLS settings on a URL that is not `amqps://`, so that a broker
/// meant to be reached over TLS is never reached in plain text.
pub(super) fn require_amqps(target: &Target<'_>, uri: &AMQPUri) -> Result<(), BrokerError> {
    if target.files.is_some() && uri.scheme != AMQPScheme::AMQPS {
        return Err(target.error(
            "the broker has `tls` settings but the URL starts with `amqp://`, which connects \
             without encryption; use an `amqps://` URL and the broker's TLS port (RabbitMQ's \
             default is 5671)"
                .to_owned(),
        ));
    }
    Ok(())
}

/// Reads the PEM files into lapin's TLS configuration. The files are read
/// on every connection attempt, so renewed certificates are picked up on
/// the next reconnect.
pub(super) fn config(target: &Target<'_>) -> Result<OwnedTLSConfig, BrokerError> {
    let Some(files) = target.files else {
        return Ok(OwnedTLSConfig::default());
    };
    let read = |label: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|err| {
            target.error(format!(
                "cannot read the TLS {label} `{}`: {err}; check `tls` in the manifest",
                path.display()
            ))
        })
    };
    let cert_chain = match &files.ca {
        Some(path) => {
            let pem = read("CA file", path)?;
            let text = String::from_utf8(pem).map_err(|_| {
                target.error(format!(
                    "the TLS CA file `{}` is not a PEM text file; convert a DER file with \
                     `openssl x509 -inform der -in FILE -out FILE.pem`",
                    path.display()
                ))
            })?;
            Some(text)
        }
        None => None,
    };
    let identity = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
            pem: read("client certificate file", cert)?,
            key: read("client key file", key)?,
        }),
        _ => None,
    };
    Ok(OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

/// Explains a failed `amqps://` connection attempt whose cause is in the
/// TLS layer, with the fix; `None` for other failures.
pub(super) fn explain_failure(target: &Target<'_>, error: &lapin::Error) -> Option<BrokerError> {
    let tls_error = find_rustls_error(error)?;
    Some(target.error(explain_rustls_error(target, tls_error)))
}

/// Returns the rustls error inside a lapin error, following `io::Error`
/// wrappers and `source()` links.
fn find_rustls_error(error: &lapin::Error) -> Option<&rustls::Error> {
    let mut current: Option<&(dyn StdError + 'static)> = error.source();
    while let Some(error) = current {
        if let Some(tls_error) = error.downcast_ref::<rustls::Error>() {
            return Some(tls_error);
        }
        // `io::Error::source` skips the wrapped error itself, so unwrap it.
        current = match error.downcast_ref::<io::Error>() {
            Some(io_error) => io_error
                .get_ref()
                .map(|inner| inner as &(dyn StdError + 'static)),
            None => error.source(),
        };
    }
    None
}

fn explain_rustls_error(target: &Target<'_>, error: &rustls::Error) -> String {
    let broker = target.broker;
    let ca_fix = format!(
        "set `tls.ca` of broker `{broker}` to the PEM file of the CA that signed the broker's \
         certificate"
    );
    match error {
        rustls::Error::InvalidCertificate(certificate) => match certificate {
            CertificateError::UnknownIssuer => format!(
                "the broker's certificate is not signed by a trusted CA ({error}); {ca_fix}"
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                    "the broker's certificate does not name the host of the URL ({error}); \
                     connect with a host name that the certificate lists, or give the broker a \
                     certificate for this host"
                )
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => format!(
                "the broker's certificate is outside its validity period ({error}); renew it \
                 or check this machine's clock"
            ),
            _ => format!("the broker's certificate was rejected ({error}); {ca_fix}"),
        },
        rustls::Error::AlertReceived(alert) => match alert {
            AlertDescription::CertificateRequired => client_certificate_missing(target, error),
            AlertDescription::HandshakeFailure
                if target.files.is_none_or(|files| files.cert.is_none()) =>
            {
                client_certificate_missing(target, error)
            }
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::DecryptError
            | AlertDescription::AccessDenied => format!(
                "the broker rejected the client certificate ({error}); give `tls.cert` and \
                 `tls.key` of a certificate signed by a CA that the broker trusts"
            ),
            _ => format!("the broker ended the TLS handshake ({error})"),
        },
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => format!(
            "the broker did not answer with TLS ({error}), so its port probably serves plain \
             AMQP; use the broker's TLS port (RabbitMQ's default is 5671), or an `amqp://` URL \
             to connect without encryption"
        ),
        _ => format!("the TLS handshake failed ({error})"),
    }
}

fn client_certificate_missing(target: &Target<'_>, error: &rustls::Error) -> String {
    format!(
        "the broker requires a client certificate ({error}); set `tls.cert` and `tls.key` of \
         broker `{}` to a certificate signed by a CA that the broker trusts and its key",
        target.broker
    )
}

/// Returns a hint for a failed plain-text (`amqp://`) connection attempt
/// that the server closed, or replied to with something other than AMQP, as a
/// TLS port does. Returns `None` for a refused connection, a DNS failure or
/// an error that the broker sent.
pub(super) fn plain_text_hint(error: &lapin::Error) -> Option<&'static str> {
    let suspicious = match error.kind() {
        lapin::ErrorKind::IOError(io_error) => matches!(
            io_error.kind(),
            io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::InvalidData
        ),
        lapin::ErrorKind::ProtocolError(_) => false,
        _ => true,
    };
    suspicious.then_some(
        "the broker closed the connection or did not answer with AMQP; if this port serves \
         TLS, use an `amqps://` URL",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_need_amqps() {
        let files = TlsFiles {
            ca: Some("/certs/ca.pem".into()),
            ..TlsFiles::default()
        };
        let target = Target {
            broker: "rabbit",
            redacted_url: "amqp://guest:***@127.0.0.1:5672/%2f",
            files: Some(&files),
        };
        let plain = super::super::url::parse_url("rabbit", "amqp://127.0.0.1:5672/%2f").unwrap();
        let error = require_amqps(&target, &plain).expect_err("amqp:// with a CA file");
        let message = error.to_string();
        assert!(message.contains("`amqps://`"), "{message}");
        assert!(message.contains("broker `rabbit`"), "{message}");
        let tls = super::super::url::parse_url("rabbit", "amqps://127.0.0.1:5671/%2f").unwrap();
        assert!(require_amqps(&target, &tls).is_ok());
    }
}
