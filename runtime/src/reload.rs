//! Handler loading and hot reload: watches the handler folders, compiles a
//! changed component off the hot path and swaps it in atomically. Events
//! already running finish on the version they started with. Also warns when
//! a manifest file changes on disk, because manifests apply only at start.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::handler::{HandlerHost, LoadedHandler};
use crate::manifest::SourceFile;
use crate::telemetry;

/// Gauge that names the loaded version of each handler file:
/// `switchyard_handler_info{handler="email.wasm",digest="<first 12 hex digits of the SHA-256>"} 1`.
/// The series of a replaced version drops to 0, so `== 1` selects the
/// versions serving now.
pub const HANDLER_INFO: &str = "switchyard_handler_info";

/// Quiet period after the last write before a file is read.
///
/// NOTE: a writer that pauses longer than this in the middle of a file gets
/// the partial file rejected (and counted) before the whole file loads.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// Hex digits of the content digest shown in logs and in [`HANDLER_INFO`].
const SHORT_DIGEST: usize = 12;

/// The loaded version of one handler file.
struct Slot {
    version: watch::Sender<Option<LoadedHandler>>,
    /// Lock held while the file is read, compiled and swapped in, so a slow
    /// load at start cannot replace a newer version that the watcher loaded.
    update: tokio::sync::Mutex<()>,
}

/// The current version of each handler file, by absolute path.
#[derive(Clone, Default)]
pub struct Slots {
    slots: Arc<HashMap<PathBuf, Slot>>,
}

impl Slots {
    /// Creates an empty slot for each path.
    pub fn new(paths: impl IntoIterator<Item = PathBuf>) -> Self {
        let slots = paths
            .into_iter()
            .map(|path| {
                let slot = Slot {
                    version: watch::channel(None).0,
                    update: tokio::sync::Mutex::new(()),
                };
                (absolute(&path), slot)
            })
            .collect();
        Slots {
            slots: Arc::new(slots),
        }
    }

    /// Returns a receiver that gets every version of the handler at `path`.
    pub fn subscribe(&self, path: &Path) -> Option<watch::Receiver<Option<LoadedHandler>>> {
        self.slots
            .get(&absolute(path))
            .map(|slot| slot.version.subscribe())
    }

    fn get(&self, path: &Path) -> Option<&Slot> {
        self.slots.get(path)
    }

    fn contains(&self, path: &Path) -> bool {
        self.slots.contains_key(path)
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(SHORT_DIGEST)]
}

/// Loads every handler that exists now. A missing or invalid file is logged
/// and leaves its slot empty, which holds back only its consumers.
pub async fn load_all(host: &HandlerHost, slots: &Slots) {
    metrics::describe_gauge!(
        HANDLER_INFO,
        "1 for the loaded version of each handler file, by content digest; 0 for replaced versions."
    );
    let loads = slots
        .slots
        .iter()
        .map(|(path, slot)| update(host, path, slot, Trigger::Start));
    futures::future::join_all(loads).await;
}

/// Reason for reading a handler file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trigger {
    /// The first load when switchyard starts.
    Start,
    /// The watcher saw the file change.
    Change,
}

/// Failure to load a handler file.
enum LoadError {
    Missing,
    Invalid(String),
}

/// Reads the handler file at `path` and swaps it into `slot` when it
/// compiled and its content changed. A missing or invalid file leaves the
/// slot as it was.
async fn update(host: &HandlerHost, path: &Path, slot: &Slot, trigger: Trigger) {
    let _update = slot.update.lock().await;
    let name = file_name(path);
    let current = slot.version.borrow().clone();

    match read_and_compile(host, path).await {
        Ok(loaded) => {
            if current
                .as_ref()
                .is_some_and(|current| current.digest == loaded.digest)
            {
                tracing::debug!(handler = %name,
                    "handler file changed on disk but its content did not");
                return;
            }
            record_loaded(&name, current.as_ref(), &loaded);
            slot.version.send_replace(Some(loaded));
        }
        Err(LoadError::Missing) => record_missing(&name, path, current.as_ref(), trigger),
        Err(LoadError::Invalid(reason)) => {
            record_rejected(&name, path, current.as_ref(), trigger, &reason);
        }
    }
}

/// Reads and compiles a handler file on a blocking thread, so compiling
/// never stalls event handling.
async fn read_and_compile(host: &HandlerHost, path: &Path) -> Result<LoadedHandler, LoadError> {
    let host = host.clone();
    let path = path.to_path_buf();
    let task = tokio::task::spawn_blocking(move || {
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(LoadError::Missing);
            }
            Err(err) => return Err(LoadError::Invalid(format!("cannot read the file: {err}"))),
        };
        host.load(&file_name(&path), &bytes)
            .map_err(LoadError::Invalid)
    });
    task.await
        .unwrap_or_else(|err| Err(LoadError::Invalid(format!("compile task failed: {err}"))))
}

/// Logs a new version, counts it as a reload unless it is the file's first,
/// and points [`HANDLER_INFO`] at it.
fn record_loaded(name: &str, previous: Option<&LoadedHandler>, loaded: &LoadedHandler) {
    let digest = short(&loaded.digest);
    match previous {
        Some(previous) => {
            tracing::info!(handler = %name, digest, previous_digest = short(&previous.digest),
                "handler reloaded");
            let labels = [("handler", name.to_owned()), ("result", "ok".to_owned())];
            metrics::counter!(telemetry::HANDLER_RELOADS, &labels).increment(1);
            metrics::gauge!(HANDLER_INFO, "handler" => name.to_owned(),
                "digest" => short(&previous.digest).to_owned())
            .set(0.0);
        }
        None => tracing::info!(handler = %name, digest, "handler loaded"),
    }
    metrics::gauge!(HANDLER_INFO, "handler" => name.to_owned(), "digest" => digest.to_owned())
        .set(1.0);
}

/// Logs a handler file that is not there. A deleted file is not a reload,
/// so nothing is counted.
fn record_missing(name: &str, path: &Path, current: Option<&LoadedHandler>, trigger: Trigger) {
    match (trigger, current) {
        (_, Some(current)) => {
            tracing::warn!(handler = %name, path = %path.display(), digest = short(&current.digest),
                "handler file deleted; the loaded version keeps serving");
        }
        (Trigger::Start, None) => {
            tracing::warn!(handler = %name, path = %path.display(),
                "handler file not found; its consumers wait until it appears");
        }
        (Trigger::Change, None) => {
            tracing::debug!(handler = %name, path = %path.display(),
                "handler file still missing; its consumers keep waiting");
        }
    }
}

/// Logs a file that failed to load and counts it as a rejected reload. A
/// failure at start is not a reload, so it is only logged.
fn record_rejected(
    name: &str,
    path: &Path,
    current: Option<&LoadedHandler>,
    trigger: Trigger,
    reason: &str,
) {
    match current {
        Some(current) => {
            tracing::warn!(handler = %name, path = %path.display(), %reason,
                digest = short(&current.digest),
                "handler rejected; the loaded version keeps serving");
        }
        None => {
            tracing::warn!(handler = %name, path = %path.display(), %reason,
                "handler rejected; its consumers wait for a valid file");
        }
    }
    if trigger == Trigger::Change {
        let labels = [
            ("handler", name.to_owned()),
            ("result", "rejected".to_owned()),
        ];
        metrics::counter!(telemetry::HANDLER_RELOADS, &labels).increment(1);
    }
}

/// A running folder watch, which stops when dropped.
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

/// Watches `dirs` (not recursively) and calls `on_change` with the changed
/// files that `is_watched` accepts, once the folders have been quiet for
/// [`DEBOUNCE`]. `kind` names the folders in log lines.
fn watch_folders<F, Fut>(
    kind: &'static str,
    dirs: &[PathBuf],
    is_watched: impl Fn(&Path) -> bool + Send + 'static,
    mut on_change: F,
) -> notify::Result<Watcher>
where
    F: FnMut(BTreeSet<PathBuf>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    use notify::Watcher as _;

    // Other files in the folders are dropped here, so that their writes
    // (a log file next to a manifest, say) do not hold back the debounce.
    let (sender, mut changes) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher =
        notify::recommended_watcher(move |result: notify::Result<notify::Event>| match result {
            Ok(event) if is_change(&event.kind) => {
                for path in event.paths.iter().map(|path| absolute(path)) {
                    if is_watched(&path) {
                        let _ = sender.send(path);
                    }
                }
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, folders = kind, "file watch failed"),
        })?;
    for dir in dirs {
        if let Err(err) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(folder = %dir.display(), error = %err, folders = kind,
                "cannot watch folder; changes to its files go unnoticed until a restart");
        }
    }

    let task = tokio::spawn(async move {
        while let Some(first) = changes.recv().await {
            // Collect every path that changes until the folder is quiet, so
            // one save (often several events) gives one reload.
            let mut pending = BTreeSet::from([first]);
            while let Ok(Some(path)) = tokio::time::timeout(DEBOUNCE, changes.recv()).await {
                pending.insert(path);
            }
            on_change(pending).await;
        }
    });
    Ok(Watcher {
        _watcher: watcher,
        _task: task,
    })
}

/// Starts watching `dirs` and reloads any slot whose file changes, once the
/// file has been quiet for a moment.
pub fn watch(host: HandlerHost, slots: Slots, dirs: &[PathBuf]) -> notify::Result<Watcher> {
    let is_watched = {
        let slots = slots.clone();
        move |path: &Path| slots.contains(path)
    };
    watch_folders("handler", dirs, is_watched, move |paths| {
        let host = host.clone();
        let slots = slots.clone();
        async move {
            for path in paths {
                if let Some(slot) = slots.get(&path) {
                    update(&host, &path, slot, Trigger::Change).await;
                }
            }
        }
    })
}

/// Content of a manifest file as the running system loaded it and as the
/// watcher last read it (`None` once deleted).
struct ManifestVersions {
    running: Vec<u8>,
    on_disk: Option<Vec<u8>>,
}

/// Watches the manifest files and logs a warning when one changes on disk,
/// because the running system keeps the manifests it started with until a
/// restart. Saving the same content again logs nothing.
pub fn watch_manifests(files: &[SourceFile]) -> notify::Result<Watcher> {
    let versions: HashMap<PathBuf, ManifestVersions> = files
        .iter()
        .map(|file| {
            let text = file.text.clone().into_bytes();
            let versions = ManifestVersions {
                running: text.clone(),
                on_disk: Some(text),
            };
            (absolute(&file.path), versions)
        })
        .collect();
    let mut dirs: Vec<PathBuf> = versions
        .keys()
        .filter_map(|path| path.parent().map(Path::to_path_buf))
        .collect();
    dirs.sort();
    dirs.dedup();

    let paths: BTreeSet<PathBuf> = versions.keys().cloned().collect();
    let versions = Arc::new(Mutex::new(versions));
    watch_folders(
        "manifest",
        &dirs,
        move |path| paths.contains(path),
        move |changed| {
            let versions = versions.clone();
            async move {
                for path in changed {
                    let content = match tokio::fs::read(&path).await {
                        Ok(content) => Some(content),
                        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
                        Err(err) => {
                            tracing::warn!(manifest = %path.display(), error = %err,
                            "cannot read changed manifest file");
                            continue;
                        }
                    };
                    let mut versions = versions.lock().unwrap_or_else(|poison| poison.into_inner());
                    if let Some(entry) = versions.get_mut(&path) {
                        report_manifest_change(&path, entry, content);
                    }
                }
            }
        },
    )
}

fn report_manifest_change(path: &Path, versions: &mut ManifestVersions, content: Option<Vec<u8>>) {
    if versions.on_disk == content {
        return;
    }
    match &content {
        None => tracing::warn!(manifest = %path.display(),
            "manifest file deleted; the running system keeps the version it started with"),
        Some(content) if *content == versions.running => tracing::info!(manifest = %path.display(),
            "manifest file matches the running version again; no restart needed"),
        Some(_) => tracing::warn!(manifest = %path.display(),
            "manifest file changed; restart switchyard to apply it, the running system keeps the version it started with"),
    }
    versions.on_disk = content;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Log output written by the test's subscriber.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn count(&self, text: &str) -> usize {
            String::from_utf8_lossy(&self.0.lock().unwrap())
                .lines()
                .filter(|line| line.contains(text))
                .count()
        }

        /// Waits up to five seconds until `text` is in `count` lines.
        async fn wait_for(&self, text: &str, count: usize) {
            for _ in 0..100 {
                if self.count(text) >= count {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let log = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
            panic!("no {count} log lines with {text:?} after 5 s; log:\n{log}");
        }
    }

    const CHANGED: &str = "manifest file changed; restart switchyard";

    #[tokio::test]
    async fn manifest_edit_warns_once() {
        let dir = std::env::temp_dir().join(format!(
            "switchyard-reload-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("shop.toml");
        let text = "[runtime]\nname = \"shop\"\n";
        std::fs::write(&path, text).unwrap();

        // The watcher's task runs on this thread, which the current-thread
        // runtime of `tokio::test` guarantees.
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _subscriber = tracing::subscriber::set_default(subscriber);
        let file = SourceFile {
            path: path.clone(),
            text: text.to_owned(),
        };
        let _watcher = watch_manifests(&[file]).unwrap();

        std::fs::write(&path, text).unwrap();
        tokio::time::sleep(DEBOUNCE * 4).await;
        assert_eq!(
            captured.count("manifest file"),
            0,
            "lines after saving the same content"
        );

        std::fs::write(&path, format!("{text}# an edit\n")).unwrap();
        captured.wait_for(CHANGED, 1).await;
        tokio::time::sleep(DEBOUNCE * 4).await;
        assert_eq!(captured.count(CHANGED), 1, "warnings after one edit");
        assert_eq!(
            captured.count("WARN"),
            1,
            "warnings of any kind after one edit"
        );

        std::fs::write(&path, text).unwrap();
        captured
            .wait_for("matches the running version again", 1)
            .await;

        std::fs::remove_file(&path).unwrap();
        captured.wait_for("manifest file deleted", 1).await;
        assert_eq!(
            captured.count(CHANGED),
            1,
            "warnings after undoing the edit and deleting"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
