//! SQLite's memory statistics, turned off for the binary.
//!
//! SQLite counts every allocation and free of every connection under one process-wide mutex
//! unless told not to (the bundled `libsqlite3-sys` leaves the counting on), and the host uses
//! SQLite from several threads at once: the readers on the tokio workers (`store::direct`) and
//! sqlx's connection threads, the audit writer's among them. The host never reads the counts
//! (no soft heap limit, no `sqlite3_memory_used`); off, a decision took about a seventh less of
//! the host's CPU and the peak rose 1.23× (docs/benchmarks/issue-7-rounds.md, round 9). The option must be set
//! before SQLite starts, so `main` calls this first. The library and its tests keep SQLite's
//! default.

use std::ffi::c_int;

use rusqlite::ffi;

/// Turns SQLite's memory statistics off for this process.
///
/// # Errors
/// SQLite's result code when it refused: it had started already in this process
/// (`SQLITE_MISUSE`). It then keeps counting, which works, only slower.
pub fn turn_off_statistics() -> Result<(), c_int> {
    // SAFETY: `SQLITE_CONFIG_MEMSTATUS` takes one `int`; SQLite checks that it has not started
    // (and answers `SQLITE_MISUSE` if it has) before it reads it.
    let rc = unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_MEMSTATUS, c_int::from(false)) };
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(rc)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn sqlite_works_with_its_statistics_off_and_counts_nothing() {
        // This is the binary's only test that touches SQLite, so SQLite has not started yet.
        turn_off_statistics().unwrap();
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (x INTEGER PRIMARY KEY, y TEXT); \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000) \
             INSERT INTO t SELECT i, printf('%0100d', i) FROM n;",
        )
        .unwrap();
        let sum: i64 = conn
            .query_row("SELECT sum(x) FROM t", [], |row| row.get(0))
            .unwrap();
        assert_eq!(sum, 500_500);
        // SAFETY: reads a counter.
        let counted = unsafe { ffi::sqlite3_memory_used() };
        assert_eq!(counted, 0, "SQLite counted its memory");
        // Too late a second time: SQLite has started.
        assert_eq!(turn_off_statistics(), Err(ffi::SQLITE_MISUSE));
    }
}
