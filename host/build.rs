//! Builds the guest plugins in `plugins/` for wasm32-wasip2, so every host build and test runs
//! against components compiled from the current sources (the example plugin is also embedded
//! in the binary for the demo). Outputs go to `<target>/plugins/wasm32-wasip2/release/`, whose
//! path is passed to the crate as `APPROVAL_HOST_PLUGINS_DIR`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("host/ sits in the workspace root")
        .to_path_buf();
    let target_root =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let target_dir = target_root.join("plugins");
    for watched in ["plugins/Cargo.toml", "plugins/Cargo.lock", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    // `sqlx::migrate!` embeds these; a migration added without touching a source file must
    // still rebuild the crate.
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("migrations").display()
    );
    let crates = std::fs::read_dir(root.join("plugins")).expect("plugins/ exists");
    for entry in crates
        .flatten()
        .filter(|e| e.path().join("Cargo.toml").exists())
    {
        for watched in ["Cargo.toml", "build.rs", "src", "wit"] {
            let path = entry.path().join(watched);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(root.join("plugins"))
        .args([
            "build",
            "--release",
            "--quiet",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir);
    // The outer build's settings (flags, wrappers, jobserver, target) are not the guests'.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let inherited =
            key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_NET_OFFLINE";
        if inherited || key.starts_with("RUSTC") || key.contains("RUSTFLAGS") {
            build.env_remove(key.as_ref());
        }
    }
    let status = build
        .status()
        .expect("could not run cargo to build the plugins");
    assert!(
        status.success(),
        "building plugins/ for wasm32-wasip2 failed (is the target installed? run \
         `rustup target add wasm32-wasip2`, or ./scripts/setup)"
    );
    let out = target_dir.join("wasm32-wasip2").join("release");
    println!(
        "cargo:rustc-env=APPROVAL_HOST_PLUGINS_DIR={}",
        out.display()
    );
}
