//! Test guest that misbehaves on request, for tests of the runtime's retries,
//! dead-lettering, deadlines, memory cap and emitted events.
//!
//! The consumer's config table picks the behaviour with `mode`:
//! `ok` (the default), `retry`, `reject`, `spin`, `trap`, `alloc`, `leak`,
//! `emit`, `connect` or `open`. Mode `emit` also reads `emit-type`. Mode `connect`
//! opens a TCP connection to `address`, an IPv4 address and port. Mode `open`
//! opens `path` in the first granted folder, for writing when `write` is `true`.
//! The last two reject the event with WASI's error code when denied, so
//! tests can read the sandbox's decision from the dead letter's reason. An
//! unknown mode rejects the event.

wit_bindgen::generate!({ path: "../../../handlers/wit", world: "handler" });

use std::hint::black_box;
use std::sync::atomic::{AtomicU32, Ordering};
use switchyard::handler::host;
use switchyard::handler::types::Level;

struct ChaosGuest;

/// Calls this instance has served, this one included. Lives in the guest's
/// memory, so it shows when the host reuses an instance.
static INSTANCE_CALLS: AtomicU32 = AtomicU32::new(0);

impl Guest for ChaosGuest {
    fn handle(event: Event) -> Result<(), HandlerError> {
        let instance_call = INSTANCE_CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        // Tests count calls by counting this line.
        host::log(
            Level::Info,
            &format!(
                "chaos guest called: event {} attempt {} instance call {instance_call}",
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
            "leak" => leak_memory(),
            "emit" => emit_event_data(&event),
            "connect" => connect(),
            "open" => open_file(),
            other => Err(HandlerError::Reject(format!(
                "unknown chaos mode {other:?}: expected ok, retry, reject, spin, trap, alloc, \
                 leak, emit, connect or open"
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

/// Bytes that mode `leak` leaves allocated at each call.
const LEAKED_PER_CALL: usize = 8 << 20;

/// Allocates and writes `LEAKED_PER_CALL` bytes that are never freed, then
/// returns ok, so each call on the same instance leaves its memory larger.
fn leak_memory() -> Result<(), HandlerError> {
    let block = black_box(vec![1u8; LEAKED_PER_CALL]);
    std::mem::forget(block);
    Ok(())
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

/// Returns the config value `key`, or rejects the event naming the mode
/// that needs it.
fn required_config(mode: &str, key: &str) -> Result<String, HandlerError> {
    host::config(key).ok_or_else(|| {
        HandlerError::Reject(format!(
            "mode {mode} needs config key {key}, which is missing"
        ))
    })
}

/// Opens a TCP connection to config `address`, such as `127.0.0.1:8080`,
/// and closes it again.
fn connect() -> Result<(), HandlerError> {
    use wasip2::sockets::network::{ErrorCode, IpAddressFamily, IpSocketAddress, Ipv4SocketAddress};
    use wasip2::sockets::{instance_network, tcp_create_socket};

    let address = required_config("connect", "address")?;
    let parsed: std::net::SocketAddrV4 = address.parse().map_err(|err| {
        HandlerError::Reject(format!("address {address:?} is not IPv4 address:port: {err}"))
    })?;
    let failed = |code: ErrorCode| {
        HandlerError::Reject(format!("connect to {address} failed: {}", code.name()))
    };
    let [a, b, c, d] = parsed.ip().octets();
    let remote = IpSocketAddress::Ipv4(Ipv4SocketAddress {
        port: parsed.port(),
        address: (a, b, c, d),
    });

    let network = instance_network::instance_network();
    let socket = tcp_create_socket::create_tcp_socket(IpAddressFamily::Ipv4).map_err(failed)?;
    socket.start_connect(&network, remote).map_err(failed)?;
    let ready = socket.subscribe();
    let outcome = loop {
        match socket.finish_connect() {
            Err(ErrorCode::WouldBlock) => ready.block(),
            Err(code) => break Err(failed(code)),
            Ok(_streams) => break Ok(()),
        }
    };
    // The pollable is a child of the socket and goes first.
    drop(ready);
    if outcome.is_ok() {
        host::log(Level::Info, &format!("chaos guest connected to {address}"));
    }
    outcome
}

/// Opens config `path` in the first granted folder, for reading, or for
/// writing (created when missing) when config `write` is `true`.
fn open_file() -> Result<(), HandlerError> {
    use wasip2::filesystem::preopens;
    use wasip2::filesystem::types::{DescriptorFlags, OpenFlags, PathFlags};

    let path = required_config("open", "path")?;
    let write = host::config("write").as_deref() == Some("true");
    let (open_flags, flags) = if write {
        (OpenFlags::CREATE, DescriptorFlags::WRITE)
    } else {
        (OpenFlags::empty(), DescriptorFlags::READ)
    };
    let folders = preopens::get_directories();
    let Some((folder, name)) = folders.first() else {
        return Err(HandlerError::Reject(
            "mode open needs a granted folder, and the consumer has none".to_string(),
        ));
    };
    folder
        .open_at(PathFlags::empty(), &path, open_flags, flags)
        .map_err(|code| {
            HandlerError::Reject(format!("open {path} in {name} failed: {}", code.name()))
        })?;
    host::log(Level::Info, &format!("chaos guest opened {path} in {name}"));
    Ok(())
}

export!(ChaosGuest);
