//! One child process of a test: spawn, signal, wait, and always clean up.
//!
//! [`ChildProcess`] is the part `kvnode`, `kvrouter` and `kvctl dev` share: a program with fixed
//! arguments whose stdout and stderr go to one log file (appended to across restarts, each start
//! marked by a header line), plus the faults a test injects with signals: SIGKILL (crash),
//! SIGTERM (clean stop), SIGSTOP/SIGCONT (a hung process). Dropping it kills the process, and on
//! Linux each child also gets SIGKILL when the test process dies (`PR_SET_PDEATHSIG`), so a
//! test killed by a timeout leaks nothing.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::wait::wait_until;

/// A program the harness runs, restarts and kills.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log_path: PathBuf,
    child: Option<Child>,
    /// Stdout piped back to the harness instead of the log (for `kvctl dev`).
    pipe_stdout: bool,
    /// Run inside this network namespace (`ip netns exec NS program args...`).
    netns: Option<String>,
}

impl ChildProcess {
    /// Describes a process; nothing runs until [`ChildProcess::start`].
    pub fn new(name: &str, program: PathBuf, args: Vec<String>, log_path: PathBuf) -> Self {
        ChildProcess {
            name: name.to_string(),
            program,
            args,
            env: Vec::new(),
            log_path,
            child: None,
            pipe_stdout: false,
            netns: None,
        }
    }

    /// Runs the program inside network namespace `ns` on every start, through
    /// `ip netns exec`, which enters the namespace and then execs the program: the pid the
    /// harness signals is the program's own.
    pub fn netns(&mut self, ns: &str) -> &mut Self {
        self.netns = Some(ns.to_string());
        self
    }

    /// The network namespace the program runs in, if any.
    pub fn netns_name(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// Adds an environment variable for every start.
    pub fn env(&mut self, key: &str, value: &str) -> &mut Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Pipes stdout to the harness (see [`ChildProcess::take_stdout`]) instead of the log.
    pub fn pipe_stdout(&mut self) -> &mut Self {
        self.pipe_stdout = true;
        self
    }

    /// The name used in logs and messages (`node1`, `router`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where stdout and stderr go.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The arguments the program runs with.
    /// Adds arguments for the next start.
    pub fn push_args(&mut self, extra: impl IntoIterator<Item = String>) {
        self.args.extend(extra);
    }

    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Starts the process; fails if it is already running.
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            anyhow::bail!("{} is already running", self.name);
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        let netns = self
            .netns
            .as_deref()
            .map(|ns| format!("ip netns exec {ns} "))
            .unwrap_or_default();
        writeln!(
            log,
            "==== harness: starting {netns}{} {}",
            self.program.display(),
            self.args.join(" ")
        )?;
        let stdout = if self.pipe_stdout {
            Stdio::piped()
        } else {
            Stdio::from(log.try_clone()?)
        };
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(&self.program);
                cmd
            }
            None => Command::new(&self.program),
        };
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::from(log));
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        // Plain logs: no ANSI colour codes in files people grep.
        cmd.env("NO_COLOR", "1");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        set_parent_death_signal(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {} ({})", self.name, self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// The child's stdout, when started with [`ChildProcess::pipe_stdout`] (once per start).
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.as_mut()?.stdout.take()
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the process is running (a stopped process counts as running).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(child) => matches!(child.try_wait(), Ok(None)),
        }
    }

    /// The exit status, once the process has exited (`None` while running or never started).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Sends `signal` to the running process.
    pub fn signal(&mut self, signal: Signal) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .with_context(|| format!("{} is not running", self.name))?;
        kill(Pid::from_raw(pid as i32), signal)
            .with_context(|| format!("sending {signal} to {}", self.name))?;
        Ok(())
    }

    /// SIGKILL: a crash. Waits until the process is gone; a no-op when it is not running.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.note(&format!("==== harness: SIGKILL {}", self.name));
        if let Some(mut child) = self.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                // SIGKILL also ends a SIGSTOPped process.
                let _ = child.kill();
            }
            child
                .wait()
                .with_context(|| format!("waiting for {}", self.name))?;
        }
        Ok(())
    }

    /// SIGTERM, then waits up to `timeout` for the exit; SIGKILL after that. Returns the exit
    /// status when the process stopped by itself.
    pub async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        self.stop_with(Signal::SIGTERM, timeout).await
    }

    /// Sends `signal` and waits up to `timeout` for the exit, SIGKILL after that. Returns the
    /// exit status when the process stopped by itself within the timeout.
    pub async fn stop_with(
        &mut self,
        signal: Signal,
        timeout: Duration,
    ) -> anyhow::Result<Option<ExitStatus>> {
        if !self.is_running() {
            return Ok(self
                .child
                .take()
                .and_then(|mut c| c.try_wait().ok().flatten()));
        }
        self.note(&format!("==== harness: {signal} {}", self.name));
        self.signal(signal)?;
        let what = format!("{} exits after {signal}", self.name);
        let status = wait_until(timeout, &what, || {
            let status = self.exit_status();
            async move { status }
        })
        .await;
        match status {
            Ok(status) => {
                self.child = None;
                Ok(Some(status))
            }
            Err(_) => {
                self.kill()?;
                Ok(None)
            }
        }
    }

    /// SIGSTOP: the process hangs, its sockets stay open.
    pub fn pause(&mut self) -> anyhow::Result<()> {
        self.note(&format!("==== harness: SIGSTOP {}", self.name));
        self.signal(Signal::SIGSTOP)
    }

    /// SIGCONT after [`ChildProcess::pause`].
    pub fn resume(&mut self) -> anyhow::Result<()> {
        self.note(&format!("==== harness: SIGCONT {}", self.name));
        self.signal(Signal::SIGCONT)
    }

    /// Appends a harness line to the log, so a reader sees when faults were injected.
    fn note(&self, line: &str) {
        if let Ok(mut f) = OpenOptions::new().append(true).open(&self.log_path) {
            let _ = writeln!(f, "{line}");
        }
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The last `lines` lines of a file, or a note that it cannot be read.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Asks the kernel to SIGKILL the child when the thread that spawned it dies: the harness
/// spawns from the test's runtime threads, which live as long as the test.
#[cfg(target_os = "linux")]
fn set_parent_death_signal(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only makes one
    // async-signal-safe system call (prctl).
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn set_parent_death_signal(_cmd: &mut Command) {}

/// Pids of the processes whose command line mentions `needle` (such as a test's temp dir),
/// read from `/proc`; empty elsewhere. Finds children that a process under test started
/// itself (as `kvctl dev` does), wherever they were reparented.
pub fn pids_mentioning(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|raw| {
                    let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
                    cmdline.contains(needle)
                })
                .unwrap_or(false)
        })
        .filter(|pid| !is_zombie(*pid))
        .collect()
}

/// Whether `/proc/PID/stat` says the process is a zombie (exited, not yet reaped).
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // "PID (COMM) STATE ..."; COMM may hold spaces and parens.
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.split_whitespace().next().map(|s| s == "Z")
        })
        .unwrap_or(false)
}

/// SIGKILLs every process whose command line mentions `needle`; a cleanup backstop.
pub fn kill_mentioning(needle: &str) {
    for pid in pids_mentioning(needle) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper(dir: &Path) -> ChildProcess {
        ChildProcess::new(
            "sleeper",
            PathBuf::from("sleep"),
            vec!["600".into()],
            dir.join("sleeper.log"),
        )
    }

    #[tokio::test]
    async fn signals_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = sleeper(dir.path());
        assert!(!p.is_running());
        p.start().unwrap();
        assert!(p.is_running());
        assert!(p.start().is_err(), "double start");
        p.pause().unwrap();
        assert!(p.is_running(), "a stopped process still runs");
        p.resume().unwrap();
        p.kill().unwrap();
        assert!(!p.is_running());
        p.kill().unwrap();
        p.start().unwrap();
        let status = p.terminate(Duration::from_secs(10)).await.unwrap();
        assert!(status.is_some(), "sleep stops on SIGTERM");
        assert!(!p.is_running());
        let log = std::fs::read_to_string(p.log_path()).unwrap();
        assert_eq!(log.matches("==== harness: starting").count(), 2, "{log}");
    }

    #[tokio::test]
    async fn drop_kills_the_child() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = sleeper(dir.path());
        p.start().unwrap();
        let pid = Pid::from_raw(p.pid().unwrap() as i32);
        drop(p);
        // Reaped by drop: the pid no longer exists.
        assert!(kill(pid, None).is_err());
    }
}
