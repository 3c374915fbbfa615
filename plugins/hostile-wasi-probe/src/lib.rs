//! Test plugin: `classify` tries every WASI capability a guest could reach and reports what the
//! sandbox allowed, on ONE stdout line:
//!
//! ```text
//! probe {"env_vars":0,"args":0,"read_root":"err",...,"insecure_random_u64":123}
//! ```
//!
//! Keys: `env_vars` and `args` (counts), `read_root`, `read_file`, `create_file`, `tcp`, `udp`,
//! `dns` (`"ok"` or `"err"`), `stdin_bytes` (bytes read from stdin before EOF or an error, at most
//! 1024), `wall_ms` (the wall clock, ms since the Unix epoch), `random_u64` (wasi:random/random)
//! and `insecure_random_u64` (wasi:random/insecure). It also writes `probe stderr` to stderr, then
//! answers `allow` with reason `probed`. The host test expects no environment, no filesystem or
//! network, the wall clock at the request time, and randomness seeded by the request id.

wit_bindgen::generate!({
    path: "../../wit",
    world: "risk-classifier",
});

use approval::risk::types::{ClassifyInput, Decision, PluginInfo, Rule, Verdict};
use exports::approval::risk::classifier::Guest;
use std::io::Read;
use std::net::ToSocketAddrs;
use std::time::{SystemTime, UNIX_EPOCH};

/// The most bytes read from stdin.
const STDIN_CAP: u64 = 1024;

fn ok_err<T, E>(result: Result<T, E>) -> &'static str {
    if result.is_ok() { "ok" } else { "err" }
}

struct Plugin;

impl Guest for Plugin {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "hostile-wasi-probe".to_string(),
            version: "0.1.0".to_string(),
            rules: vec![Rule {
                id: "hostile.rule".to_string(),
                description: "A rule of a hostile test plugin.".to_string(),
            }],
        }
    }

    fn classify(_input: ClassifyInput) -> Result<Verdict, String> {
        let env_vars = std::env::vars_os().count();
        let args = std::env::args_os().count();
        let read_root = ok_err(std::fs::read_dir("/"));
        let read_file = ok_err(std::fs::read("/etc/passwd"));
        let create_file = ok_err(std::fs::write("/tmp/probe", b"x"));
        let tcp = ok_err(std::net::TcpStream::connect("127.0.0.1:5432"));
        let udp = ok_err(std::net::UdpSocket::bind("0.0.0.0:0"));
        let dns = ok_err(("localhost", 80).to_socket_addrs());
        let mut stdin = Vec::new();
        // On an error, the bytes read before it are kept in the buffer.
        let _ = std::io::stdin().take(STDIN_CAP).read_to_end(&mut stdin);
        let stdin_bytes = stdin.len();
        let wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let random_u64 = wasip2::random::random::get_random_u64();
        let insecure_random_u64 = wasip2::random::insecure::get_insecure_random_u64();

        println!(
            "probe {{\"env_vars\":{env_vars},\"args\":{args},\"read_root\":\"{read_root}\",\
             \"read_file\":\"{read_file}\",\"create_file\":\"{create_file}\",\"tcp\":\"{tcp}\",\
             \"udp\":\"{udp}\",\"dns\":\"{dns}\",\"stdin_bytes\":{stdin_bytes},\
             \"wall_ms\":{wall_ms},\"random_u64\":{random_u64},\
             \"insecure_random_u64\":{insecure_random_u64}}}"
        );
        eprintln!("probe stderr");

        Ok(Verdict {
            decision: Decision::Allow,
            rule_id: String::new(),
            reason: "probed".to_string(),
            ttl_seconds: None,
            counter_offer: None,
        })
    }
}

export!(Plugin);
