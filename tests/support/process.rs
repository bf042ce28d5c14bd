//! The `mcp-gateway` binary as a child process: started with flags, its URL
//! read from the first line of stdout, its log (stderr) kept for the test to
//! search, and stopped (by pid) when dropped.
// Each test crate uses a different subset.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct GatewayProcess {
    child: Child,
    pub url: String,
    log: Arc<Mutex<String>>,
    stdout: BufReader<std::process::ChildStdout>,
}

impl GatewayProcess {
    /// Starts the binary with `args` and waits for its "listening" line.
    pub fn start(args: &[&str]) -> GatewayProcess {
        Self::start_with_env(args, &[])
    }

    /// Like [`start`](Self::start), with environment variables added.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> GatewayProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mcp-gateway"))
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]);
                eprint!("{text}");
                sink.lock().unwrap().push_str(&text);
            }
        });
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).unwrap();
        let url = match line.trim().strip_prefix("mcp-gateway listening on ") {
            Some(u) => u.to_owned(),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "unexpected first line: {line:?}; log: {}",
                    log.lock().unwrap()
                );
            }
        };
        GatewayProcess {
            child,
            url,
            log,
            stdout,
        }
    }

    /// The next line the process prints on stdout.
    pub fn next_line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().to_owned()
    }

    /// Sends a signal (`HUP`, `TERM`, …).
    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status();
    }

    /// What the process logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits (up to 20 s) until the log holds `needle`.
    pub fn wait_for_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Waits (up to 20 s) until the log holds `needle` `n` times.
    pub fn wait_for_count(&self, needle: &str, n: usize) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.log().matches(needle).count() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
    }

    /// Waits (up to `limit`) for the process to exit; its status if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scratch directory, removed when dropped.
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("mcpgw-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
    pub fn file(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The pids whose parent is `pid` (zombies left out): a gateway's children.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // pid (comm) state ppid …: comm may hold spaces, so read after ')'.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let mut f = rest.split(' ');
        let state = f.next();
        if f.next().and_then(|s| s.parse::<u32>().ok()) == Some(pid) && state != Some("Z") {
            out.push(p);
        }
    }
    out
}
