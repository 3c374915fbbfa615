//! The reliability suites' two sizes and their reports. `cargo test` runs the short size;
//! `scripts/reliability` sets `APPROVAL_HOST_RELIABILITY=long` and collects every suite's report
//! into RELIABILITY.md.

use std::path::PathBuf;

/// Whether this is the long run of `scripts/reliability`.
pub fn long() -> bool {
    std::env::var("APPROVAL_HOST_RELIABILITY").as_deref() == Ok("long")
}

/// `short` in `cargo test`, `long` in the long run.
pub fn scale(short: u64, long_size: u64) -> u64 {
    if long() { long_size } else { short }
}

/// Where the suites write their reports: `target/reliability-report/`.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(|target| target.join("reliability-report"))
        .unwrap_or_else(|| PathBuf::from("target/reliability-report"))
}

/// Writes `markdown` (a few lines and a table: what was done, how often, what was found) as the
/// report of `section` (a file name such as `crash-sqlite`). Every run writes it; the long run's
/// reports are the ones RELIABILITY.md quotes, and each says which size it was.
pub fn write(section: &str, markdown: &str) {
    let dir = dir();
    std::fs::create_dir_all(&dir).expect("create target/reliability-report");
    let size = if long() { "long" } else { "short" };
    let text = format!("<!-- size: {size} -->\n{}\n", markdown.trim_end());
    std::fs::write(dir.join(format!("{section}.md")), text).expect("write a reliability report");
}
