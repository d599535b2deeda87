//! Locates the `switchyard` executable, building it once per test binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::Context;
use serde_json::Value;

/// Environment variable that names a prebuilt `switchyard` executable and
/// skips the build.
pub const BINARY_VARIABLE: &str = "SWITCHYARD_BIN";

/// Returns the path of the `switchyard` executable.
///
/// The first call runs `cargo build -p switchyard` with the cargo that runs
/// the tests and takes the path from its JSON messages. `cargo test` has
/// released the build lock by the time test code runs, so this does not
/// deadlock. Panics with cargo's diagnostics when the build fails.
pub fn switchyard_binary() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| match std::env::var_os(BINARY_VARIABLE) {
        Some(path) => PathBuf::from(path),
        None => build().unwrap_or_else(|message| panic!("{message}")),
    })
}

fn build() -> Result<PathBuf, String> {
    let cargo = env!("CARGO");
    let mut command = Command::new(cargo);
    // Pin the compiler of the toolchain that built the tests. Without it,
    // rustup's `rustc` proxy honours a `rust-toolchain` file inside a
    // dependency's source folder when the test binary runs outside `cargo test`.
    let rustc = Path::new(cargo).with_file_name("rustc");
    if std::env::var_os("RUSTC").is_none() && rustc.is_file() {
        command.env("RUSTC", rustc);
    }
    let output = command
        .args([
            "build",
            "--package",
            "switchyard",
            "--bin",
            "switchyard",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(crate::repo_root())
        .output()
        .map_err(|err| format!("cannot run `{cargo} build`: {err}"))?;
    if !output.status.success() {
        return Err(format!(
            "`cargo build --package switchyard` failed with {}:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter(|message| message["target"]["name"] == "switchyard")
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| {
            format!(
                "`cargo build --package switchyard` succeeded but named no `switchyard` \
                 executable in its JSON messages; set {BINARY_VARIABLE} to the binary's path"
            )
        })
}

/// How a `switchyard plan` run ended.
#[derive(Debug)]
pub struct PlanOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `switchyard plan` on the manifests with extra environment
/// variables, such as `RABBITMQ_URL`, and waits for it to exit.
pub async fn run_plan(manifests: &[PathBuf], env: &[(&str, &str)]) -> anyhow::Result<PlanOutput> {
    let binary = tokio::task::spawn_blocking(switchyard_binary).await?;
    let output = tokio::process::Command::new(binary)
        .arg("plan")
        .args(manifests)
        .envs(env.iter().copied())
        .output()
        .await
        .with_context(|| format!("cannot run `{}`", binary.display()))?;
    let stdout = String::from_utf8(output.stdout)?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let code = output
        .status
        .code()
        .with_context(|| format!("switchyard plan was killed by a signal; stderr:\n{stderr}"))?;
    Ok(PlanOutput {
        code,
        stdout,
        stderr,
    })
}
