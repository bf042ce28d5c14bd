//! A real `redis-server` for the tests that share state through Redis:
//! started on a free loopback port with its data in a scratch directory
//! (appended to disk, so a restart keeps it; in memory only for the
//! benchmarks), killed by pid when dropped.
//!
//! `scripts/redis.sh` installs Debian's `redis-server` and sets
//! `MCPGW_REQUIRE_REDIS=1`; without it, a machine lacking the server skips
//! these tests with a message.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    /// Every write on disk before it is acknowledged (so a killed server
    /// comes back with it); off for benchmarks.
    durable: bool,
}

impl RedisServer {
    /// A fresh server; `None` (with a message) when `redis-server` is not
    /// installed and the run does not require it.
    pub fn start(tag: &str) -> Option<RedisServer> {
        Self::start_with(tag, true)
    }

    /// A server that keeps its data in memory only (benchmarks).
    pub fn start_volatile(tag: &str) -> Option<RedisServer> {
        Self::start_with(tag, false)
    }

    fn start_with(tag: &str, durable: bool) -> Option<RedisServer> {
        let bin = std::env::var("MCPGW_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let found = Command::new(&bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            if std::env::var("MCPGW_REQUIRE_REDIS").as_deref() == Ok("1") {
                panic!("redis-server is required (MCPGW_REQUIRE_REDIS=1) and was not found");
            }
            eprintln!(
                "SKIPPED: redis-server is not installed (scripts/redis.sh installs it and runs these tests)"
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("mcpgw-redis-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = RedisServer {
            child: None,
            port,
            dir,
            durable,
        };
        r.spawn();
        Some(r)
    }

    fn spawn(&mut self) {
        let child = Command::new(
            std::env::var("MCPGW_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into()),
        )
        .args(["--port", &self.port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--dir", self.dir.to_str().unwrap()])
        .args(["--save", ""])
        .args(if self.durable {
            ["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            ["--appendonly", "no", "--appendfsync", "no"]
        })
        .args(["--daemonize", "no", "--loglevel", "warning"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.ready() {
            assert!(Instant::now() < deadline, "redis-server did not come up");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether it answers `PING`.
    pub fn ready(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// The server's pid (0 once killed).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// `INFO <section>`, as text.
    pub fn info(&self, section: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.write_all(format!("INFO {section}\r\n").as_bytes())
            .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n") {
            s.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        let len: usize = std::str::from_utf8(&head[1..head.len() - 2])
            .unwrap()
            .parse()
            .unwrap();
        let mut body = vec![0u8; len + 2];
        s.read_exact(&mut body).unwrap();
        String::from_utf8_lossy(&body[..len]).into_owned()
    }

    /// How many times Redis ran `command` (from `INFO commandstats`).
    pub fn calls(&self, command: &str) -> u64 {
        let stats = self.info("commandstats");
        let prefix = format!("cmdstat_{command}:calls=");
        stats
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills it (SIGKILL) and waits for the process to go.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, with the data it had.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
