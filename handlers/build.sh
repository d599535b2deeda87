#!/usr/bin/env bash
# Builds every handler crate into a component at handlers/<name>.wasm and the
# chaos test guest into tests/guests/chaos.wasm.
#
# Usage: handlers/build.sh [--check]
#   --check  build into a temporary directory and compare with the committed
#            components instead of replacing them; exit 1 on a difference.
#
# Environment:
#   SWITCHYARD_WASM_TARGET_DIR  cargo target directory
#                               (default: ~/.cache/switchyard/wasm-target)
#   WASM_TOOLS                  wasm-tools binary (default: wasm-tools on PATH,
#                               then ~/.cargo/bin/wasm-tools)
set -euo pipefail

readonly TARGET=wasm32-unknown-unknown
readonly WASM_TOOLS_VERSION=1.263

log() {
    printf 'build.sh: %s\n' "$*" >&2
}

die() {
    printf 'build.sh: error: %s\n' "$*" >&2
    exit 1
}

check_mode=false
case "${1:-}" in
    "") ;;
    --check) check_mode=true ;;
    -h | --help)
        sed -n '2,13s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
        exit 0
        ;;
    *) die "unknown argument '$1'. Usage: handlers/build.sh [--check]" ;;
esac

handlers_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo_root=$(dirname "$handlers_dir")
cargo_home=${CARGO_HOME:-$HOME/.cargo}
# The target directory lives outside the repository because the runtime
# watches handlers/ for changes, and so that a fresh clone reuses the cache.
target_dir=${SWITCHYARD_WASM_TARGET_DIR:-$HOME/.cache/switchyard/wasm-target}

# Every directory under handlers/ with a Cargo.toml is a handler whose crate
# name is the directory name. The chaos guest is a member of the same cargo
# workspace (see handlers/Cargo.toml) but its component goes to tests/guests/.
guests=()
outputs=()
for manifest in "$handlers_dir"/*/Cargo.toml; do
    name=$(basename "$(dirname "$manifest")")
    guests+=("$name")
    outputs+=("handlers/$name.wasm")
done
guests+=(chaos)
outputs+=(tests/guests/chaos.wasm)

# wasm-tools is checked first so that a missing binary fails before the
# minutes-long cargo build.
wasm_tools=${WASM_TOOLS:-}
if [[ -n $wasm_tools ]]; then
    command -v "$wasm_tools" >/dev/null ||
        die "WASM_TOOLS is set to '$wasm_tools', which is not an executable. Unset it or point it to wasm-tools 1.263"
elif command -v wasm-tools >/dev/null; then
    wasm_tools=$(command -v wasm-tools)
elif [[ -x $cargo_home/bin/wasm-tools ]]; then
    wasm_tools=$cargo_home/bin/wasm-tools
else
    die "wasm-tools not found on PATH or in $cargo_home/bin. Install it with: cargo install --locked wasm-tools@1.263.0"
fi
wasm_tools_version=$("$wasm_tools" --version | awk '{print $2}')
if [[ $wasm_tools_version != "$WASM_TOOLS_VERSION".* ]]; then
    log "warning: $wasm_tools is version $wasm_tools_version, but the committed components were made with $WASM_TOOLS_VERSION, so the bytes may differ. Install that version with: cargo install --locked wasm-tools@1.263.0"
fi

# Remapping every absolute path that can reach the output (panic locations,
# file!()) makes the bytes independent of where the repository, the cargo
# registry and the target directory are. rustc applies the last matching
# --remap-path-prefix, so the more specific target directory comes after the
# repository root. CARGO_ENCODED_RUSTFLAGS keeps paths with spaces intact and
# replaces RUSTFLAGS and build.rustflags, which would otherwise change the output.
rustflags=(
    "--remap-path-prefix=$repo_root=/switchyard"
    "--remap-path-prefix=$cargo_home/registry/src=/cargo/registry/src"
    "--remap-path-prefix=$cargo_home/git/checkouts=/cargo/git/checkouts"
    "--remap-path-prefix=$target_dir=/target"
)

# Prefer a rustup toolchain with the wasm32 standard library installed. Else
# use Debian's rustc-web packages. They ship no wasm32 standard library, so
# -Zbuild-std compiles it from the rust-web-src sources, and RUSTC_BOOTSTRAP=1
# allows that unstable flag on a stable compiler.
if command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
    toolchain="rustup ($(rustc --version))"
    cargo_build=(cargo build)
elif [[ -x /usr/bin/rustc && -x /usr/bin/cargo ]]; then
    sysroot=$(/usr/bin/rustc --print sysroot)
    rust_src=$sysroot/lib/rustlib/src/rust
    [[ -d $rust_src/library/std ]] ||
        die "the standard library sources are missing from $rust_src. Install them with: apt-get install rust-web-src"
    [[ -x /usr/bin/rust-lld ]] ||
        die "the wasm linker /usr/bin/rust-lld is missing. Install it with: apt-get install lld-22"
    commit_hash=$(/usr/bin/rustc -vV | awk '/^commit-hash:/ {print $2}')
    rustflags+=("--remap-path-prefix=$rust_src=/rustc/$commit_hash")
    toolchain="Debian /usr/bin ($(/usr/bin/rustc --version)) with -Zbuild-std"
    cargo_build=(env RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 /usr/bin/cargo build -Zbuild-std=std,panic_abort)
else
    die "no Rust toolchain for $TARGET found. Install one of:
  - with rustup: rustup target add $TARGET
  - on Debian 12 without the rustup target: apt-get install rustc-web cargo-web rust-web-src lld-22"
fi

if $check_mode; then
    out_root=$(mktemp -d)
    trap 'rm -rf "$out_root"' EXIT
else
    out_root=$repo_root
fi

log "step 1/2: compiling ${guests[*]} for $TARGET with $toolchain into $target_dir"
start_seconds=$SECONDS
package_args=()
for name in "${guests[@]}"; do
    package_args+=(-p "$name")
done
(
    cd "$handlers_dir"
    CARGO_ENCODED_RUSTFLAGS=$(IFS=$'\x1f' && echo "${rustflags[*]}") \
        CARGO_TARGET_DIR=$target_dir \
        "${cargo_build[@]}" --release --locked --target "$TARGET" "${package_args[@]}"
)
log "compiled in $((SECONDS - start_seconds)) s"

log "step 2/2: making components with $wasm_tools ($wasm_tools_version)"
for i in "${!guests[@]}"; do
    name=${guests[$i]}
    output=$out_root/${outputs[$i]}
    core_module=$target_dir/$TARGET/release/${name//-/_}.wasm
    log "  $name: $core_module -> ${outputs[$i]}"
    mkdir -p "$(dirname "$output")"
    # The runtime hot-reloads handlers/*.wasm, so write beside the output
    # under a name without the .wasm suffix and rename it into place. An
    # unchanged component is left untouched to spare a reload.
    partial=$(dirname "$output")/.$(basename "$output").partial
    if ! "$wasm_tools" component new "$core_module" -o "$partial"; then
        rm -f "$partial"
        die "wasm-tools component new failed on $core_module"
    fi
    if cmp -s "$partial" "$output"; then
        rm "$partial"
    else
        mv "$partial" "$output"
    fi
done

if ! $check_mode; then
    for output in "${outputs[@]}"; do
        log "  $output: $(stat -c %s "$repo_root/$output") bytes"
    done
    log "done in $((SECONDS - start_seconds)) s"
    exit 0
fi

stale=()
for output in "${outputs[@]}"; do
    if ! cmp -s "$out_root/$output" "$repo_root/$output"; then
        stale+=("$output")
    fi
done
if ((${#stale[@]} > 0)); then
    log "these committed components differ from a fresh build with $toolchain and wasm-tools $wasm_tools_version (or are missing):"
    for output in "${stale[@]}"; do
        log "  $output"
    done
    log "refresh them with handlers/build.sh and commit the result"
    exit 1
fi
log "all ${#outputs[@]} committed components match a fresh build"
