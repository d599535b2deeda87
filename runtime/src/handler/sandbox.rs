//! The handler sandbox: the resources a handler may use outside its own
//! memory, and the record of each access it was denied.
//!
//! WASI gives a guest only what its store's context holds: no folder, no
//! variable and no socket address unless the consumer's grants name it.
//! This module checks socket addresses against `grants.connect`. It logs
//! and counts every denial that reaches the host: a socket address that is
//! not granted, and a file opened outside a granted folder or for writing.
//! What the guest cannot even ask for leaves no trace: a handler without
//! granted folders has no folder to open a file in, and one without granted
//! variables gets an empty environment.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::filesystem::WasiFilesystemView as _;
use wasmtime_wasi::p2::bindings::filesystem::types::{
    Descriptor, DescriptorFlags, ErrorCode, Host as _, HostDescriptor as _, OpenFlags, PathFlags,
};
use wasmtime_wasi::sockets::SocketAddrUse;

use super::{CallState, Endpoint, Grants};
use crate::telemetry;

/// The version of `wasi:filesystem` that wasmtime-wasi 48 defines. Guests
/// that import an older 0.2 version are linked to it too.
const FILESYSTEM_TYPES: &str = "wasi:filesystem/types@0.2.12";

/// Kind of resource a handler was denied, and the `resource` label of
/// `switchyard_handler_denials_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Access {
    Network,
    Filesystem,
}

impl Access {
    fn label(self) -> &'static str {
        match self {
            Access::Network => "network",
            Access::Filesystem => "filesystem",
        }
    }
}

/// Logs and counts one denied access of a consumer's handler.
fn record_denial(consumer: &str, resource: Access, attempt: &str) {
    tracing::warn!(
        consumer,
        resource = resource.label(),
        attempt,
        "handler denied {} access: {attempt}; if the handler needs it, add it to \
         `grants` of `[consumers.{consumer}]`",
        resource.label(),
    );
    metrics::counter!(
        telemetry::HANDLER_DENIALS,
        "consumer" => consumer.to_owned(),
        "resource" => resource.label(),
    )
    .increment(1);
}

/// The boxed future that `WasiCtxBuilder::socket_addr_check` expects.
type Permit = Pin<Box<dyn Future<Output = bool> + Send + Sync>>;

/// Returns the socket address check of one instance. TCP connections to the
/// consumer's granted endpoints pass, and every other use of an address is
/// denied, logged and counted.
///
/// Binding the unspecified address to port 0 passes without a record.
/// wasmtime-wasi checks it before every connect and every first UDP send,
/// and such a socket reaches nothing until a connect, listen or send,
/// which are checked on their own.
pub(super) fn socket_check(
    consumer: Arc<str>,
    grants: Arc<Grants>,
) -> impl Fn(SocketAddr, SocketAddrUse) -> Permit + Send + Sync + 'static {
    move |addr, purpose| {
        let consumer = consumer.clone();
        let grants = grants.clone();
        Box::pin(async move {
            let allowed = match purpose {
                SocketAddrUse::TcpBind | SocketAddrUse::UdpBind
                    if addr.ip().is_unspecified() && addr.port() == 0 =>
                {
                    return true;
                }
                SocketAddrUse::TcpConnect => is_granted(&grants.connect, addr).await,
                _ => false,
            };
            if !allowed {
                let attempt = format!("{} {addr}", describe_use(purpose));
                record_denial(&consumer, Access::Network, &attempt);
            }
            allowed
        })
    }
}

fn describe_use(purpose: SocketAddrUse) -> &'static str {
    match purpose {
        SocketAddrUse::TcpBind => "TCP bind to",
        SocketAddrUse::TcpListen => "TCP listen on",
        SocketAddrUse::TcpAccept => "TCP accept from",
        SocketAddrUse::TcpConnect => "TCP connect to",
        SocketAddrUse::UdpBind => "UDP bind to",
        SocketAddrUse::UdpSend => "UDP send to",
        SocketAddrUse::UdpReceive => "UDP receive from",
    }
}

/// Reports whether `addr` is one of the granted endpoints. Host names are
/// looked up on every check, so a grant follows a name whose address
/// changes, as container names do.
async fn is_granted(connect: &[Endpoint], addr: SocketAddr) -> bool {
    let wanted = addr.ip().to_canonical();
    for endpoint in connect.iter().filter(|e| e.port == addr.port()) {
        if let Ok(ip) = endpoint.host.parse::<std::net::IpAddr>() {
            if ip.to_canonical() == wanted {
                return true;
            }
            continue;
        }
        // The check's future must be `Sync`, which the lookup's is not, so
        // the lookup runs as a task of its own.
        let target = (endpoint.host.clone(), endpoint.port);
        let lookup = tokio::spawn(async move {
            tokio::net::lookup_host(target)
                .await
                .map(|addrs| addrs.collect::<Vec<_>>())
        });
        match lookup.await {
            Ok(Ok(addrs)) if addrs.iter().any(|a| a.ip().to_canonical() == wanted) => {
                return true;
            }
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                tracing::warn!(host = %endpoint.host, error = %err,
                    "cannot look up granted host; connections to it are denied until it resolves");
            }
            Err(err) => tracing::warn!(error = %err, "lookup of granted host failed"),
        }
    }
    false
}

/// Replaces `open-at` of WASI's filesystem with one that records denials:
/// a path that leads outside the granted folder, or a file opened for
/// writing in a folder granted read-only.
pub(super) fn watch_open_at(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut types = linker.instance(FILESYSTEM_TYPES)?;
    types.func_wrap_async(
        "[method]descriptor.open-at",
        |mut store: StoreContextMut<'_, CallState>,
         (dir, path_flags, path, open_flags, flags): (
            Resource<Descriptor>,
            PathFlags,
            String,
            OpenFlags,
            DescriptorFlags,
        )| {
            Box::new(async move {
                let state = store.data_mut();
                let consumer = state.context.consumer.clone();
                let writes = flags.contains(DescriptorFlags::WRITE)
                    || open_flags.intersects(OpenFlags::CREATE | OpenFlags::TRUNCATE);
                let attempt = format!(
                    "open `{path}` for {}",
                    if writes { "writing" } else { "reading" }
                );
                let mut view = state.filesystem();
                let opened = match view.open_at(dir, path_flags, path, open_flags, flags).await {
                    Ok(file) => Ok(file),
                    Err(err) => Err(view.convert_error_code(err)?),
                };
                if let Err(ErrorCode::NotPermitted | ErrorCode::Access | ErrorCode::ReadOnly) =
                    &opened
                {
                    record_denial(&consumer, Access::Filesystem, &attempt);
                }
                Ok((opened,))
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}
