//! A real `redis-server` for the tests that share state through Redis:
//! started on a free loopback port with its data in a scratch directory
//! (appended to disk, so a restart keeps it), killed by pid when dropped.
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
}

impl RedisServer {
    /// A fresh server; `None` (with a message) when `redis-server` is not
    /// installed and the run does not require it.
    pub fn start(tag: &str) -> Option<RedisServer> {
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
        .args(["--appendonly", "yes", "--appendfsync", "always"])
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
