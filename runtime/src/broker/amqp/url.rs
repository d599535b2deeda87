//! AMQP URLs: parsing for lapin, and the redacted form that logs and errors show.

use std::str::FromStr;

use lapin::uri::AMQPUri;

use crate::broker::BrokerError;

/// Returns `url` with the password in its userinfo replaced by `***`, for logs,
/// errors and `Debug` output: `amqp://guest:***@host:5672/%2f`.
///
/// Everything between the first `:` after `scheme://` and the last `@` counts as
/// the password, so a password with an unencoded `/`, `:` or `@` stays hidden.
/// A URL whose vhost or query contains `@` and that has no userinfo may come out
/// garbled, but never with more text than the original.
pub fn redact_url(url: &str) -> String {
    let authority_start = url.find("://").map_or(0, |index| index + 3);
    let rest = &url[authority_start..];
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let Some(colon) = userinfo.find(':') else {
        return url.to_owned();
    };
    format!(
        "{}{}:***{}",
        &url[..authority_start],
        &userinfo[..colon],
        &rest[at..]
    )
}

/// Parses an AMQP URL for lapin. The error never contains the password: the
/// URL parser quotes its input in some messages, so the input is replaced by
/// its redacted form.
pub fn parse_url(broker: &str, url: &str) -> Result<AMQPUri, BrokerError> {
    AMQPUri::from_str(url).map_err(|reason| BrokerError::InvalidUrl {
        broker: broker.to_owned(),
        url: redact_url(url),
        reason: reason.replace(url, &redact_url(url)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_hides_password() {
        let cases = [
            (
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                "amqp://guest:***@127.0.0.1:5672/%2f",
            ),
            ("amqps://user:s3cr%40t@host/vh", "amqps://user:***@host/vh"),
            (
                "amqp://user:p/a:s@s@host:5672/",
                "amqp://user:***@host:5672/",
            ),
            ("amqp://user:@host", "amqp://user:***@host"),
            ("user:pw@host:5672", "user:***@host:5672"),
        ];
        for (url, expected) in cases {
            assert_eq!(redact_url(url), expected, "redacting {url:?}");
        }
    }

    #[test]
    fn redact_url_keeps_url_without_password() {
        let cases = [
            "amqp://127.0.0.1:5672/%2f",
            "amqp://guest@127.0.0.1:5672/%2f",
            "amqp://host/vhost",
            "",
        ];
        for url in cases {
            assert_eq!(redact_url(url), url, "redacting {url:?}");
        }
    }

    #[test]
    fn parse_url_error_hides_password() {
        // The URL parser quotes the whole input when the URL has no `//`.
        let url = "amqp:user:hunter2@host";
        let error = parse_url("rabbit", url).expect_err("a URL without `//` is invalid");
        let message = error.to_string();
        assert!(!message.contains("hunter2"), "password leaked: {message}");
        assert!(message.contains("rabbit"), "broker name missing: {message}");
    }

    #[test]
    fn parse_url_rejects_wrong_scheme() {
        let error = parse_url("rabbit", "http://user:hunter2@host/").expect_err("http is no AMQP");
        let message = error.to_string();
        assert!(!message.contains("hunter2"), "password leaked: {message}");
        assert!(message.contains("http"), "scheme missing: {message}");
    }
}
