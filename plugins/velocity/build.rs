//! Link settings for the wasm32 `no_std` build (see "Why `no_std`" in `src/lib.rs`). Nothing
//! changes for native builds (`cargo test`) or with the `std` feature.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let wasm = std::env::var("CARGO_CFG_TARGET_ARCH").is_ok_and(|arch| arch == "wasm32");
    let std = std::env::var_os("CARGO_FEATURE_STD").is_some();
    if wasm && !std {
        // A 64 KiB stack instead of Rust's default 1 MiB: the rules need a few KiB, and a small
        // memory is cheap to set up and to reset after each call.
        println!("cargo:rustc-link-arg=-zstack-size=65536");
        // `memcmp`, `memcpy` and friends, which `std` would have linked: wasi-libc's, pure
        // functions that import nothing.
        println!("cargo:rustc-link-lib=c");
    }
}
