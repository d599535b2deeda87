//! Producer authentication: the bearer tokens and API keys of the
//! manifest's `[credentials]`, compared in constant time.
//!
//! Each secret is stored as its SHA-256 digest, and a presented value is
//! hashed before the comparison, so the comparison takes the same time
//! whatever the length or content of either value. Every credential is
//! compared on every request, with no early exit.

use std::fmt;

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::manifest::Secret;

/// The header that carries a credential, and its format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// `Authorization: Bearer <token>` (RFC 6750).
    Bearer,
    /// The key alone as the value of this header, such as `X-Api-Key`.
    ApiKey(HeaderName),
}

/// A credential that producers can accept.
pub struct Credential {
    pub name: String,
    pub scheme: Scheme,
    /// SHA-256 digest of the secret.
    digest: [u8; 32],
}

impl Credential {
    pub fn new(name: &str, scheme: Scheme, secret: &Secret) -> Self {
        Credential {
            name: name.to_owned(),
            scheme,
            digest: sha256(secret.expose().as_bytes()),
        }
    }
}

// Leaves out the digest: a short token could be found from it by trying
// every candidate.
impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("name", &self.name)
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

/// Every credential of the manifests.
#[derive(Debug, Default)]
pub struct Credentials {
    credentials: Vec<Credential>,
}

/// The outcome of checking a request against the credentials a producer
/// accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The request presented a credential that the producer accepts.
    Accepted { credential: String },
    /// The request presented a valid credential that the producer does not
    /// accept: 403.
    NotAccepted { credential: String },
    /// The request presented a bearer token or API key that matches no
    /// credential: 401.
    Invalid { bearer_presented: bool },
    /// The request presented neither an `Authorization` header nor any
    /// credential's API key header: 401.
    Missing,
}

impl Credentials {
    pub fn new(credentials: Vec<Credential>) -> Self {
        Credentials { credentials }
    }

    /// Returns the credential named `name`.
    pub fn get(&self, name: &str) -> Option<&Credential> {
        self.credentials.iter().find(|c| c.name == name)
    }

    /// Checks the credentials a request presents against those named in
    /// `accepted`.
    pub fn check(&self, accepted: &[String], headers: &HeaderMap) -> Verdict {
        let authorization_present = headers.contains_key(header::AUTHORIZATION);
        let bearer = bearer_token(headers).map(|token| sha256(token.as_bytes()));
        let mut key_presented = false;
        let mut matched: Vec<&Credential> = Vec::new();
        for credential in &self.credentials {
            let mut equal = Choice::from(0);
            match &credential.scheme {
                Scheme::Bearer => {
                    if let Some(digest) = &bearer {
                        equal |= digest.as_slice().ct_eq(credential.digest.as_slice());
                    }
                }
                Scheme::ApiKey(name) => {
                    for value in headers.get_all(name) {
                        key_presented = true;
                        equal |= sha256(value.as_bytes())
                            .as_slice()
                            .ct_eq(credential.digest.as_slice());
                    }
                }
            }
            if bool::from(equal) {
                matched.push(credential);
            }
        }

        if let Some(credential) = matched.iter().find(|c| accepted.contains(&c.name)) {
            return Verdict::Accepted {
                credential: credential.name.clone(),
            };
        }
        if let Some(credential) = matched.first() {
            return Verdict::NotAccepted {
                credential: credential.name.clone(),
            };
        }
        if authorization_present || key_presented {
            return Verdict::Invalid {
                bearer_presented: bearer.is_some(),
            };
        }
        Verdict::Missing
    }

    /// Returns the `WWW-Authenticate` challenges for a producer that
    /// accepts `accepted`: one `Bearer` challenge when it accepts a token,
    /// and one `ApiKey` challenge per API key header.
    ///
    /// `ApiKey` is no registered HTTP authentication scheme. Its challenge
    /// names the header, so a client can tell where the key goes.
    pub fn challenges(
        &self,
        accepted: &[String],
        realm: &str,
        verdict: &Verdict,
    ) -> Vec<HeaderValue> {
        let realm = quoted(realm);
        let mut bearer = false;
        let mut key_headers: Vec<&HeaderName> = Vec::new();
        for credential in accepted.iter().filter_map(|name| self.get(name)) {
            match &credential.scheme {
                Scheme::Bearer => bearer = true,
                Scheme::ApiKey(name) if !key_headers.contains(&name) => key_headers.push(name),
                Scheme::ApiKey(_) => {}
            }
        }
        let mut challenges = Vec::new();
        if bearer {
            // RFC 6750, section 3.1: a token that was sent and is invalid
            // gets `error="invalid_token"`.
            let error = match verdict {
                Verdict::Invalid {
                    bearer_presented: true,
                } => ", error=\"invalid_token\"",
                _ => "",
            };
            challenges.push(format!("Bearer realm={realm}{error}"));
        }
        for name in key_headers {
            challenges.push(format!(
                "ApiKey realm={realm}, header={}",
                quoted(name.as_str())
            ));
        }
        challenges
            .into_iter()
            .filter_map(|text| HeaderValue::from_str(&text).ok())
            .collect()
    }
}

/// Returns the token of an `Authorization: Bearer <token>` header. The
/// scheme name is case-insensitive, as RFC 9110 defines for every scheme.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Returns `text` as an HTTP quoted-string.
fn quoted(text: &str) -> String {
    let escaped = text.replace('\\', "\\\\").replace('"', "\\\"");
    format!("\"{escaped}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials() -> Credentials {
        let secret = |value: &str| Secret::new(value.to_owned());
        Credentials::new(vec![
            Credential::new("orders-app", Scheme::Bearer, &secret("token-1")),
            Credential::new(
                "partner",
                Scheme::ApiKey(HeaderName::from_static("x-api-key")),
                &secret("key-2"),
            ),
        ])
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn accepted(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    #[test]
    fn bearer_token_accepted() {
        let verdict = credentials().check(
            &accepted(&["orders-app"]),
            &headers(&[("authorization", "Bearer token-1")]),
        );
        let expected = Verdict::Accepted {
            credential: "orders-app".into(),
        };
        assert_eq!(verdict, expected);
    }

    #[test]
    fn bearer_scheme_case_insensitive() {
        let verdict = credentials().check(
            &accepted(&["orders-app"]),
            &headers(&[("authorization", "bearer  token-1")]),
        );
        assert!(matches!(verdict, Verdict::Accepted { .. }), "{verdict:?}");
    }

    #[test]
    fn api_key_accepted() {
        let verdict =
            credentials().check(&accepted(&["partner"]), &headers(&[("x-api-key", "key-2")]));
        assert!(matches!(verdict, Verdict::Accepted { .. }), "{verdict:?}");
    }

    #[test]
    fn other_producers_credential_not_accepted() {
        let verdict = credentials().check(
            &accepted(&["orders-app"]),
            &headers(&[("x-api-key", "key-2")]),
        );
        let expected = Verdict::NotAccepted {
            credential: "partner".into(),
        };
        assert_eq!(verdict, expected);
    }

    #[test]
    fn wrong_values_invalid() {
        let cases = [
            (("authorization", "Bearer token-11"), true),
            (("authorization", "Bearer token-"), true),
            (("authorization", "Basic dG9rZW4tMQ=="), false),
            (("authorization", "token-1"), false),
            (("x-api-key", "token-1"), false),
        ];
        for ((name, value), bearer_presented) in cases {
            let verdict = credentials().check(
                &accepted(&["orders-app", "partner"]),
                &headers(&[(name, value)]),
            );
            assert_eq!(
                verdict,
                Verdict::Invalid { bearer_presented },
                "{name}: {value}"
            );
        }
    }

    #[test]
    fn no_credentials_missing() {
        let verdict = credentials().check(&accepted(&["orders-app"]), &HeaderMap::new());
        assert_eq!(verdict, Verdict::Missing);
    }

    #[test]
    fn bearer_token_in_key_header_rejected() {
        // A token is only valid where its scheme puts it.
        let verdict = credentials().check(
            &accepted(&["orders-app"]),
            &headers(&[("x-api-key", "token-1")]),
        );
        assert!(matches!(verdict, Verdict::Invalid { .. }), "{verdict:?}");
    }

    #[test]
    fn challenges_name_each_scheme() {
        let all = accepted(&["orders-app", "partner"]);
        let verdict = Verdict::Invalid {
            bearer_presented: true,
        };
        let challenges = credentials().challenges(&all, "shop", &verdict);
        assert_eq!(
            challenges,
            [
                "Bearer realm=\"shop\", error=\"invalid_token\"",
                "ApiKey realm=\"shop\", header=\"x-api-key\"",
            ]
        );
        let challenges = credentials().challenges(&all[..1], "shop", &Verdict::Missing);
        assert_eq!(challenges, ["Bearer realm=\"shop\""]);
    }

    #[test]
    fn debug_hides_digest() {
        let text = format!("{:?}", credentials());
        assert!(text.contains("orders-app"), "{text}");
        assert!(!text.contains("digest"), "{text}");
    }
}
