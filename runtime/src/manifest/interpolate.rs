//! `${VAR}` and `${VAR:-default}` expansion in manifest values.

/// A `${VAR}` without default whose variable is not set.
#[derive(Debug, PartialEq, Eq)]
pub struct MissingVariable {
    pub name: String,
    /// Byte range of the `${...}` reference within the expanded text.
    pub range: std::ops::Range<usize>,
}

/// Expands every `${NAME}` and `${NAME:-default}` in `text` with `lookup`.
/// As in the POSIX shell, `${NAME:-default}` takes the default when the
/// variable is unset or empty, and `${NAME}` expands a set but empty
/// variable to the empty string. `$${` writes a literal `${`. Returns the
/// expanded text and the variables without default that were unset, which
/// expand to the empty string.
pub fn expand(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, Vec<MissingVariable>), String> {
    let mut out = String::with_capacity(text.len());
    let mut missing = Vec::new();
    let mut rest = text;
    let mut offset = 0;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(escaped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = escaped;
            offset += start + 3;
            continue;
        }
        if !after.starts_with("${") {
            out.push('$');
            rest = &after[1..];
            offset += start + 1;
            continue;
        }
        let Some(end) = after.find('}') else {
            return Err(format!(
                "unclosed `${{` in `{text}`; close it with `}}` or write `$${{` for a literal `${{`"
            ));
        };
        let inner = &after[2..end];
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        if !is_variable_name(name) {
            return Err(format!(
                "invalid variable name `{name}` in `{text}`; use letters, digits and `_`, not starting with a digit"
            ));
        }
        match (lookup(name), default) {
            (Some(value), Some(default)) if value.is_empty() => out.push_str(default),
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => missing.push(MissingVariable {
                name: name.to_owned(),
                range: offset + start..offset + start + end + 1,
            }),
        }
        rest = &after[end + 1..];
        offset += start + end + 1;
    }
    out.push_str(rest);
    Ok((out, missing))
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("rabbit.internal".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn set_variable_expands() {
        let (text, missing) = expand("amqp://${HOST}:5672", &env).unwrap();
        assert_eq!(text, "amqp://rabbit.internal:5672");
        assert!(missing.is_empty());
    }

    #[test]
    fn default_used_when_unset() {
        let (text, _) = expand("${PORT:-5672}", &env).unwrap();
        assert_eq!(text, "5672");
    }

    #[test]
    fn default_used_when_empty() {
        let (text, missing) = expand("[${EMPTY:-x}]", &env).unwrap();
        assert_eq!(text, "[x]");
        assert!(missing.is_empty());
    }

    #[test]
    fn empty_variable_expands_empty() {
        let (text, missing) = expand("[${EMPTY}]", &env).unwrap();
        assert_eq!(text, "[]");
        assert!(missing.is_empty());
    }

    #[test]
    fn missing_variable_reported() {
        let (_, missing) = expand("a ${SECRET} b", &env).unwrap();
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].name, "SECRET");
        assert_eq!(missing[0].range, 2..11);
    }

    #[test]
    fn escapes_and_lone_dollars_kept() {
        let (text, _) = expand("$${HOST} costs $5", &env).unwrap();
        assert_eq!(text, "${HOST} costs $5");
    }

    #[test]
    fn malformed_references_rejected() {
        assert!(expand("${HOST", &env).unwrap_err().contains("unclosed"));
        assert!(expand("${1X}", &env).unwrap_err().contains("`1X`"));
    }
}
