//! A child server process with fault injection.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::process::{Child, Command};

/// A running child process; killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct Process {
    child: Option<Child>,
    name: String,
}

impl Process {
    /// Spawns `cmd` (stdout/stderr as configured by the caller).
    pub fn spawn(name: &str, cmd: &mut Command) -> anyhow::Result<Self> {
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {name}: {e}"))?;
        Ok(Process {
            child: Some(child),
            name: name.to_string(),
        })
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        kill(Pid::from_raw(self.pid() as i32), sig)
            .map_err(|e| anyhow::anyhow!("{sig} to {}: {e}", self.name))
    }

    /// SIGSTOP: the process freezes, keeps its sockets open, answers nothing.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGSTOP)
    }

    /// SIGCONT after [`Self::pause`].
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGCONT)
    }

    /// kill -9 and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait up to `grace` before kill -9.
    pub fn terminate(&mut self, grace: std::time::Duration) {
        if let Some(child) = self.child.as_mut() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = std::time::Instant::now() + grace;
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None;
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        self.kill();
    }

    /// `Some(exit code)` once the child has exited (`Some(None)` when killed by a signal);
    /// `None` while it runs.
    pub fn try_exit_code(&mut self) -> Option<Option<i32>> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.code()),
            _ => None,
        }
    }

    /// True when this process itself holds a listening TCP socket on `port` (read from
    /// `/proc`): a server that could not bind a port another process took is told apart
    /// from the one answering there.
    pub fn listens_on(&self, port: u16) -> bool {
        let pid = self.pid();
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return false;
        };
        let inodes: std::collections::HashSet<String> = fds
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .filter_map(|l| {
                let l = l.to_string_lossy().into_owned();
                l.strip_prefix("socket:[")
                    .and_then(|r| r.strip_suffix(']'))
                    .map(String::from)
            })
            .collect();
        let want = format!("{port:04X}");
        ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
            std::fs::read_to_string(table).is_ok_and(|text| {
                text.lines().skip(1).any(|line| {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    // local_address is HEXIP:HEXPORT; st 0A is LISTEN; inode is field 9.
                    f.len() > 9
                        && f[3] == "0A"
                        && f[1].rsplit(':').next() == Some(want.as_str())
                        && inodes.contains(f[9])
                })
            })
        })
    }

    /// True while the child has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
