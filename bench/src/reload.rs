//! Hot-reload latency: from the end of writing a new version of a handler
//! file to `switchyard_handler_reloads_total` counting it as loaded.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::figures::Figure;
use crate::suite::Suite;

const MANIFEST: &str = "bench/manifests/reload.toml";
/// The handlers folder of `bench/manifests/reload.toml`.
const HANDLERS: &str = "target/bench/reload";
const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(suite: &Suite) -> anyhow::Result<Vec<Figure>> {
    let noop = std::fs::read(suite.path("bench/guests/noop.wasm"))
        .context("cannot read bench/guests/noop.wasm")?;
    let dir = suite.path(HANDLERS);
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("noop.wasm");
    std::fs::write(&file, &noop)?;

    let (process, base) = suite
        .start_switchyard_ready("reload", MANIFEST, &[])
        .await?;
    let mut latencies = Vec::new();
    for run in 1..=suite.runs {
        let before = reloads(suite, &base).await?;
        let version = with_custom_section(&noop, run);
        let written = write_file(&file, &version)?;
        let latency = loop {
            if reloads(suite, &base).await? > before {
                break written.elapsed();
            }
            if written.elapsed() > RELOAD_TIMEOUT {
                bail!(
                    "switchyard did not reload `{}` within {RELOAD_TIMEOUT:?}",
                    file.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let ms = latency.as_secs_f64() * 1000.0;
        println!("  reload run {run}: swapped in {ms:.0} ms after the write");
        latencies.push(ms);
    }
    process.stop().await?;
    Ok(vec![Figure::alone("hot_reload_latency", &latencies, "ms")])
}

async fn reloads(suite: &Suite, base: &str) -> anyhow::Result<f64> {
    let labels = [("handler", "noop.wasm"), ("result", "ok")];
    suite
        .counter(base, "switchyard_handler_reloads_total", &labels)
        .await
}

/// Writes and closes the file, returning the time the write finished.
fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<Instant> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write `{}`", path.display()))?;
    Ok(Instant::now())
}

/// Returns the component with a custom section appended whose payload is
/// `version`, so each run writes bytes with a new digest that behave alike.
fn with_custom_section(component: &[u8], version: usize) -> Vec<u8> {
    let name = b"bench-version";
    let payload = version.to_le_bytes();
    // A custom section: id 0, the size, then the name as a length-prefixed
    // string and the payload. Both lengths fit in one LEB128 byte.
    let size = 1 + name.len() + payload.len();
    let mut out = component.to_vec();
    out.push(0);
    out.push(u8::try_from(size).expect("the section is under 128 bytes"));
    out.push(u8::try_from(name.len()).expect("the name is under 128 bytes"));
    out.extend_from_slice(name);
    out.extend_from_slice(&payload);
    out
}
