//! Problems found in manifests, with the file and position they refer to.

use std::fmt::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};

use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, MietteDiagnostic, NamedSource};
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem: what is wrong, where, and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    /// Stable identifier of the kind of problem, such as `undefined-queue`.
    pub code: &'static str,
    pub message: String,
    /// Index into the loaded source files, when the problem has a position.
    pub file: Option<usize>,
    /// Byte range in that file.
    pub span: Option<Range<usize>>,
    pub hint: Option<String>,
}

impl Problem {
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Problem {
            severity: Severity::Error,
            code,
            message: message.into(),
            file: None,
            span: None,
            hint: None,
        }
    }

    pub fn warning(code: &'static str, message: impl Into<String>) -> Self {
        Problem {
            severity: Severity::Warning,
            ..Problem::error(code, message)
        }
    }

    pub fn at(mut self, file: usize, span: Range<usize>) -> Self {
        self.file = Some(file);
        self.span = Some(span);
        self
    }

    pub fn in_file(mut self, file: usize) -> Self {
        self.file = Some(file);
        self
    }

    /// Points the problem at an entry's name, or at its file when the name
    /// has no position.
    pub fn at_entry<T>(mut self, entry: &super::Entry<T>) -> Self {
        self.file = Some(entry.file);
        self.span = entry.name_span.clone();
        self
    }

    /// Points the problem at the value of `key` (a dotted path such as
    /// `limits.timeout`) in an entry, or at the entry's name when the key
    /// is not written there.
    pub fn at_key<T>(mut self, entry: &super::Entry<T>, key: &str) -> Self {
        self.file = Some(entry.file);
        self.span = entry
            .key_spans
            .get(key)
            .or(entry.name_span.as_ref())
            .cloned();
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// A manifest file's path and text, kept to point problems at lines.
#[derive(Clone, Debug)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

impl SourceFile {
    /// Returns the 1-based line and column of a byte offset.
    pub fn line_column(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    pub fn folder(&self) -> &Path {
        self.path.parent().unwrap_or_else(|| Path::new("."))
    }
}

/// A problem in the shape of `check --format json`.
#[derive(Debug, Serialize)]
pub struct ProblemRecord {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub file: Option<String>,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub hint: Option<String>,
}

/// Turns a problem into its JSON record, resolving its position.
pub fn record(problem: &Problem, files: &[SourceFile]) -> ProblemRecord {
    let file = problem.file.and_then(|index| files.get(index));
    let position = match (file, &problem.span) {
        (Some(file), Some(span)) => Some(file.line_column(span.start)),
        _ => None,
    };
    ProblemRecord {
        severity: problem.severity,
        code: problem.code,
        message: problem.message.clone(),
        file: file.map(|f| f.path.display().to_string()),
        line: position.map(|p| p.0),
        column: position.map(|p| p.1),
        hint: problem.hint.clone(),
    }
}

/// Renders problems for a terminal: a header line with the position, the
/// offending source line, and the hint.
pub fn render(problems: &[Problem], files: &[SourceFile]) -> String {
    let handler =
        GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor()).with_width(100);
    let redacted = redact_secrets(problems, files);
    let files = redacted.as_slice();
    let mut out = String::new();
    for problem in problems {
        let file = problem.file.and_then(|index| files.get(index));
        let severity = match problem.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        };
        let mut diagnostic = MietteDiagnostic::new(problem.message.clone())
            .with_code(problem.code)
            .with_severity(severity);
        if let Some(hint) = &problem.hint {
            diagnostic = diagnostic.with_help(hint.clone());
        }
        match (file, &problem.span) {
            (Some(file), Some(span)) => {
                let (line, column) = file.line_column(span.start);
                let _ = writeln!(out, "{}:{line}:{column}", file.path.display());
                let label = LabeledSpan::at(span.clone(), "here");
                let report = miette::Report::new(diagnostic.with_label(label)).with_source_code(
                    NamedSource::new(file.path.display().to_string(), file.text.clone()),
                );
                let _ = handler.render_report(&mut out, report.as_ref());
            }
            (Some(file), None) => {
                let _ = writeln!(out, "{}", file.path.display());
                let report = miette::Report::new(diagnostic);
                let _ = handler.render_report(&mut out, report.as_ref());
            }
            _ => {
                let report = miette::Report::new(diagnostic);
                let _ = handler.render_report(&mut out, report.as_ref());
            }
        }
        out.push('\n');
    }
    out
}

/// Returns copies of the files with every secret that a `literal-password`
/// problem points at replaced by `*`, so that the source lines shown with
/// any problem do not print it. Byte offsets stay the same.
fn redact_secrets(problems: &[Problem], files: &[SourceFile]) -> Vec<SourceFile> {
    let mut redacted = files.to_vec();
    for problem in problems.iter().filter(|p| p.code == "literal-password") {
        let (Some(index), Some(span)) = (problem.file, problem.span.clone()) else {
            continue;
        };
        let Some(file) = redacted.get_mut(index) else {
            continue;
        };
        let Some(value) = file.text.get(span.clone()) else {
            continue;
        };
        // A URL keeps everything but its password. A secret option value,
        // written as a quoted string, loses everything inside the quotes.
        let secret = match super::check::literal_password(value) {
            Some(_) => {
                url_password(value).map(|range| span.start + range.start..span.start + range.end)
            }
            None if value.len() >= 2 => Some(span.start + 1..span.end - 1),
            None => None,
        };
        if let Some(secret) = secret {
            let stars = "*".repeat(secret.len());
            file.text.replace_range(secret, &stars);
        }
    }
    redacted
}

/// Returns where the password of `user:password@` lies in a URL: from the
/// first `:` after `scheme://` to the last `@`, as in the logs' redacted
/// URLs. Searching for the password's text instead would find the user
/// name first when the two are equal.
fn url_password(url: &str) -> Option<std::ops::Range<usize>> {
    let start = url.find("://")? + "://".len();
    let at = start + url[start..].rfind('@')?;
    let colon = start + url[start..at].find(':')?;
    Some(colon + 1..at)
}

/// Returns a "did you mean" hint naming the closest of `candidates`.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a String>) -> Option<String> {
    candidates
        .into_iter()
        .map(|candidate| (strsim::jaro_winkler(name, candidate), candidate))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate.clone())
}
