//! Finding the binaries under test.
//!
//! The tests drive the real `kvnode`, `kvrouter` and `kvctl` executables, built beforehand by
//! `cargo build --workspace --bins` (cargo does not build other packages' binaries for an
//! integration test). `KV_BIN_DIR` overrides the location, e.g. to test a release build.

use std::path::PathBuf;

/// The directory holding the binaries: `KV_BIN_DIR`, else `$CARGO_TARGET_DIR/debug`, else the
/// workspace's `target/debug`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KV_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                // Relative target dirs are relative to the workspace root.
                workspace_root().join(dir)
            }
        }
        None => workspace_root().join("target"),
    };
    target.join("debug")
}

/// The workspace root: this crate lives in `<root>/tests`.
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// The path of binary `name`; panics with a hint when it has not been built.
pub fn bin_path(name: &str) -> PathBuf {
    let path = bin_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        panic!(
            "binary `{name}` not found at {}: run `cargo build --workspace --bins` first \
             (or set KV_BIN_DIR to the directory holding kvnode, kvrouter and kvctl)",
            path.display()
        );
    }
    path
}
