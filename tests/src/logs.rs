//! switchyard's log lines as `--log-format json` writes them: one JSON
//! object per line with `timestamp`, `level`, `target` and `fields`.

use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// One JSON log line.
#[derive(Clone, Debug)]
pub struct LogLine {
    pub timestamp: Option<OffsetDateTime>,
    pub level: String,
    pub target: String,
    /// The event's fields; the text of the line is `message`.
    pub fields: Map<String, Value>,
}

impl LogLine {
    /// Parses every JSON log line of a stderr capture and skips other lines,
    /// such as a panic's message.
    pub fn parse_all(text: &str) -> Vec<LogLine> {
        text.lines().filter_map(LogLine::parse).collect()
    }

    fn parse(line: &str) -> Option<LogLine> {
        let Value::Object(mut object) = serde_json::from_str(line).ok()? else {
            return None;
        };
        let text = |value: Option<Value>| match value {
            Some(Value::String(text)) => text,
            _ => String::new(),
        };
        let timestamp = object
            .get("timestamp")
            .and_then(Value::as_str)
            .and_then(|stamp| OffsetDateTime::parse(stamp, &Rfc3339).ok());
        let fields = match object.remove("fields") {
            Some(Value::Object(fields)) => fields,
            _ => Map::new(),
        };
        Some(LogLine {
            timestamp,
            level: text(object.remove("level")),
            target: text(object.remove("target")),
            fields,
        })
    }

    /// Returns the line's message, or "" when it has none.
    pub fn message(&self) -> &str {
        self.field("message").unwrap_or_default()
    }

    /// Returns a string field.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).and_then(Value::as_str)
    }
}

/// One call of the chaos test guest, read from the line it logs on every
/// call: `chaos guest called: event <id> attempt <n> instance call <k>`,
/// which the host tags with the consumer name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChaosCall {
    pub consumer: String,
    pub event_id: String,
    pub attempt: u32,
    /// Calls the guest instance had served, this one included.
    pub instance_call: u32,
    pub time: Option<OffsetDateTime>,
}

impl ChaosCall {
    const PREFIX: &str = "chaos guest called: event ";

    /// Reads a chaos guest call from a log line.
    pub fn from_line(line: &LogLine) -> Option<ChaosCall> {
        let rest = line.message().strip_prefix(Self::PREFIX)?;
        let (rest, instance_call) = rest.rsplit_once(" instance call ")?;
        let (event_id, attempt) = rest.rsplit_once(" attempt ")?;
        Some(ChaosCall {
            consumer: line.field("consumer").unwrap_or_default().to_owned(),
            event_id: event_id.to_owned(),
            attempt: attempt.trim().parse().ok()?,
            instance_call: instance_call.trim().parse().ok()?,
            time: line.timestamp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chaos_call_read_from_json_line() {
        let text = concat!(
            "error: not JSON\n",
            r#"{"timestamp":"2026-01-02T03:04:05.123456Z","level":"INFO","fields":"#,
            r#"{"message":"chaos guest called: event e-1 attempt 2 instance call 7","#,
            r#""consumer":"retrier","#,
            r#""event_id":"e-1"},"target":"switchyard::handler"}"#,
            "\n"
        );
        let lines = LogLine::parse_all(text);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].level, "INFO");
        let call = ChaosCall::from_line(&lines[0]).expect("the line is a chaos call");
        assert_eq!(call.consumer, "retrier");
        assert_eq!(call.event_id, "e-1");
        assert_eq!(call.attempt, 2);
        assert_eq!(call.instance_call, 7);
        assert!(call.time.is_some());
    }
}
