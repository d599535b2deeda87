//! Handler loading and hot reload: watches the handler folders, compiles a
//! changed component off the hot path and swaps it in atomically. Events
//! already running finish on the version they started with.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::handler::{HandlerHost, LoadedHandler};
use crate::telemetry;

/// Quiet period after the last write before a file is read.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// The current version of each handler file, by absolute path.
#[derive(Clone, Default)]
pub struct Slots {
    slots: Arc<HashMap<PathBuf, watch::Sender<Option<LoadedHandler>>>>,
}

impl Slots {
    /// Creates an empty slot for each path.
    pub fn new(paths: impl IntoIterator<Item = PathBuf>) -> Self {
        let slots = paths
            .into_iter()
            .map(|path| (absolute(&path), watch::channel(None).0))
            .collect();
        Slots {
            slots: Arc::new(slots),
        }
    }

    /// Returns a receiver that sees every version of the handler at `path`.
    pub fn subscribe(&self, path: &Path) -> Option<watch::Receiver<Option<LoadedHandler>>> {
        self.slots.get(&absolute(path)).map(watch::Sender::subscribe)
    }

    fn get(&self, path: &Path) -> Option<&watch::Sender<Option<LoadedHandler>>> {
        self.slots.get(path)
    }

    fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        self.slots.keys()
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Loads every handler that exists now. A missing or invalid file is logged
/// and leaves its slot empty, which holds back only its consumers.
pub async fn load_all(host: &HandlerHost, slots: &Slots) {
    let loads = slots.paths().map(|path| load_one(host, slots, path));
    futures::future::join_all(loads).await;
}

async fn load_one(host: &HandlerHost, slots: &Slots, path: &Path) {
    if !path.exists() {
        tracing::warn!(handler = %path.display(), "handler file not found; its consumers wait for it");
        return;
    }
    match compile(host, path).await {
        Ok(loaded) => {
            tracing::info!(handler = %loaded.name, digest = %short(&loaded.digest), "handler loaded");
            if let Some(slot) = slots.get(path) {
                slot.send_replace(Some(loaded));
            }
        }
        Err(reason) => {
            tracing::warn!(handler = %path.display(), %reason,
                "handler rejected; its consumers wait for a valid file");
        }
    }
}

async fn compile(host: &HandlerHost, path: &Path) -> Result<LoadedHandler, String> {
    let host = host.clone();
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || host.load_file(&path))
        .await
        .map_err(|err| format!("compile task failed: {err}"))?
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(12)]
}

/// Watches the handler folders until the returned value is dropped.
pub struct Watcher {
    _watcher: notify::RecommendedWatcher,
    _task: tokio::task::JoinHandle<()>,
}

/// Reports whether an event can mean new file contents. Reads are left out,
/// because reloading reads the file and would otherwise trigger itself.
fn is_change(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode};
    match kind {
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Any | EventKind::Other => false,
    }
}

/// Starts watching `dirs` and reloads any slot whose file changes, once the
/// file has been quiet for a moment.
pub fn watch(host: HandlerHost, slots: Slots, dirs: &[PathBuf]) -> notify::Result<Watcher> {
    use notify::Watcher as _;

    let (sender, mut changes) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |result: notify::Result<notify::Event>| {
        match result {
            Ok(event) if is_change(&event.kind) => {
                for path in event.paths {
                    let _ = sender.send(path);
                }
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "handler folder watch failed"),
        }
    })?;
    for dir in dirs {
        if let Err(err) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(folder = %dir.display(), error = %err, "cannot watch handler folder; hot reload is off for it");
        }
    }

    let task = tokio::spawn(async move {
        while let Some(first) = changes.recv().await {
            // Collect every path that changes until the folder is quiet, so
            // one save (often several events) gives one reload.
            let mut pending = std::collections::BTreeSet::from([absolute(&first)]);
            while let Ok(Some(path)) = tokio::time::timeout(DEBOUNCE, changes.recv()).await {
                pending.insert(absolute(&path));
            }
            for path in pending {
                if slots.get(&path).is_some() {
                    reload(&host, &slots, &path).await;
                }
            }
        }
    });
    Ok(Watcher {
        _watcher: watcher,
        _task: task,
    })
}

async fn reload(host: &HandlerHost, slots: &Slots, path: &Path) {
    let Some(slot) = slots.get(path) else {
        return;
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !path.exists() {
        tracing::warn!(handler = %name, "handler file deleted; the loaded version keeps serving");
        return;
    }
    let first_load = slot.borrow().is_none();
    match compile(host, path).await {
        Ok(loaded) => {
            let unchanged = slot
                .borrow()
                .as_ref()
                .is_some_and(|current| current.digest == loaded.digest);
            if unchanged {
                return;
            }
            tracing::info!(handler = %name, digest = %short(&loaded.digest), "handler reloaded");
            slot.send_replace(Some(loaded));
            if !first_load {
                metrics::counter!(telemetry::HANDLER_RELOADS, "handler" => name, "result" => "ok")
                    .increment(1);
            }
        }
        Err(reason) => {
            tracing::warn!(handler = %name, %reason, "handler rejected; the loaded version keeps serving");
            metrics::counter!(telemetry::HANDLER_RELOADS, "handler" => name, "result" => "rejected")
                .increment(1);
        }
    }
}
