//! A guest's WASI stdout and stderr, sent to the runtime's log one line at a
//! time and tagged with the consumer and the id of the event being handled.
//!
//! Writes never fail and never block, so a guest that prints a lot keeps
//! running: past [`MAX_LOGGED_BYTES`] in one call, output is discarded and
//! counted instead of logged.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Maximum bytes of one log line. A longer line is logged in pieces of this
/// size.
pub const MAX_LINE_BYTES: usize = 4096;

/// Maximum bytes logged from one stream during one handler call. The rest is
/// discarded, and one warning at the end of the call gives its size.
pub const MAX_LOGGED_BYTES: usize = 64 * 1024;

/// Bytes a guest may write at once: the permit that `check-write` returns.
const WRITE_PERMIT: usize = 64 * 1024;

/// A standard output stream of the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Logged at info.
    Stdout,
    /// Logged at warn, because guests write panics and errors there.
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One standard stream of a handler instance, which may serve many calls.
/// Every stream the guest opens on it shares one line buffer. Call
/// [`GuestOutput::start`] before each call and [`GuestOutput::finish`] after
/// it, so that lines carry the call's event id and a last line without a
/// newline is logged too.
#[derive(Clone)]
pub struct GuestOutput {
    lines: Arc<Mutex<LineBuffer>>,
}

impl GuestOutput {
    pub fn new(stream: Stream, consumer: Arc<str>) -> Self {
        let lines = LineBuffer::new(move |event_id: &str, line: Line<'_>| {
            log_line(stream, &consumer, event_id, line)
        });
        GuestOutput {
            lines: Arc::new(Mutex::new(lines)),
        }
    }

    /// Tags the lines that follow with `event_id`, and gives them a fresh
    /// per-call byte budget.
    pub fn start(&self, event_id: Arc<str>) {
        lock(&self.lines).start(event_id);
    }

    /// Logs what is left of an unfinished line, and a warning when output
    /// was discarded.
    pub fn finish(&self) {
        lock(&self.lines).finish();
    }
}

/// An item that a [`LineBuffer`] passes to its sink.
#[derive(Debug, PartialEq, Eq)]
enum Line<'a> {
    Text(&'a str),
    /// Bytes discarded because the call went over [`MAX_LOGGED_BYTES`].
    Discarded(usize),
}

fn log_line(stream: Stream, consumer: &str, event_id: &str, line: Line<'_>) {
    let stream_name = stream.name();
    match (line, stream) {
        (Line::Text(text), Stream::Stdout) => {
            tracing::info!(consumer, event_id, stream = stream_name, "{text}");
        }
        (Line::Text(text), Stream::Stderr) => {
            tracing::warn!(consumer, event_id, stream = stream_name, "{text}");
        }
        (Line::Discarded(bytes), _) => {
            tracing::warn!(
                consumer,
                event_id,
                stream = stream_name,
                discarded_bytes = bytes,
                limit_bytes = MAX_LOGGED_BYTES,
                "handler output over the per-call log limit was discarded"
            );
        }
    }
}

/// Receives each finished line with the id of the call's event.
type LineSink = Box<dyn FnMut(&str, Line<'_>) + Send>;

/// Splits written bytes into lines and passes each finished line to a sink,
/// within the per-call byte budget.
struct LineBuffer {
    sink: LineSink,
    event_id: Arc<str>,
    pending: Vec<u8>,
    /// Bytes taken into `pending` during this call, newlines included.
    accepted: usize,
    discarded: usize,
}

impl LineBuffer {
    fn new(sink: impl FnMut(&str, Line<'_>) + Send + 'static) -> Self {
        LineBuffer {
            sink: Box::new(sink),
            event_id: Arc::from(""),
            pending: Vec::new(),
            accepted: 0,
            discarded: 0,
        }
    }

    fn start(&mut self, event_id: Arc<str>) {
        self.event_id = event_id;
        self.pending.clear();
        self.accepted = 0;
        self.discarded = 0;
    }

    fn write(&mut self, bytes: &[u8]) {
        let room = MAX_LOGGED_BYTES.saturating_sub(self.accepted);
        let (kept, dropped) = bytes.split_at(bytes.len().min(room));
        self.accepted += kept.len();
        self.discarded += dropped.len();
        self.pending.extend_from_slice(kept);

        while let Some(newline) = self.pending.iter().position(|&byte| byte == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=newline).collect();
            self.emit(&line[..newline]);
        }
        while self.pending.len() > MAX_LINE_BYTES {
            let end = char_boundary_at_most(&self.pending, MAX_LINE_BYTES);
            let piece: Vec<u8> = self.pending.drain(..end).collect();
            self.emit(&piece);
        }
    }

    fn finish(&mut self) {
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            self.emit(&rest);
        }
        if self.discarded > 0 {
            (self.sink)(&self.event_id, Line::Discarded(self.discarded));
            self.discarded = 0;
        }
    }

    fn emit(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        (self.sink)(&self.event_id, Line::Text(&String::from_utf8_lossy(line)));
    }
}

/// Returns the largest split point not after `max` that does not cut a UTF-8
/// sequence in two, or `max` when there is none. `bytes` is longer than `max`.
fn char_boundary_at_most(bytes: &[u8], max: usize) -> usize {
    let is_continuation = |byte: u8| byte & 0b1100_0000 == 0b1000_0000;
    (1..=max)
        .rev()
        .take(4)
        .find(|&end| !is_continuation(bytes[end]))
        .unwrap_or(max)
}

fn lock(lines: &Mutex<LineBuffer>) -> MutexGuard<'_, LineBuffer> {
    lines.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        lock(&self.lines).write(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        // An unfinished line stays buffered until its newline or the end of
        // the call, so `print!` followed by a flush does not split a line.
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _context: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        lock(&self.lines).write(bytes);
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        _context: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns a line buffer whose sink writes `event-id: line` into a
    /// shared list.
    fn recording_buffer() -> (LineBuffer, Arc<Mutex<Vec<String>>>) {
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = {
            let received = received.clone();
            move |event_id: &str, line: Line<'_>| {
                let text = match line {
                    Line::Text(text) => text.to_owned(),
                    Line::Discarded(bytes) => format!("<discarded {bytes}>"),
                };
                received.lock().unwrap().push(format!("{event_id}: {text}"));
            }
        };
        (LineBuffer::new(sink), received)
    }

    /// Feeds `writes` to a line buffer in one call and returns the lines its
    /// sink received, without the event id.
    fn lines_of(writes: &[&[u8]]) -> Vec<String> {
        let (mut buffer, received) = recording_buffer();
        buffer.start(Arc::from("e"));
        for bytes in writes {
            buffer.write(bytes);
        }
        buffer.finish();
        let received = received.lock().unwrap();
        received
            .iter()
            .map(|line| line.strip_prefix("e: ").expect("tagged line").to_owned())
            .collect()
    }

    #[test]
    fn each_call_tagged_and_budgeted_anew() {
        let (mut buffer, received) = recording_buffer();
        let over_budget = vec![b'x'; MAX_LOGGED_BYTES + 10];
        buffer.start(Arc::from("e-1"));
        buffer.write(&over_budget);
        buffer.finish();
        buffer.start(Arc::from("e-2"));
        buffer.write(b"second call\n");
        buffer.finish();

        let received = received.lock().unwrap();
        assert_eq!(received.last().unwrap(), "e-2: second call");
        assert!(received.contains(&"e-1: <discarded 10>".to_owned()));
        assert!(
            received[..received.len() - 1]
                .iter()
                .all(|line| line.starts_with("e-1: "))
        );
    }

    #[test]
    fn lines_split_at_newlines() {
        let lines = lines_of(&[b"one\ntwo\r\nthr", b"ee\n", b"\n"]);
        assert_eq!(lines, ["one", "two", "three", ""]);
    }

    #[test]
    fn unfinished_line_logged_at_finish() {
        let lines = lines_of(&[b"no newline"]);
        assert_eq!(lines, ["no newline"]);
    }

    #[test]
    fn long_line_logged_in_pieces() {
        let long = vec![b'x'; MAX_LINE_BYTES * 2 + 10];
        let lines = lines_of(&[&long]);
        let lengths: Vec<usize> = lines.iter().map(String::len).collect();
        assert_eq!(lengths, [MAX_LINE_BYTES, MAX_LINE_BYTES, 10]);
    }

    #[test]
    fn long_line_split_between_characters() {
        // Two-byte characters after one ASCII byte put a character across
        // the piece boundary.
        let mut long = b"a".to_vec();
        long.extend("é".repeat(MAX_LINE_BYTES).as_bytes());
        let lines = lines_of(&[&long]);
        assert!(lines.len() > 1, "{} pieces", lines.len());
        for line in &lines {
            assert!(!line.contains('\u{FFFD}'), "piece with a cut character");
            assert!(
                line.len() <= MAX_LINE_BYTES,
                "piece of {} bytes",
                line.len()
            );
        }
        assert_eq!(lines.concat().len(), long.len());
    }

    #[test]
    fn output_over_limit_discarded_and_counted() {
        let chunk = [b'y'; 1000];
        let writes: Vec<&[u8]> = vec![&chunk; 100];
        let lines = lines_of(&writes);

        let logged: usize = lines
            .iter()
            .filter(|line| !line.starts_with('<'))
            .map(String::len)
            .sum();
        assert_eq!(logged, MAX_LOGGED_BYTES);
        let last = lines.last().expect("at least one line");
        assert_eq!(last, &format!("<discarded {}>", 100_000 - MAX_LOGGED_BYTES));
    }

    #[test]
    fn newline_counts_against_limit() {
        let line = [b"z".repeat(99), b"\n".to_vec()].concat();
        let writes: Vec<&[u8]> = vec![&line; 1000];
        let lines = lines_of(&writes);
        let discarded = lines.last().expect("at least one line");
        // Each line costs 100 bytes of the budget with its newline.
        let kept_lines = MAX_LOGGED_BYTES / 100;
        assert_eq!(
            lines.len(),
            kept_lines + 2,
            "lines, a partial one and the count"
        );
        assert_eq!(
            discarded,
            &format!("<discarded {}>", 100_000 - MAX_LOGGED_BYTES)
        );
    }
}
