//! W3C Trace Context (`traceparent`) as events carry it in the CloudEvents
//! distributed-tracing extension.
//!
//! switchyard does not record spans itself. It keeps a request's trace id on
//! every event that follows from the request: the producer endpoint and each
//! handler call count as one hop, and each hop passes on a new parent id.

use std::fmt;

/// The CloudEvents extension attribute, and the HTTP header, of the trace
/// context.
pub const TRACEPARENT: &str = "traceparent";
/// Vendor-specific trace data that travels unchanged beside `traceparent`.
pub const TRACESTATE: &str = "tracestate";

/// A parsed `traceparent` of version 00:
/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub parent_id: u64,
    pub flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` value. Returns `None` for a version other than
    /// 00, a wrong length, upper-case or non-hex digits, or an all-zero id,
    /// which a receiver treats as no context under W3C Trace Context.
    pub fn parse(value: &str) -> Option<TraceParent> {
        let mut parts = value.split('-');
        let version = parts.next()?;
        let trace_id = parts.next()?;
        let parent_id = parts.next()?;
        let flags = parts.next()?;
        if version != "00" || parts.next().is_some() {
            return None;
        }
        let trace_id = parse_hex(trace_id, 32)?;
        let parent_id = parse_hex(parent_id, 16).and_then(|id| u64::try_from(id).ok())?;
        let flags = parse_hex(flags, 2).and_then(|id| u8::try_from(id).ok())?;
        if trace_id == 0 || parent_id == 0 {
            return None;
        }
        Some(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// Starts a new, sampled trace.
    pub fn new_root() -> TraceParent {
        TraceParent {
            trace_id: rand::random_range(1..=u128::MAX),
            parent_id: rand::random_range(1..=u64::MAX),
            flags: 0x01,
        }
    }

    /// Returns the context of the next hop: the same trace and flags with a
    /// new parent id.
    pub fn child(&self) -> TraceParent {
        TraceParent {
            parent_id: rand::random_range(1..=u64::MAX),
            ..*self
        }
    }

    /// Returns the trace id as the 32 hex digits that logs and tracing
    /// back ends show.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

/// Parses exactly `digits` lower-case hex digits.
fn parse_hex(text: &str, digits: usize) -> Option<u128> {
    let valid = text.len() == digits
        && text
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
    if !valid {
        return None;
    }
    u128::from_str_radix(text, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parse_and_display_round_trip() {
        let parent = TraceParent::parse(EXAMPLE).expect("valid traceparent");
        assert_eq!(parent.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(parent.parent_id, 0x00f067aa0ba902b7);
        assert_eq!(parent.flags, 1);
        assert_eq!(parent.to_string(), EXAMPLE);
        assert_eq!(parent.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn parse_rejects_invalid_values() {
        let invalid = [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ];
        for value in invalid {
            assert_eq!(TraceParent::parse(value), None, "{value:?}");
        }
    }

    #[test]
    fn child_keeps_trace_and_flags() {
        let parent = TraceParent::parse(EXAMPLE).expect("valid traceparent");
        let child = parent.child();
        assert_eq!(child.trace_id, parent.trace_id);
        assert_eq!(child.flags, parent.flags);
        assert_ne!(child.parent_id, parent.parent_id);
        assert_eq!(TraceParent::parse(&child.to_string()), Some(child));
    }

    #[test]
    fn new_root_is_valid_and_sampled() {
        let root = TraceParent::new_root();
        assert_eq!(TraceParent::parse(&root.to_string()), Some(root));
        assert_eq!(root.flags, 1);
    }
}
