//! The stdio transport: a child process speaking newline-delimited
//! JSON-RPC on stdin / stdout, its stderr lines logged.
//!
//! The child runs in a process group of its own, so that stopping it
//! reaches what it started (`npx` starts `node`): stdin is closed, then
//! the group gets `SIGTERM`, then `SIGKILL` after the grace period. Its
//! exit is always waited for (no zombie), and a child that exits on its
//! own takes its group with it (no orphan).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

use super::peer::{Peer, PeerIo, PeerLimits};

/// How to start a stdio server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StdioCommand {
    /// The program and its arguments (no shell runs them).
    pub command: Vec<String>,
    /// Variables set for the child.
    pub env: BTreeMap<String, String>,
    /// Whether the child starts from the gateway's environment (else from
    /// an empty one, plus `PATH` and `HOME` when `env` does not set them).
    pub inherit_env: bool,
    /// Working directory (the gateway's when unset).
    pub cwd: Option<PathBuf>,
}

impl StdioCommand {
    /// `command` (program first), with a cleared environment.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(command: I) -> Self {
        StdioCommand {
            command: command.into_iter().map(Into::into).collect(),
            env: BTreeMap::new(),
            inherit_env: false,
            cwd: None,
        }
    }

    /// Splits `line` as a POSIX shell would split words (quotes,
    /// backslashes), without running a shell: `--stdio "npx -y pkg"`.
    pub fn parse(line: &str) -> Result<Self, String> {
        match shlex::split(line) {
            Some(words) if !words.is_empty() => Ok(StdioCommand::new(words)),
            Some(_) => Err("the command is empty".into()),
            None => Err(format!(
                "cannot split {line:?} into words (an unclosed quote?)"
            )),
        }
    }

    /// Sets a variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Starts from the gateway's environment.
    pub fn inherit_env(mut self, yes: bool) -> Self {
        self.inherit_env = yes;
        self
    }

    /// Sets the working directory.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    fn command(&self) -> std::io::Result<Command> {
        let Some((program, args)) = self.command.split_first() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "empty command",
            ));
        };
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if !self.inherit_env {
            cmd.env_clear();
            // A program is found, and a tool like npx finds its cache,
            // only with these; `env` may set them otherwise.
            for key in ["PATH", "HOME"] {
                if let Ok(v) = std::env::var(key) {
                    cmd.env(key, v);
                }
            }
        }
        cmd.envs(&self.env);
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        Ok(cmd)
    }
}

/// Settings of the stdio transport.
#[derive(Debug, Clone)]
pub(crate) struct StdioLimits {
    /// The longest line the child may write.
    pub(crate) max_line: usize,
    /// How long stopping waits after closing stdin, and after `SIGTERM`.
    pub(crate) grace: Duration,
}

/// Starts `cmd` and a peer over it. The child's pid is returned for the
/// logs and the tests.
pub(crate) fn spawn(
    backend: Arc<str>,
    cmd: &StdioCommand,
    peer_limits: PeerLimits,
    limits: StdioLimits,
) -> std::io::Result<(Arc<Peer>, u32)> {
    let mut child = cmd.command()?.spawn()?;
    let pid = child.id().unwrap_or(0);
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(std::io::Error::other("the child's pipes are missing"));
    };
    let (peer, io) = Peer::new(backend.clone(), peer_limits);
    tracing::info!(backend = %backend, pid, "started backend process");
    let PeerIo { out, stop } = io;
    tokio::spawn(write_lines(stdin, out, stop.clone()));
    tokio::spawn(read_lines(peer.clone(), stdout, limits.max_line));
    tokio::spawn(log_stderr(backend.clone(), pid, stderr));
    tokio::spawn(watch_child(peer.clone(), child, pid, stop, limits.grace));
    Ok((peer, pid))
}

async fn write_lines(
    mut stdin: tokio::process::ChildStdin,
    mut out: tokio::sync::mpsc::Receiver<Bytes>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let line = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            l = out.recv() => match l { Some(l) => l, None => break },
        };
        if stdin.write_all(&line).await.is_err() || stdin.write_all(b"\n").await.is_err() {
            break;
        }
        // Write what else is queued before flushing.
        while let Ok(more) = out.try_recv() {
            if stdin.write_all(&more).await.is_err() || stdin.write_all(b"\n").await.is_err() {
                return;
            }
        }
        if stdin.flush().await.is_err() {
            break;
        }
    }
    // Dropping stdin closes it: the child's cue to exit.
}

async fn read_lines(peer: Arc<Peer>, stdout: ChildStdout, max_line: usize) {
    let mut reader = BufReader::with_capacity(64 * 1024, stdout);
    let mut line = BytesMut::new();
    while let Ok(buf) = reader.fill_buf().await {
        if buf.is_empty() {
            break;
        }
        let (take, end) = match memchr::memchr(b'\n', buf) {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if line.len() + take > max_line + 1 {
            tracing::warn!(backend = %peer.backend(), max_line, "the backend wrote a line over the bound: it is stopped");
            peer.ended(&format!("it wrote a line over {max_line} bytes"));
            peer.stop();
            // Keep reading (and dropping) so the child never blocks on a
            // full pipe while it is being stopped.
            let mut sink = [0u8; 8192];
            let mut rest = reader;
            while matches!(rest.read(&mut sink).await, Ok(n) if n > 0) {}
            return;
        }
        line.extend_from_slice(&buf[..take]);
        reader.consume(take);
        if end {
            let mut l = line.split().freeze();
            while l.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                l.truncate(l.len() - 1);
            }
            if !l.iter().all(u8::is_ascii_whitespace) {
                peer.inbound(l).await;
            }
        }
    }
}

async fn log_stderr(backend: Arc<str>, pid: u32, stderr: tokio::process::ChildStderr) {
    let mut lines = BufReader::new(stderr).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(l)) => {
                tracing::info!(target: "mcp_gateway::backend_stderr", backend = %backend, pid, "{l}")
            }
            Ok(None) => break,
            // A line that is not UTF-8, or one so long it is not a log.
            Err(_) => continue,
        }
    }
}

/// Waits for the child; stops it when asked. Whichever way it goes, the
/// child is reaped, its process group is killed, and the peer ends.
async fn watch_child(
    peer: Arc<Peer>,
    mut child: Child,
    pid: u32,
    mut stop: tokio::sync::watch::Receiver<bool>,
    grace: Duration,
) {
    let status = tokio::select! {
        s = child.wait() => s,
        _ = async { let _ = stop.wait_for(|s| *s).await; } => {
            tracing::debug!(pid, "stopping the backend process");
            // stdin is closed by the writer on the same signal.
            match tokio::time::timeout(grace, child.wait()).await {
                Ok(s) => s,
                Err(_) => {
                    signal_group(pid, nix::sys::signal::Signal::SIGTERM);
                    match tokio::time::timeout(grace, child.wait()).await {
                        Ok(s) => s,
                        Err(_) => {
                            signal_group(pid, nix::sys::signal::Signal::SIGKILL);
                            child.wait().await
                        }
                    }
                }
            }
        }
    };
    // Whatever the child started goes with it.
    signal_group(pid, nix::sys::signal::Signal::SIGKILL);
    let why = match &status {
        Ok(s) => s.to_string(),
        Err(e) => format!("cannot wait for it: {e}"),
    };
    let asked = *stop.borrow_and_update();
    if asked {
        tracing::info!(backend = %peer.backend(), pid, status = %why, "backend process stopped");
    } else {
        tracing::warn!(backend = %peer.backend(), pid, status = %why, "backend process exited");
    }
    peer.ended(&if asked {
        format!("stopped, {why}")
    } else {
        why
    });
}

fn signal_group(pid: u32, sig: nix::sys::signal::Signal) {
    if pid == 0 {
        return;
    }
    let pgid = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::killpg(pgid, sig);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_a_shell() {
        let c = StdioCommand::parse(r#"npx -y "@scope/pkg" 'a b' c\ d"#).unwrap();
        assert_eq!(c.command, ["npx", "-y", "@scope/pkg", "a b", "c d"]);
        assert!(StdioCommand::parse("").is_err());
        assert!(StdioCommand::parse("a 'b").is_err());
    }
}
