//! The compiled plugins, shared by the tests and the benchmarks (which include this file with
//! `#[path]`).

use std::path::Path;

/// The bytes of a plugin built from `plugins/` by the host's build script.
pub fn plugin(name: &str) -> Vec<u8> {
    let path = Path::new(env!("APPROVAL_HOST_PLUGINS_DIR")).join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The same component with a custom section appended: new bytes (a new sha256), same code.
pub fn variant(bytes: &[u8], tag: &str) -> Vec<u8> {
    let name = b"approval-host-test";
    let payload_len = 1 + name.len() + tag.len();
    let mut out = bytes.to_vec();
    out.push(0); // custom section id
    out.push(u8::try_from(payload_len).unwrap()); // LEB128 size (< 128)
    out.push(u8::try_from(name.len()).unwrap());
    out.extend_from_slice(name);
    out.extend_from_slice(tag.as_bytes());
    out
}
