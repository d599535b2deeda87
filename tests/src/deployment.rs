//! Readers for the deployment files at the repository root: the Dockerfile,
//! `.dockerignore`, `.env.example` and the Compose file with its variable
//! interpolation. Each covers the syntax those files use, not every form
//! that Docker accepts, and returns an error on a form it does not read.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail, ensure};
use serde_json::Value;

/// One instruction of a Dockerfile, with its continuation lines joined.
#[derive(Clone, Debug)]
pub struct Instruction {
    /// Index of the build stage, counting `FROM` lines from 0.
    pub stage: usize,
    /// The instruction in upper case, such as `COPY`.
    pub keyword: String,
    /// The rest of the instruction.
    pub arguments: String,
    /// Line number of the instruction's first line, from 1.
    pub line: usize,
}

/// A `COPY` instruction.
#[derive(Clone, Debug)]
pub struct Copy {
    pub stage: usize,
    /// The `--from` stage or image, or `None` for the build context.
    pub from: Option<String>,
    pub sources: Vec<String>,
    pub destination: String,
}

/// The instructions of a Dockerfile.
#[derive(Debug)]
pub struct Dockerfile {
    pub instructions: Vec<Instruction>,
}

impl Dockerfile {
    /// Reads a Dockerfile, or fails when `path` cannot be read.
    pub fn read(path: &Path) -> anyhow::Result<Dockerfile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Dockerfile::parse(&text))
    }

    /// Splits Dockerfile text into instructions. A line ending in `\`
    /// continues on the next line. Comment lines (parser directives
    /// included) and blank lines are skipped, also inside a continued
    /// instruction.
    pub fn parse(text: &str) -> Dockerfile {
        let mut instructions = Vec::new();
        let mut stage: Option<usize> = None;
        let mut pending: Option<(usize, String)> = None;
        for (index, line) in text.lines().enumerate() {
            let trimmed = line.trim();
            if trimmed.starts_with('#') || trimmed.is_empty() {
                continue;
            }
            let (first_line, mut joined) = pending.take().unwrap_or((index + 1, String::new()));
            match trimmed.strip_suffix('\\') {
                Some(head) => {
                    joined.push_str(head);
                    joined.push(' ');
                    pending = Some((first_line, joined));
                }
                None => {
                    joined.push_str(trimmed);
                    let (keyword, arguments) = joined
                        .split_once(char::is_whitespace)
                        .unwrap_or((joined.as_str(), ""));
                    let keyword = keyword.to_ascii_uppercase();
                    if keyword == "FROM" {
                        stage = Some(stage.map_or(0, |stage| stage + 1));
                    }
                    instructions.push(Instruction {
                        stage: stage.unwrap_or(0),
                        keyword,
                        arguments: arguments.trim().to_owned(),
                        line: first_line,
                    });
                }
            }
        }
        Dockerfile { instructions }
    }

    /// Returns the index of the last stage, the one that becomes the image.
    pub fn final_stage(&self) -> usize {
        self.instructions.last().map_or(0, |last| last.stage)
    }

    /// Returns the instructions of the final stage with this keyword.
    pub fn final_instructions<'a>(
        &'a self,
        keyword: &'a str,
    ) -> impl Iterator<Item = &'a Instruction> + 'a {
        let stage = self.final_stage();
        self.instructions
            .iter()
            .filter(move |instruction| instruction.stage == stage && instruction.keyword == keyword)
    }

    /// Returns the arguments of the final stage's last `ENTRYPOINT` or
    /// `CMD`, which must be in exec form (a JSON array of strings).
    pub fn exec_form(&self, keyword: &str) -> anyhow::Result<Vec<String>> {
        let instruction = self
            .final_instructions(keyword)
            .last()
            .with_context(|| format!("the final stage has no {keyword}"))?;
        serde_json::from_str(&instruction.arguments).with_context(|| {
            format!(
                "{keyword} on line {} is not in exec form (a JSON array of strings): {}",
                instruction.line, instruction.arguments
            )
        })
    }

    /// Returns the argument of the final stage's last `WORKDIR`.
    pub fn final_workdir(&self) -> Option<String> {
        self.final_instructions("WORKDIR")
            .last()
            .map(|instruction| instruction.arguments.clone())
    }

    /// Returns every `COPY` instruction, in shell form with `--flag=value`
    /// options.
    pub fn copies(&self) -> anyhow::Result<Vec<Copy>> {
        let mut copies = Vec::new();
        for instruction in self.instructions.iter().filter(|i| i.keyword == "COPY") {
            ensure!(
                !instruction.arguments.starts_with('['),
                "COPY on line {} is in JSON form, which this reader does not parse",
                instruction.line
            );
            let mut from = None;
            let mut paths = Vec::new();
            for word in instruction.arguments.split_whitespace() {
                match word.strip_prefix("--") {
                    Some(option) => {
                        if let Some(stage) = option.strip_prefix("from=") {
                            from = Some(stage.to_owned());
                        }
                    }
                    None => paths.push(word.to_owned()),
                }
            }
            ensure!(
                paths.len() >= 2,
                "COPY on line {} needs a source and a destination",
                instruction.line
            );
            let destination = paths.pop().unwrap_or_default();
            copies.push(Copy {
                stage: instruction.stage,
                from,
                sources: paths,
                destination,
            });
        }
        Ok(copies)
    }
}

/// Returns whether `path` (relative, `/`-separated) matches a glob pattern
/// where `*` matches any characters except `/`, `?` one character except
/// `/`, and a `**` component any number of components.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    let pattern: Vec<&str> = pattern.trim_matches('/').split('/').collect();
    let path: Vec<&str> = path.trim_matches('/').split('/').collect();
    match_components(&pattern, &path)
}

fn match_components(pattern: &[&str], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((&"**", rest)) => (0..=path.len()).any(|skip| match_components(rest, &path[skip..])),
        Some((first, rest)) => match path.split_first() {
            Some((component, path_rest)) => {
                match_component(first.as_bytes(), component.as_bytes())
                    && match_components(rest, path_rest)
            }
            None => false,
        },
    }
}

fn match_component(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| match_component(rest, &text[skip..])),
        Some((b'?', rest)) => !text.is_empty() && match_component(rest, &text[1..]),
        Some((byte, rest)) => text.first() == Some(byte) && match_component(rest, &text[1..]),
    }
}

/// Returns whether a `.dockerignore` keeps `path` in the build context.
/// As in Docker, the last pattern that matches the path or one of its
/// parent folders decides, and a pattern starting with `!` keeps it.
pub fn dockerignore_keeps(dockerignore: &str, path: &str) -> bool {
    let components: Vec<&str> = path.trim_matches('/').split('/').collect();
    let mut included = true;
    for line in dockerignore.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (keeps, pattern) = match line.strip_prefix('!') {
            Some(pattern) => (true, pattern),
            None => (false, line),
        };
        let matches = (1..=components.len())
            .any(|length| glob_match(pattern, &components[..length].join("/")));
        if matches {
            included = keeps;
        }
    }
    included
}

/// Returns the files and folders in `root` that a `COPY` source names,
/// relative to `root`. Only the last component of the source may contain
/// `*` or `?`.
pub fn expand_source(root: &Path, source: &str) -> anyhow::Result<Vec<String>> {
    let source = source.trim_end_matches('/');
    if !source.contains(['*', '?']) {
        return Ok(if root.join(source).exists() {
            vec![source.to_owned()]
        } else {
            Vec::new()
        });
    }
    let (folder, pattern) = source.rsplit_once('/').unwrap_or(("", source));
    ensure!(
        !folder.contains(['*', '?']),
        "`{source}` has a wildcard in a folder name, which this reader does not expand"
    );
    let entries = std::fs::read_dir(root.join(folder))
        .with_context(|| format!("cannot list `{folder}` for `{source}`"))?;
    let mut matches = Vec::new();
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if match_component(pattern.as_bytes(), name.as_bytes()) {
            matches.push(if folder.is_empty() {
                name
            } else {
                format!("{folder}/{name}")
            });
        }
    }
    matches.sort();
    Ok(matches)
}

/// Reads `KEY=VALUE` lines of an env file such as `.env.example`. Blank
/// lines and lines starting with `#` are skipped. Values are taken as
/// written, without quote removal.
pub fn read_env_file(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut variables = BTreeMap::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line
            .split_once('=')
            .with_context(|| format!("line {} is not KEY=VALUE: {line}", index + 1))?;
        ensure!(
            is_variable_name(name),
            "line {}: `{name}` is not a variable name",
            index + 1
        );
        let previous = variables.insert(name.to_owned(), value.to_owned());
        ensure!(
            previous.is_none(),
            "line {}: `{name}` is set twice",
            index + 1
        );
    }
    Ok(variables)
}

fn is_variable_name(name: &str) -> bool {
    let mut characters = name.chars();
    characters
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && characters.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A variable reference in a Compose value, such as `${NAME:-default}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub name: String,
    /// The operator after the name: `""`, `:-`, `-`, `:?`, `?`, `:+` or `+`.
    pub operator: String,
    /// The text after the operator: a default, an error message or a
    /// replacement.
    pub operand: String,
}

/// Text and references of a Compose value, in order.
enum Piece {
    Text(String),
    Reference(Reference),
}

/// Splits a Compose value at its variable references, as the Compose
/// Specification's interpolation defines them: `$$` is a literal `$`,
/// `$NAME` and `${NAME}` substitute, and `${NAME<operator><operand>}` takes
/// one of the operators of [`Reference::operator`]. Operands must not
/// contain further references.
fn split_references(value: &str) -> anyhow::Result<Vec<Piece>> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = value;
    while let Some(position) = rest.find('$') {
        text.push_str(&rest[..position]);
        rest = &rest[position + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            text.push('$');
            rest = after;
            continue;
        }
        let reference = if let Some(braced) = rest.strip_prefix('{') {
            let end = braced
                .find('}')
                .with_context(|| format!("`${{` without a closing `}}` in `{value}`"))?;
            let inner = &braced[..end];
            ensure!(
                !inner.contains('$'),
                "nested reference in `{value}`, which this reader does not expand"
            );
            rest = &braced[end + 1..];
            parse_braced(inner).with_context(|| format!("invalid reference in `{value}`"))?
        } else {
            let length = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let name = &rest[..length];
            ensure!(
                is_variable_name(name),
                "`$` not followed by a variable name in `{value}`; write `$$` for a literal `$`"
            );
            rest = &rest[length..];
            Reference {
                name: name.to_owned(),
                operator: String::new(),
                operand: String::new(),
            }
        };
        pieces.push(Piece::Text(std::mem::take(&mut text)));
        pieces.push(Piece::Reference(reference));
    }
    text.push_str(rest);
    pieces.push(Piece::Text(text));
    Ok(pieces)
}

fn parse_braced(inner: &str) -> anyhow::Result<Reference> {
    let length = inner
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(inner.len());
    let (name, tail) = inner.split_at(length);
    ensure!(is_variable_name(name), "`{inner}` has no variable name");
    let operator = [":-", ":?", ":+", "-", "?", "+"]
        .into_iter()
        .find(|operator| tail.starts_with(operator));
    let (operator, operand) = match operator {
        Some(operator) => (operator, &tail[operator.len()..]),
        None if tail.is_empty() => ("", ""),
        None => bail!("`{inner}` has an unknown operator"),
    };
    Ok(Reference {
        name: name.to_owned(),
        operator: operator.to_owned(),
        operand: operand.to_owned(),
    })
}

/// Returns every variable reference in a Compose value.
pub fn references(value: &str) -> anyhow::Result<Vec<Reference>> {
    Ok(split_references(value)?
        .into_iter()
        .filter_map(|piece| match piece {
            Piece::Reference(reference) => Some(reference),
            Piece::Text(_) => None,
        })
        .collect())
}

/// Returns a Compose value with its variable references removed: the text
/// that is written literally.
pub fn literal_text(value: &str) -> anyhow::Result<String> {
    Ok(split_references(value)?
        .into_iter()
        .filter_map(|piece| match piece {
            Piece::Text(text) => Some(text),
            Piece::Reference(_) => None,
        })
        .collect())
}

/// Substitutes the variable references of a Compose value from `variables`.
/// A variable that is neither set nor given a default is an error, where
/// Compose would warn and substitute an empty string.
pub fn interpolate(value: &str, variables: &BTreeMap<String, String>) -> anyhow::Result<String> {
    let mut result = String::new();
    for piece in split_references(value)? {
        let reference = match piece {
            Piece::Text(text) => {
                result.push_str(&text);
                continue;
            }
            Piece::Reference(reference) => reference,
        };
        let set = variables.get(&reference.name);
        let non_empty = set.filter(|value| !value.is_empty());
        let substituted = match reference.operator.as_str() {
            "" => set.cloned(),
            ":-" => Some(non_empty.cloned().unwrap_or(reference.operand)),
            "-" => Some(set.cloned().unwrap_or(reference.operand)),
            ":?" | "?" => {
                let value = if reference.operator == ":?" {
                    non_empty
                } else {
                    set
                };
                match value {
                    Some(value) => Some(value.clone()),
                    None => bail!(
                        "required variable {} is not set: {}",
                        reference.name,
                        reference.operand
                    ),
                }
            }
            ":+" => Some(non_empty.map(|_| reference.operand).unwrap_or_default()),
            "+" => Some(set.map(|_| reference.operand).unwrap_or_default()),
            operator => bail!("unknown operator `{operator}`"),
        };
        let substituted = substituted.with_context(|| {
            format!(
                "variable {} is not set and has no default in `{value}`",
                reference.name
            )
        })?;
        result.push_str(&substituted);
    }
    Ok(result)
}

/// Applies [`interpolate`] to every string in a parsed Compose file, as
/// Compose does before it validates the file. Keys are left as written.
pub fn interpolate_tree(
    value: &Value,
    variables: &BTreeMap<String, String>,
) -> anyhow::Result<Value> {
    Ok(match value {
        Value::String(text) => Value::String(interpolate(text, variables)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| interpolate_tree(item, variables))
                .collect::<anyhow::Result<_>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, item)| Ok((key.clone(), interpolate_tree(item, variables)?)))
                .collect::<anyhow::Result<_>>()?,
        ),
        other => other.clone(),
    })
}

/// Returns every string in a parsed YAML or JSON tree, keys excluded.
pub fn strings(value: &Value) -> Vec<&str> {
    let mut found = Vec::new();
    collect_strings(value, &mut found);
    found
}

fn collect_strings<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
    match value {
        Value::String(text) => found.push(text),
        Value::Array(items) => items.iter().for_each(|item| collect_strings(item, found)),
        Value::Object(map) => map.values().for_each(|item| collect_strings(item, found)),
        _ => {}
    }
}

/// A port mapping in the Compose short syntax
/// `[HOST_IP:][PUBLISHED:]TARGET[/PROTOCOL]`, after interpolation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMapping {
    pub host_ip: Option<String>,
    pub published: Option<u16>,
    pub target: u16,
}

impl PortMapping {
    /// Parses one mapping with single ports. IPv6 host addresses and port
    /// ranges are rejected.
    pub fn parse(text: &str) -> anyhow::Result<PortMapping> {
        let without_protocol = text.split_once('/').map_or(text, |(ports, _)| ports);
        ensure!(
            !without_protocol.contains(['[', '-']),
            "port mapping `{text}` has a port range or an IPv6 address, which this reader does not parse"
        );
        let port = |value: &str| -> anyhow::Result<u16> {
            value
                .parse()
                .with_context(|| format!("`{value}` in `{text}` is not a port number"))
        };
        let parts: Vec<&str> = without_protocol.split(':').collect();
        match parts.as_slice() {
            [target] => Ok(PortMapping {
                host_ip: None,
                published: None,
                target: port(target)?,
            }),
            [published, target] => Ok(PortMapping {
                host_ip: None,
                published: Some(port(published)?),
                target: port(target)?,
            }),
            [host_ip, published, target] => Ok(PortMapping {
                host_ip: Some((*host_ip).to_owned()),
                published: Some(port(published)?),
                target: port(target)?,
            }),
            _ => bail!("`{text}` is not a port mapping"),
        }
    }
}

/// Splits `HOST:PORT` into its host and port.
pub fn host_and_port(address: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = address
        .rsplit_once(':')
        .with_context(|| format!("`{address}` is not HOST:PORT"))?;
    let port = port
        .parse()
        .with_context(|| format!("`{port}` in `{address}` is not a port number"))?;
    Ok((host.to_owned(), port))
}

/// Returns each variable a manifest references with its `:-` default, such
/// as `SWITCHYARD_LISTEN` and `127.0.0.1:3000`. A reference without a
/// default maps to `None`.
pub fn manifest_variables(path: &Path) -> anyhow::Result<BTreeMap<String, Option<String>>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read manifest {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", path.display()))?;
    let mut variables = BTreeMap::new();
    let mut values: Vec<&toml::Value> = table.values().collect();
    while let Some(value) = values.pop() {
        match value {
            toml::Value::String(text) => {
                for reference in references(text)? {
                    let default = (reference.operator == ":-").then_some(reference.operand);
                    variables.insert(reference.name, default);
                }
            }
            toml::Value::Array(items) => values.extend(items),
            toml::Value::Table(table) => values.extend(table.values()),
            _ => {}
        }
    }
    Ok(variables)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variables(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    #[test]
    fn interpolate_operators() {
        let set = variables(&[("USER", "ada"), ("EMPTY", "")]);
        let cases = [
            ("${USER}", "ada"),
            ("$USER@host", "ada@host"),
            ("$$USER", "$USER"),
            ("${EMPTY:-fallback}", "fallback"),
            ("${EMPTY-fallback}", ""),
            ("${MISSING-fallback}", "fallback"),
            ("${USER:-fallback}", "ada"),
            ("${USER:+yes}", "yes"),
            ("${EMPTY:+yes}", ""),
            ("${EMPTY+yes}", "yes"),
            ("a${USER:?needed}b", "aadab"),
            ("${MISSING:-127.0.0.1:3000}:8080", "127.0.0.1:3000:8080"),
        ];
        for (value, expected) in cases {
            assert_eq!(
                interpolate(value, &set).unwrap(),
                expected,
                "value `{value}`"
            );
        }
    }

    #[test]
    fn interpolate_rejects_missing_variables() {
        let set = variables(&[("EMPTY", "")]);
        for value in ["${MISSING}", "${EMPTY:?set it}", "${MISSING?set it}", "$"] {
            assert!(interpolate(value, &set).is_err(), "value `{value}`");
        }
    }

    #[test]
    fn dockerfile_joins_continuations_and_stages() {
        let dockerfile = Dockerfile::parse(
            "# syntax=docker/dockerfile:1\nFROM rust AS builder\nRUN a \\\n    # note\n    && b\nFROM debian\nCOPY --from=builder /out/x /usr/local/bin/x\nCMD [\"up\"]\n",
        );
        let keywords: Vec<_> = dockerfile
            .instructions
            .iter()
            .map(|i| i.keyword.as_str())
            .collect();
        assert_eq!(keywords, ["FROM", "RUN", "FROM", "COPY", "CMD"]);
        assert_eq!(dockerfile.instructions[1].arguments, "a  && b");
        assert_eq!(dockerfile.instructions[1].line, 3);
        assert_eq!(dockerfile.final_stage(), 1);
        assert_eq!(dockerfile.exec_form("CMD").unwrap(), ["up"]);
        let copies = dockerfile.copies().unwrap();
        assert_eq!(copies[0].from.as_deref(), Some("builder"));
        assert_eq!(copies[0].destination, "/usr/local/bin/x");
    }

    #[test]
    fn dockerignore_allowlist() {
        let ignore = "*\n!runtime\n!handlers/*.wasm\n**/target\n";
        assert!(dockerignore_keeps(ignore, "runtime"));
        assert!(dockerignore_keeps(ignore, "runtime/src/lib.rs"));
        assert!(!dockerignore_keeps(ignore, "runtime/target"));
        assert!(dockerignore_keeps(ignore, "handlers/email.wasm"));
        assert!(!dockerignore_keeps(ignore, "handlers/email/src/lib.rs"));
        assert!(!dockerignore_keeps(ignore, "README.md"));
    }

    #[test]
    fn port_mapping_forms() {
        assert_eq!(
            PortMapping::parse("127.0.0.1:5672:5672").unwrap(),
            PortMapping {
                host_ip: Some("127.0.0.1".to_owned()),
                published: Some(5672),
                target: 5672
            }
        );
        assert_eq!(PortMapping::parse("3000").unwrap().published, None);
        assert_eq!(PortMapping::parse("80:8080/tcp").unwrap().target, 8080);
        assert!(PortMapping::parse("3000-3009:3000").is_err());
    }
}
