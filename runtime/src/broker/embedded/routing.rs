//! Exchanges and their bindings: which queues a message reaches, with the
//! direct, fanout, topic and headers matching of RabbitMQ 3.x
//! (`rabbit_db_topic_exchange.erl` and `rabbit_exchange_type_headers.erl` in
//! rabbitmq-server).

use super::state::QueueIndex;
use crate::broker::{HeaderValue, Headers, Message};
use crate::topology::{ExchangeKind, ExchangeSpec};

/// Splits a routing key into words as RabbitMQ does: the empty key has no
/// words, and otherwise every `.` separates two words, either of which may be
/// empty: `a..b` is `a`, `` and `b`, and `a.` is `a` and ``.
pub(super) fn split_words(key: &str) -> Vec<&str> {
    if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    }
}

/// One word of a topic binding key.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PatternWord {
    Literal(String),
    /// `*`: exactly one word, which may be empty.
    Star,
    /// `#`: zero or more words.
    Hash,
}

/// A topic binding key, split into words once when the binding is made.
///
/// `*` and `#` are wildcards only as whole words: `a*` and `#b` are literals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct TopicPattern {
    words: Vec<PatternWord>,
    has_hash: bool,
}

impl TopicPattern {
    pub(super) fn parse(binding_key: &str) -> Self {
        let words: Vec<PatternWord> = split_words(binding_key)
            .into_iter()
            .map(|word| match word {
                "*" => PatternWord::Star,
                "#" => PatternWord::Hash,
                literal => PatternWord::Literal(literal.to_owned()),
            })
            .collect();
        let has_hash = words.contains(&PatternWord::Hash);
        TopicPattern { words, has_hash }
    }

    /// Reports whether a routing key, already split by `split_words`, matches.
    pub(super) fn matches(&self, key: &[&str]) -> bool {
        if !self.has_hash {
            return self.words.len() == key.len()
                && self
                    .words
                    .iter()
                    .zip(key)
                    .all(|(pattern, word)| word_matches(pattern, word));
        }
        self.matches_with_hash(key)
    }

    /// Matches by dynamic programming over (pattern word, key word) positions,
    /// which stays O(pattern × key) however many `#` the pattern has, where
    /// backtracking would be exponential.
    fn matches_with_hash(&self, key: &[&str]) -> bool {
        let key_len = key.len();
        // `rest[j]` is whether the pattern words after the current one match
        // `key[j..]`. Before the first iteration, that is the empty pattern.
        let mut rest = vec![false; key_len + 1];
        rest[key_len] = true;
        let mut current = vec![false; key_len + 1];
        for pattern in self.words.iter().rev() {
            for j in (0..=key_len).rev() {
                current[j] = match pattern {
                    // Either `#` matches no more words, or it takes `key[j]`
                    // and may take more.
                    PatternWord::Hash => rest[j] || (j < key_len && current[j + 1]),
                    _ => j < key_len && word_matches(pattern, key[j]) && rest[j + 1],
                };
            }
            std::mem::swap(&mut rest, &mut current);
        }
        rest[0]
    }
}

fn word_matches(pattern: &PatternWord, word: &str) -> bool {
    match pattern {
        PatternWord::Literal(literal) => literal == word,
        PatternWord::Star | PatternWord::Hash => true,
    }
}

/// Reports whether a topic binding key matches a routing key, as RabbitMQ
/// does.
pub fn topic_matches(binding_key: &str, routing_key: &str) -> bool {
    TopicPattern::parse(binding_key).matches(&split_words(routing_key))
}

/// The `x-match` argument of a headers binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum XMatch {
    All,
    Any,
    /// Like `All`, but arguments starting with `x-` are conditions too.
    AllWithX,
    /// Like `Any`, but arguments starting with `x-` are conditions too.
    AnyWithX,
}

/// The conditions of a binding to a headers exchange.
///
/// A condition holds when the message has a header of that name with an equal
/// value of the same type. `x-match` defaults to `all`. With no condition,
/// `all` matches every message and `any` matches none, as in RabbitMQ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct HeadersPattern {
    x_match: XMatch,
    conditions: Vec<(String, HeaderValue)>,
}

impl HeadersPattern {
    /// Parses binding arguments. The error is the reason why the `x-match`
    /// value is invalid.
    pub(super) fn parse(arguments: &Headers) -> Result<Self, String> {
        let x_match = match arguments.get("x-match") {
            None => XMatch::All,
            Some(HeaderValue::String(value)) => match value.as_str() {
                "all" => XMatch::All,
                "any" => XMatch::Any,
                "all-with-x" => XMatch::AllWithX,
                "any-with-x" => XMatch::AnyWithX,
                other => {
                    return Err(format!(
                        "invalid `x-match` value `{other}`; expected `all`, `any`, \
                         `all-with-x` or `any-with-x`"
                    ));
                }
            },
            Some(other) => {
                return Err(format!(
                    "invalid `x-match` value `{}`: it must be a string",
                    other.to_text()
                ));
            }
        };
        let with_x = matches!(x_match, XMatch::AllWithX | XMatch::AnyWithX);
        let conditions = arguments
            .iter()
            .filter(|(name, _)| name.as_str() != "x-match")
            .filter(|(name, _)| with_x || !name.starts_with("x-"))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        Ok(HeadersPattern {
            x_match,
            conditions,
        })
    }

    pub(super) fn matches(&self, headers: &Headers) -> bool {
        let mut condition_results = self
            .conditions
            .iter()
            .map(|(name, value)| headers.get(name) == Some(value));
        match self.x_match {
            XMatch::All | XMatch::AllWithX => condition_results.all(|condition| condition),
            XMatch::Any | XMatch::AnyWithX => condition_results.any(|condition| condition),
        }
    }
}

/// An exchange with its bindings.
pub(super) struct Exchange {
    pub(super) spec: ExchangeSpec,
    bindings: Vec<Binding>,
}

struct Binding {
    queue: QueueIndex,
    routing_key: String,
    arguments: Headers,
    matcher: Matcher,
}

/// How a binding decides, fixed by the exchange type when the binding is made.
enum Matcher {
    Direct,
    Fanout,
    Topic(TopicPattern),
    Headers(HeadersPattern),
}

impl Exchange {
    pub(super) fn new(spec: ExchangeSpec) -> Self {
        Exchange {
            spec,
            bindings: Vec::new(),
        }
    }

    /// Adds a binding unless an equal one exists. The error is the reason why
    /// the arguments of a headers binding are invalid.
    pub(super) fn bind(
        &mut self,
        queue: QueueIndex,
        routing_key: &str,
        arguments: Headers,
    ) -> Result<(), String> {
        let is_bound = self.bindings.iter().any(|binding| {
            binding.queue == queue
                && binding.routing_key == routing_key
                && binding.arguments == arguments
        });
        if is_bound {
            return Ok(());
        }
        let matcher = match self.spec.kind {
            ExchangeKind::Direct => Matcher::Direct,
            ExchangeKind::Fanout => Matcher::Fanout,
            ExchangeKind::Topic => Matcher::Topic(TopicPattern::parse(routing_key)),
            ExchangeKind::Headers => Matcher::Headers(HeadersPattern::parse(&arguments)?),
        };
        self.bindings.push(Binding {
            queue,
            routing_key: routing_key.to_owned(),
            arguments,
            matcher,
        });
        Ok(())
    }

    /// Appends the queues of every binding that matches the message.
    pub(super) fn collect_matches(
        &self,
        message: &Message,
        key_words: &[&str],
        targets: &mut Vec<QueueIndex>,
    ) {
        for binding in &self.bindings {
            let is_match = match &binding.matcher {
                Matcher::Direct => binding.routing_key == message.routing_key,
                Matcher::Fanout => true,
                Matcher::Topic(pattern) => pattern.matches(key_words),
                Matcher::Headers(pattern) => pattern.matches(&message.headers),
            };
            if is_match {
                targets.push(binding.queue);
            }
        }
    }
}

/// (binding key, routing key, whether RabbitMQ routes the message). The
/// same cases run against a real RabbitMQ in `rabbitmq_comparison`.
#[cfg(test)]
pub(super) const TOPIC_CASES: &[(&str, &str, bool)] = &[
    // Literal words.
    ("a.b.c", "a.b.c", true),
    ("a.b.c", "a.b", false),
    ("a.b", "a.b.c", false),
    ("a.b.c", "a.B.c", false),
    // `*` is exactly one word.
    ("a.*", "a.b", true),
    ("a.*", "a", false),
    ("a.*", "a.b.c", false),
    ("*.b", "a.b", true),
    ("*", "a", true),
    ("*", "a.b", false),
    ("*", "", false),
    ("*.*", "a.b", true),
    // `#` is zero or more words.
    ("a.#", "a", true),
    ("a.#", "a.b", true),
    ("a.#", "a.b.c", true),
    ("a.#", "b.a", false),
    ("#.c", "c", true),
    ("#.c", "a.b.c", true),
    ("#.c", "a.b.c.d", false),
    ("a.#.c", "a.c", true),
    ("a.#.c", "a.b.b.c", true),
    ("a.#.c", "a.b.b.d", false),
    ("#", "a.b.c", true),
    ("#", "a", true),
    ("#", "", true),
    ("#.#", "", true),
    ("#.#", "a.b", true),
    ("#.*", "", false),
    ("#.*", "a", true),
    ("*.#", "a.b.c", true),
    ("a.*.#", "a", false),
    ("a.*.#", "a.b", true),
    ("#.b.#", "a.b.c", true),
    ("#.b.#", "b", true),
    ("#.b.#", "a.c", false),
    // The empty key has no words, and the empty binding key matches only it.
    ("", "", true),
    ("", "a", false),
    ("a", "", false),
    // Empty words are words.
    ("a..b", "a..b", true),
    ("a.*.b", "a..b", true),
    ("a.b", "a..b", false),
    ("a.#.b", "a..b", true),
    ("*", ".", false),
    ("*.*", ".", true),
    (".", ".", true),
    ("#", ".", true),
    (".a", ".a", true),
    ("*.a", ".a", true),
    ("a", ".a", false),
    ("a.", "a.", true),
    ("a.*", "a.", true),
    ("a", "a.", false),
    ("a.#", "a.", true),
    // Wildcards only as whole words.
    ("a*", "ab", false),
    ("a*", "a*", true),
    ("#b", "ab", false),
    ("a.#b", "a.#b", true),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_table() {
        for &(binding_key, routing_key, expected) in TOPIC_CASES {
            assert_eq!(
                topic_matches(binding_key, routing_key),
                expected,
                "binding key `{binding_key}` with routing key `{routing_key}`"
            );
        }
    }

    #[test]
    fn topic_many_hashes_stay_fast() {
        let binding_key = ["#"; 40].join(".") + ".z";
        let routing_key = ["a"; 60].join(".");
        assert!(!topic_matches(&binding_key, &routing_key));
        assert!(topic_matches(&binding_key, &(routing_key.clone() + ".z")));
    }

    #[test]
    fn split_words_keeps_empty_words() {
        assert_eq!(split_words(""), Vec::<&str>::new());
        assert_eq!(split_words("."), vec!["", ""]);
        assert_eq!(split_words("a..b"), vec!["a", "", "b"]);
        assert_eq!(split_words(".a"), vec!["", "a"]);
    }

    fn headers(pairs: &[(&str, HeaderValue)]) -> Headers {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.clone()))
            .collect()
    }

    fn string(value: &str) -> HeaderValue {
        HeaderValue::from(value)
    }

    #[test]
    fn headers_all_needs_every_condition() {
        let pattern = HeadersPattern::parse(&headers(&[
            ("x-match", string("all")),
            ("format", string("pdf")),
            ("type", string("report")),
        ]))
        .unwrap();
        let both = headers(&[("format", string("pdf")), ("type", string("report"))]);
        let format_only = headers(&[("format", string("pdf"))]);
        let wrong = headers(&[("format", string("pdf")), ("type", string("log"))]);
        assert!(pattern.matches(&both));
        assert!(!pattern.matches(&format_only));
        assert!(!pattern.matches(&wrong));
    }

    #[test]
    fn headers_any_needs_one_condition() {
        let pattern = HeadersPattern::parse(&headers(&[
            ("x-match", string("any")),
            ("format", string("pdf")),
            ("type", string("report")),
        ]))
        .unwrap();
        assert!(pattern.matches(&headers(&[("type", string("report"))])));
        assert!(!pattern.matches(&headers(&[("type", string("log"))])));
        assert!(!pattern.matches(&Headers::new()));
    }

    #[test]
    fn headers_without_conditions() {
        let all = HeadersPattern::parse(&Headers::new()).unwrap();
        let any = HeadersPattern::parse(&headers(&[("x-match", string("any"))])).unwrap();
        let message = headers(&[("format", string("pdf"))]);
        assert!(all.matches(&message));
        assert!(!any.matches(&message));
    }

    #[test]
    fn headers_x_arguments_need_with_x() {
        let arguments = |x_match: &str| {
            headers(&[
                ("x-match", string(x_match)),
                ("x-tenant", string("a")),
                ("format", string("pdf")),
            ])
        };
        let message = headers(&[("format", string("pdf")), ("x-tenant", string("b"))]);
        assert!(
            HeadersPattern::parse(&arguments("all"))
                .unwrap()
                .matches(&message)
        );
        assert!(
            !HeadersPattern::parse(&arguments("all-with-x"))
                .unwrap()
                .matches(&message)
        );
        assert!(
            HeadersPattern::parse(&arguments("any-with-x"))
                .unwrap()
                .matches(&message)
        );
    }

    #[test]
    fn headers_values_compare_with_type() {
        let pattern = HeadersPattern::parse(&headers(&[("count", HeaderValue::Int(1))])).unwrap();
        assert!(pattern.matches(&headers(&[("count", HeaderValue::Int(1))])));
        assert!(!pattern.matches(&headers(&[("count", string("1"))])));
    }

    #[test]
    fn headers_invalid_x_match() {
        let error = HeadersPattern::parse(&headers(&[("x-match", string("some"))])).unwrap_err();
        assert!(error.contains("`some`"), "{error}");
        let error =
            HeadersPattern::parse(&headers(&[("x-match", HeaderValue::Int(1))])).unwrap_err();
        assert!(error.contains("must be a string"), "{error}");
    }
}
