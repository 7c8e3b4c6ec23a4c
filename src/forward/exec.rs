//! The `exec` action: runs a program (no shell) per message.
//!
//! The program gets an empty environment except `PATH=/usr/local/bin:/usr/bin:/bin` and one
//! variable per message field, named `WX_<FieldName>` with the WeChat name (`WX_Content`,
//! `WX_FromUserName`, `WX_MsgType`, `WX_Event`, nested ones by their own name, e.g.
//! `WX_ScanResult`; the first of a repeated name wins). `Content` is also written to stdin.
//! Its stdout, cut at `max_output` bytes (on a character boundary) and trimmed, is the text
//! reply. A non-zero exit, the deadline, or empty output is a failure.
//!
//! # Process group
//! The program runs in a process group of its own. When it exits, what it wrote so far is the
//! reply at once, even if a background child it started still holds stdout open
//! (`sh -c 'sleep 20 & echo started'`). At the deadline the whole group is killed, background
//! children included. Everything runs on the calling (forward) thread: the pipes are
//! non-blocking and polled together with a pidfd of the program, so no helper thread and no
//! descriptor outlives the call.

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::process::{Pid, PidfdFlags, Signal};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// `PATH` given to the program.
pub const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Longest single wait when the program's exit cannot be watched with a pidfd.
const EXIT_POLL: Duration = Duration::from_millis(5);

/// Runs `command` and returns its trimmed output. `Err` is a one-line reason for the log.
pub fn run(
    command: &[String],
    env: &[(String, String)],
    stdin: &[u8],
    timeout: Duration,
    max_output: usize,
) -> Result<String, String> {
    let (program, args) = command.split_first().ok_or("empty command")?;
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", PATH)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {program:?}: {e}"))?;
    let mut io = Pipes {
        input: child.stdin.take(),
        written: 0,
        output: child.stdout.take(),
        out: Vec::new(),
        max_output,
        cut: false,
    };
    let status = match io.run(&mut child, stdin, timeout) {
        Ok(status) => status,
        Err(reason) => {
            kill_group(&mut child);
            return Err(reason);
        }
    };
    if !status.success() {
        return Err(format!("program failed ({status})"));
    }
    if io.cut {
        drop_partial_char(&mut io.out);
    }
    let text = String::from_utf8_lossy(&io.out);
    let text = text.trim();
    if text.is_empty() {
        return Err("empty output".to_string());
    }
    Ok(text.to_string())
}

/// Kills the program's whole process group and reaps the program.
fn kill_group(child: &mut Child) {
    if let Some(pgid) = Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The program's stdin and stdout, both non-blocking; `None` once closed.
struct Pipes {
    input: Option<ChildStdin>,
    written: usize,
    output: Option<ChildStdout>,
    out: Vec<u8>,
    max_output: usize,
    /// Output was cut at `max_output` (then a partial last character is dropped).
    cut: bool,
}

impl Pipes {
    /// Feeds stdin and collects stdout until the program exits (`Ok`) or `deadline` (`Err`).
    fn run(
        &mut self,
        child: &mut Child,
        stdin: &[u8],
        timeout: Duration,
    ) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        let nonblocking = |fd: std::os::fd::BorrowedFd<'_>| rustix::io::ioctl_fionbio(fd, true);
        let set = self
            .input
            .as_ref()
            .map_or(Ok(()), |p| nonblocking(p.as_fd()));
        set.and(
            self.output
                .as_ref()
                .map_or(Ok(()), |p| nonblocking(p.as_fd())),
        )
        .map_err(|e| format!("cannot set up the pipes: {e}"))?;
        if stdin.is_empty() {
            self.input = None;
        }
        // A pidfd becomes readable when the program exits (Linux 5.3+); without one, the wait
        // is polled in short steps.
        let exited: Option<OwnedFd> = Pid::from_raw(child.id() as i32)
            .and_then(|pid| rustix::process::pidfd_open(pid, PidfdFlags::empty()).ok());
        loop {
            if let Some(status) = child
                .try_wait()
                .map_err(|e| format!("while waiting for the program: {e}"))?
            {
                // Output written before the exit is in the pipe: take it, but do not wait for
                // a background child that may still hold the pipe open.
                self.read_available();
                return Ok(status);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "timeout after {} ms (process group killed)",
                    timeout.as_millis()
                ));
            }
            let wait = match &exited {
                Some(_) => left,
                None => left.min(EXIT_POLL),
            };
            self.wait(stdin, exited.as_ref(), wait);
        }
    }

    /// Waits up to `wait` for a pipe or the pidfd, then moves what can be moved.
    fn wait(&mut self, stdin: &[u8], exited: Option<&OwnedFd>, wait: Duration) {
        let mut fds = Vec::with_capacity(3);
        if let Some(p) = &self.output {
            fds.push(PollFd::new(p, PollFlags::IN));
        }
        if let Some(p) = &self.input {
            fds.push(PollFd::new(p, PollFlags::OUT));
        }
        if let Some(fd) = exited {
            fds.push(PollFd::new(fd, PollFlags::IN));
        }
        let timeout = Timespec {
            tv_sec: wait.as_secs() as i64,
            tv_nsec: wait.subsec_nanos() as _,
        };
        // Readiness is rechecked by the non-blocking calls below; EINTR just loops.
        let _ = poll(&mut fds, Some(&timeout));
        drop(fds);
        self.write_available(stdin);
        self.read_available();
    }

    /// Writes as much of `stdin` as the pipe takes; closes it when done or refused.
    fn write_available(&mut self, stdin: &[u8]) {
        let Some(pipe) = &mut self.input else { return };
        loop {
            match pipe.write(&stdin[self.written..]) {
                Ok(n) if n > 0 => {
                    self.written += n;
                    if self.written == stdin.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                // Done, or the program closed its stdin (EPIPE): it does not want the rest.
                _ => break,
            }
        }
        self.input = None;
    }

    /// Reads what stdout holds now; beyond `max_output` it is read and dropped.
    fn read_available(&mut self) {
        let Some(pipe) = &mut self.output else { return };
        let mut buf = [0u8; 4096];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let room = self.max_output.saturating_sub(self.out.len());
                    self.cut |= n > room;
                    self.out.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => break,
            }
        }
        self.output = None;
    }
}

/// Drops a UTF-8 character left incomplete at the end of `out` by the output cap.
fn drop_partial_char(out: &mut Vec<u8>) {
    // A character is at most 4 bytes: only the last 3 can belong to an incomplete one.
    let tail = out.len().saturating_sub(3);
    let Some(start) = (tail..out.len()).find(|&i| out[i] & 0xC0 != 0x80) else {
        return;
    };
    if let Err(e) = std::str::from_utf8(&out[start..]) {
        if e.error_len().is_none() {
            out.truncate(start + e.valid_up_to());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn env_and_stdin_reach_the_program() {
        let env = vec![("WX_FromUserName".to_string(), "oUser".to_string())];
        let out = run(
            &sh("read line; echo \"$WX_FromUserName: $line\""),
            &env,
            b"hello\n",
            Duration::from_secs(5),
            100,
        );
        assert_eq!(out.as_deref(), Ok("oUser: hello"));
    }

    #[test]
    fn failures() {
        let t = Duration::from_secs(5);
        assert!(run(&sh("exit 3"), &[], b"", t, 100).is_err());
        assert!(run(&sh("true"), &[], b"", t, 100).is_err(), "empty output");
        let started = Instant::now();
        let r = run(&sh("sleep 5"), &[], b"", Duration::from_millis(200), 100);
        assert!(r.is_err_and(|e| e.contains("timeout")));
        assert!(started.elapsed() < Duration::from_secs(2));
        let big = run(&sh("yes | head -c 100000"), &[], b"", t, 10);
        assert_eq!(big.as_deref(), Ok("y\ny\ny\ny\ny"));
        assert!(run(&["/nonexistent".to_string()], &[], b"", t, 10).is_err());
        // The cap falls inside the second "é": the output ends on a character boundary.
        let cut = run(&sh("printf 'ééé'"), &[], b"", t, 3);
        assert_eq!(cut.as_deref(), Ok("é"));
        let cut = run(&sh("printf 'a😀b'"), &[], b"", t, 4);
        assert_eq!(cut.as_deref(), Ok("a"));
        // A program that never reads its stdin cannot block us.
        let big_in = vec![b'x'; 1 << 20];
        assert_eq!(
            run(&sh("echo ignored"), &[], &big_in, t, 100).as_deref(),
            Ok("ignored")
        );
        assert_eq!(
            run(&sh("wc -c"), &[], &big_in, t, 100).as_deref(),
            Ok("1048576")
        );
    }

    /// Issue 11, finding 6: a background child holding stdout does not delay the reply.
    #[test]
    fn background_child_does_not_delay_the_reply() {
        let started = Instant::now();
        let r = run(
            &sh("sleep 20 & echo started"),
            &[],
            b"",
            Duration::from_secs(5),
            100,
        );
        assert_eq!(r.as_deref(), Ok("started"));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    /// At the deadline the whole group is killed, background children included.
    #[test]
    fn timeout_kills_the_whole_group() {
        let dir = std::env::temp_dir().join(format!("wxfcgi-exec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let marker = dir.join("alive");
        let script = format!(
            "(sleep 1; touch {m}) & echo partial; sleep 30",
            m = marker.display()
        );
        let started = Instant::now();
        let r = run(&sh(&script), &[], b"", Duration::from_millis(300), 100);
        assert!(r.is_err_and(|e| e.contains("timeout")));
        assert!(started.elapsed() < Duration::from_secs(2));
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            !marker.exists(),
            "the background child survived the timeout"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
