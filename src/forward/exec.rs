//! The `exec` action: runs a program (no shell) per message.
//!
//! The program gets an empty environment except `PATH=/usr/local/bin:/usr/bin:/bin` and one
//! variable per message field, named `WX_<FieldName>` with the WeChat name (`WX_Content`,
//! `WX_FromUserName`, `WX_MsgType`, `WX_Event`, nested ones by their own name, e.g.
//! `WX_ScanResult`; the first of a repeated name wins). `Content` is also written to stdin.
//! Its stdout, cut at `max_output` bytes (on a character boundary) and trimmed, is the text
//! reply. A non-zero exit, the deadline (the child is killed), or empty output is a failure.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `PATH` given to the program.
pub const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Runs `command` and returns its trimmed output. `Err` is a one-line reason for the log.
pub fn run(
    command: &[String],
    env: &[(String, String)],
    stdin: &[u8],
    timeout: Duration,
    max_output: usize,
) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let (program, args) = command.split_first().ok_or("empty command")?;
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", PATH)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {program:?}: {e}"))?;
    // Writer and reader threads, so neither a program that does not read stdin nor one that
    // writes a lot can block us past the deadline. Output beyond the cap is read and dropped.
    if let Some(mut pipe) = child.stdin.take() {
        let input = stdin.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let (tx, rx) = mpsc::sync_channel(1);
    if let Some(mut pipe) = child.stdout.take() {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            let mut cut = false;
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let room = max_output.saturating_sub(out.len());
                        cut |= n > room;
                        out.extend_from_slice(&buf[..n.min(room)]);
                    }
                }
            }
            if cut {
                drop_partial_char(&mut out);
            }
            let _ = tx.send(out);
        });
    }
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timeout after {} ms (killed)", timeout.as_millis()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("while waiting for the program: {e}")),
        }
    };
    if !status.success() {
        return Err(format!("program failed ({status})"));
    }
    // A grandchild may still hold stdout open: wait no longer than the deadline.
    let left = deadline.saturating_duration_since(Instant::now());
    let out = rx
        .recv_timeout(left.max(Duration::from_millis(50)))
        .map_err(|_| "output still open at the deadline".to_string())?;
    let text = String::from_utf8_lossy(&out);
    let text = text.trim();
    if text.is_empty() {
        return Err("empty output".to_string());
    }
    Ok(text.to_string())
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
    }
}
