//! Start to ready of `switchyard up manifests/shop.toml` (three handlers)
//! with a warm compiled-component cache and its topology already declared:
//! the time from the process start to the first 200 from `/readyz`. Also its
//! resident memory once idle.

use std::time::{Duration, Instant};

use crate::figures::Figure;
use crate::process::{self, resident_mib};
use crate::suite::{START_TIMEOUT, Suite};

const MANIFEST: &str = "manifests/shop.toml";

pub async fn run(suite: &Suite) -> anyhow::Result<Vec<Figure>> {
    // The first start compiles the handlers into the cache and declares the
    // topology; it is not measured.
    let (process, _) = suite
        .start_switchyard_ready("startup", MANIFEST, &[])
        .await?;
    process.stop().await?;

    let mut ready_ms = Vec::new();
    let mut idle_mib = Vec::new();
    for run in 1..=suite.runs {
        let started = Instant::now();
        let (mut process, base) = suite.start_switchyard("startup", MANIFEST, &[])?;
        let poll = Duration::from_millis(5);
        let url = format!("{base}/readyz");
        let elapsed = process::wait_for_ok(
            &mut process,
            &suite.client,
            &url,
            started,
            poll,
            START_TIMEOUT,
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle = resident_mib(process.pid()).unwrap_or(f64::NAN);
        process.stop().await?;
        let ms = elapsed.as_secs_f64() * 1000.0;
        println!("  startup run {run}: ready in {ms:.0} ms, idle {idle:.1} MiB");
        ready_ms.push(ms);
        idle_mib.push(idle);
    }
    Ok(vec![
        Figure::alone("start_to_ready_three_handlers", &ready_ms, "ms"),
        Figure::alone("rss_idle_three_handlers", &idle_mib, "MiB"),
    ])
}
