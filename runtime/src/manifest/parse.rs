//! Parsing one manifest file table by table, so that every fault in it is
//! reported in one run instead of only the first one serde meets.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::{ManifestFile, Problem, closest};

const SECTIONS: [&str; 9] = [
    "runtime",
    "brokers",
    "exchanges",
    "queues",
    "topics",
    "events",
    "producers",
    "consumers",
    "credentials",
];

/// The result of parsing one file.
pub(super) struct Parsed {
    pub manifest: ManifestFile,
    pub problems: Vec<Problem>,
    /// Entries that exist but did not parse, as `(kind, name)` with kinds
    /// such as `broker`, so references to them are not reported again. An
    /// unknown table is recorded as `("table", name)`.
    pub broken: Vec<(&'static str, String)>,
    /// Positions in each entry, by `(kind, name)`.
    pub names: BTreeMap<(&'static str, String), EntrySpans>,
}

/// Byte ranges in one entry: its name, such as `work` in `[queues.work]`,
/// and the value of each key by dotted path, such as `limits.timeout`.
#[derive(Clone, Debug, Default)]
pub(super) struct EntrySpans {
    pub name: Range<usize>,
    pub keys: BTreeMap<String, Range<usize>>,
}

/// Parses a manifest, returning what parsed and a problem for each table
/// entry that did not.
pub(super) fn parse(file: usize, text: &str) -> Parsed {
    let (root, syntax_errors) = DeTable::parse_recoverable(text);
    let mut problems: Vec<Problem> = syntax_errors.iter().map(|e| problem(file, e)).collect();
    let mut manifest = ManifestFile::default();
    let mut broken = Vec::new();
    let mut names = BTreeMap::new();

    for (key, value) in root.into_inner() {
        let span = key.span();
        let key = key.into_inner();
        match key.as_ref() {
            "runtime" => {
                if let Some(runtime) = one(file, value, &mut problems) {
                    manifest.runtime = runtime;
                }
            }
            "brokers" => {
                manifest.brokers = entries(
                    file,
                    "broker",
                    value,
                    &mut problems,
                    &mut broken,
                    &mut names,
                )
            }
            "exchanges" => {
                manifest.exchanges = entries(
                    file,
                    "exchange",
                    value,
                    &mut problems,
                    &mut broken,
                    &mut names,
                )
            }
            "queues" => {
                manifest.queues =
                    entries(file, "queue", value, &mut problems, &mut broken, &mut names)
            }
            "topics" => {
                manifest.topics =
                    entries(file, "topic", value, &mut problems, &mut broken, &mut names)
            }
            "events" => {
                manifest.events =
                    entries(file, "event", value, &mut problems, &mut broken, &mut names)
            }
            "producers" => {
                manifest.producers = entries(
                    file,
                    "producer",
                    value,
                    &mut problems,
                    &mut broken,
                    &mut names,
                )
            }
            "consumers" => {
                manifest.consumers = entries(
                    file,
                    "consumer",
                    value,
                    &mut problems,
                    &mut broken,
                    &mut names,
                )
            }
            "credentials" => {
                manifest.credentials = entries(
                    file,
                    "credential",
                    value,
                    &mut problems,
                    &mut broken,
                    &mut names,
                )
            }
            other => {
                let known: Vec<String> = SECTIONS.iter().map(|s| (*s).to_owned()).collect();
                let hint = match closest(other, &known) {
                    // `[[case]]` tables belong in case files, which `test`
                    // recognises by their `.test.toml` suffix.
                    _ if other == "case" => "this looks like a case file of `switchyard test`; \
                                             name it `<name>.test.toml`"
                        .to_owned(),
                    Some(candidate) => format!("did you mean `[{candidate}]`?"),
                    None => format!("the tables of a manifest are {}", SECTIONS.join(", ")),
                };
                problems.push(
                    Problem::error("unknown-key", format!("unknown table `{other}`"))
                        .at(file, span)
                        .hint(hint),
                );
                broken.push(("table", other.to_owned()));
            }
        }
    }
    for problem in &mut problems {
        name_duplicate_key(problem, text);
    }
    // The parsed table is not in document order; report top to bottom.
    problems.sort_by_key(|problem| problem.span.as_ref().map(|span| span.start));
    Parsed {
        manifest,
        problems,
        broken,
        names,
    }
}

/// Deserialises one value, recording its problem on failure.
fn one<T: DeserializeOwned>(
    file: usize,
    value: Spanned<DeValue<'_>>,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    match T::deserialize(ValueDeserializer::from(value)) {
        Ok(parsed) => Some(parsed),
        Err(err) => {
            problems.push(problem(file, &err));
            None
        }
    }
}

/// Deserialises each entry of a table such as `[consumers]` on its own, so
/// one broken entry does not hide the problems of the others.
fn entries<T: DeserializeOwned>(
    file: usize,
    kind: &'static str,
    value: Spanned<DeValue<'_>>,
    problems: &mut Vec<Problem>,
    broken: &mut Vec<(&'static str, String)>,
    names: &mut BTreeMap<(&'static str, String), EntrySpans>,
) -> BTreeMap<String, T> {
    let span = value.span();
    let DeValue::Table(table) = value.into_inner() else {
        problems.push(
            Problem::error("invalid-value", "expected a table of named entries")
                .at(file, span)
                .hint("write each entry as `[section.name]`"),
        );
        return BTreeMap::new();
    };
    let mut parsed = BTreeMap::new();
    for (name, entry) in table {
        let mut spans = EntrySpans {
            name: name.span(),
            keys: BTreeMap::new(),
        };
        value_spans(&entry, "", &mut spans.keys);
        let name = name.into_inner().into_owned();
        names.insert((kind, name.clone()), spans);
        match one(file, entry, problems) {
            Some(def) => {
                parsed.insert(name, def);
            }
            None => broken.push((kind, name)),
        }
    }
    parsed
}

/// Records the byte range of the value of every key under `value`, by
/// dotted path from `prefix`.
fn value_spans(
    value: &Spanned<DeValue<'_>>,
    prefix: &str,
    out: &mut BTreeMap<String, Range<usize>>,
) {
    let DeValue::Table(table) = value.get_ref() else {
        return;
    };
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        out.insert(path.clone(), value.span());
        value_spans(value, &path, out);
    }
}

/// Turns a TOML or serde error into a problem with a code and a hint.
pub(super) fn problem(file: usize, err: &toml::de::Error) -> Problem {
    let message = err.message().trim().to_owned();
    let (code, hint) = if message.starts_with("unknown field") {
        let hint = match closest_field(&message) {
            Some(field) => format!("did you mean `{field}`?"),
            None => "remove the key or correct its spelling; `switchyard schema` prints every \
                     valid key"
                .to_owned(),
        };
        ("unknown-key", hint)
    } else if message.starts_with("duplicate key") {
        (
            "duplicate-key",
            "keep one of the two definitions".to_owned(),
        )
    } else if message.starts_with("invalid type")
        || message.starts_with("invalid value")
        || message.starts_with("unknown variant")
    {
        (
            "invalid-value",
            "see `switchyard schema` for the expected type".to_owned(),
        )
    } else if message.starts_with("missing field") {
        (
            "missing-key",
            "add the key; `switchyard schema` describes it".to_owned(),
        )
    } else if message.starts_with("invalid duration") || message.starts_with("invalid size") {
        ("invalid-value", "write a number and a unit".to_owned())
    } else {
        (
            "invalid-toml",
            "fix the TOML syntax at this position".to_owned(),
        )
    };
    let problem = Problem::error(code, message).hint(hint);
    match err.span() {
        Some(span) => problem.at(file, span),
        None => problem.in_file(file),
    }
}

/// Returns the valid field closest to the unknown one in serde's message
/// "unknown field `X`, expected one of `A`, `B`" (or "expected `A`").
fn closest_field(message: &str) -> Option<String> {
    let mut quoted = message.split('`').skip(1).step_by(2);
    let unknown = quoted.next()?;
    let expected: Vec<String> = quoted.map(str::to_owned).collect();
    closest(unknown, &expected)
}

/// Adds the key's name to toml's bare "duplicate key" message.
fn name_duplicate_key(problem: &mut Problem, text: &str) {
    if problem.code != "duplicate-key" || problem.message != "duplicate key" {
        return;
    }
    let Some(key) = problem.span.clone().and_then(|span| text.get(span)) else {
        return;
    };
    problem.message = format!("duplicate key `{}`", key.trim());
}

#[cfg(test)]
mod tests {
    use super::closest_field;

    #[test]
    fn closest_field_from_serde_message() {
        let message = "unknown field `id_feild`, expected one of `http`, `event`, `id_field`";
        assert_eq!(closest_field(message).as_deref(), Some("id_field"));
        let single = "unknown field `quue`, expected `queue`";
        assert_eq!(closest_field(single).as_deref(), Some("queue"));
        let far = "unknown field `zzz`, expected one of `http`, `event`";
        assert_eq!(closest_field(far), None);
    }
}
