//! Test guest that misbehaves on request, for tests of the runtime's retries,
//! dead-lettering, deadlines, memory cap and emitted events.
//!
//! The consumer's config table picks the behaviour with `mode`:
//! `ok` (the default), `retry`, `reject`, `spin`, `trap`, `alloc` or `emit`.
//! Mode `emit` also reads `emit-type`. An unknown mode rejects the event.

wit_bindgen::generate!({ path: "../../../handlers/wit", world: "handler" });

use std::hint::black_box;
use switchyard::handler::host;
use switchyard::handler::types::Level;

struct ChaosGuest;

impl Guest for ChaosGuest {
    fn handle(event: Event) -> Result<(), HandlerError> {
        // Tests count calls by counting this line.
        host::log(
            Level::Info,
            &format!(
                "chaos guest called: event {} attempt {}",
                event.id, event.attempt
            ),
        );

        let mode = host::config("mode").unwrap_or_else(|| "ok".to_string());
        match mode.as_str() {
            "ok" => Ok(()),
            "retry" => Err(HandlerError::Retry("asked to retry".to_string())),
            "reject" => Err(HandlerError::Reject("asked to reject".to_string())),
            "spin" => spin(),
            "trap" => panic!("asked to trap"),
            "alloc" => allocate_without_bound(),
            "emit" => emit_event_data(&event),
            other => Err(HandlerError::Reject(format!(
                "unknown chaos mode {other:?}: expected ok, retry, reject, spin, trap, alloc or emit"
            ))),
        }
    }
}

/// Loops forever without host calls, until the host's deadline stops it.
fn spin() -> ! {
    let mut counter: u64 = 0;
    loop {
        // black_box keeps the optimizer from removing or folding the loop.
        counter = black_box(counter.wrapping_add(1));
    }
}

/// Allocates and writes 1 MiB blocks until `memory.grow` fails, which makes
/// the allocator abort and the guest trap.
fn allocate_without_bound() -> ! {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        blocks.push(black_box(vec![1u8; 1 << 20]));
    }
}

/// Emits the event's data unchanged as the event type in config `emit-type`.
fn emit_event_data(event: &Event) -> Result<(), HandlerError> {
    let Some(event_type) = host::config("emit-type") else {
        return Err(HandlerError::Reject(
            "mode emit needs config key emit-type, which is missing".to_string(),
        ));
    };
    host::emit(&event_type, &event.data)
        .map_err(|err| HandlerError::Reject(format!("emitting {event_type} failed: {err}")))
}

export!(ChaosGuest);
