//! `dcd exec`: an exec session driven from here (the exec_* functions, spec
//! in the exec contract). Stdin goes out by `exec_write`; `exec_output`
//! events come back in seq order, a gap read back with `exec_read`; the
//! window size goes by `exec_resize`; the process's exit code is ours.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::select;
use serde_json::{json, Value};

use super::{event_params, is_terminal, term, text, Client, Exec, Failure, Result};
use crate::encoding::{base64_decode, base64_encode, STANDARD};

/// With no event this long, ask: events are at-most-once, the end included.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Output is acknowledged by `exec_read`; the device holds 256 KiB unacknowledged
/// before it stops reading the process, so acknowledge well before that.
const ACK_EVERY: usize = 64 * 1024;

pub(super) fn run(c: &Arc<Client>, a: Exec) -> Result<i32> {
    // Subscribed before the session opens, so its first output is heard.
    let outputs = c.subscribe(&a.device, "exec_output")?;
    let exits = c.subscribe(&a.device, "exec_exit")?;
    let (rows, cols) = term::size().unwrap_or((24, 80));
    let mut open = json!({"container_id": a.container, "tty": a.tty, "rows": rows, "cols": cols});
    if !a.cmd.is_empty() {
        open["cmd"] = json!(a.cmd);
    }
    let opened = c.call(&a.device, "exec_open", open)?;
    let Some(sid) = opened["session_id"].as_str().map(String::from) else {
        return Err(Failure::Usage(format!("exec_open answered without a session_id: {opened}")));
    };
    let raw = if a.tty && is_terminal(0) { term::Raw::enter() } else { None };
    if a.interactive || !is_terminal(0) {
        let (c, device, sid) = (c.clone(), a.device.clone(), sid.clone());
        std::thread::Builder::new()
            .name("stdin".into())
            .spawn(move || send_input(&c, &device, &sid))
            .map_err(|e| Failure::Usage(format!("cannot start a thread: {e}")))?;
    }
    let mut out = Output { last: 0, unacked: 0 };
    let session = |m: &crate::mesh::Message| Some(event_params(m)).filter(|p| p["session_id"] == sid.as_str());
    let read = |after: u64| c.call(&a.device, "exec_read", json!({"session_id": sid, "after_seq": after}));
    let (code, reason) = loop {
        select! {
            recv(outputs) -> m => if let Some(p) = m.ok().as_ref().and_then(session) {
                let seq = p["seq"].as_u64().unwrap_or(0);
                if seq > out.last + 1 {
                    out.apply(&read(out.last)?);
                }
                if seq == out.last + 1 {
                    out.write(&p);
                }
                if out.unacked >= ACK_EVERY {
                    out.apply(&read(out.last)?);
                }
            },
            recv(exits) -> m => if let Some(p) = m.ok().as_ref().and_then(session) {
                out.apply(&read(out.last)?);
                break (p["exit_code"].clone(), text(&p["reason"]));
            },
            recv(c.signals) -> s => match s {
                Ok(libc::SIGWINCH) => {
                    if let (true, Some((rows, cols))) = (a.tty, term::size()) {
                        c.call(&a.device, "exec_resize", json!({"session_id": sid, "rows": rows, "cols": cols}))?;
                    }
                }
                s => {
                    let _ = c.call(&a.device, "exec_close", json!({"session_id": sid}));
                    return Ok(128 + s.unwrap_or(libc::SIGINT));
                }
            },
            default(IDLE_POLL) => {
                let r = read(out.last)?;
                out.apply(&r);
                if !r["exit_code"].is_null() {
                    break (r["exit_code"].clone(), String::new());
                }
            }
        }
    };
    drop(raw);
    match code.as_i64() {
        Some(code) => Ok(code.clamp(0, 255) as i32),
        None => {
            eprintln!("dcd: the session ended without an exit code ({reason})");
            Ok(1)
        }
    }
}

/// Stdin to `exec_write` until it ends, then the end itself.
fn send_input(c: &Client, device: &str, sid: &str) {
    let mut buf = [0u8; 8192];
    let mut stdin = std::io::stdin().lock();
    loop {
        let n = stdin.read(&mut buf).unwrap_or(0);
        let mut p = json!({"session_id": sid});
        match std::str::from_utf8(&buf[..n]) {
            _ if n == 0 => p["eof"] = json!(true),
            Ok(s) => p["data"] = json!(s),
            Err(_) => p["data_b64"] = json!(base64_encode(&buf[..n], STANDARD)),
        }
        if c.call(device, "exec_write", p).is_err() || n == 0 {
            return;
        }
    }
}

/// What has been written out: every chunk up to `last`, once, in order;
/// `unacked` bytes of it since the device last heard `after_seq`.
struct Output {
    last: u64,
    unacked: usize,
}

impl Output {
    /// The chunks of an `exec_read` answer not written yet.
    fn apply(&mut self, r: &Value) {
        self.unacked = 0;
        if let Some(first) = r["lost_before"].as_u64().filter(|f| *f > self.last + 1) {
            eprint!("\r\ndcd: output lost before chunk {first} (the device's buffer overflowed)\r\n");
            self.last = first - 1;
        }
        for chunk in r["chunks"].as_array().into_iter().flatten() {
            if chunk["seq"].as_u64() == Some(self.last + 1) {
                self.write(chunk);
            }
        }
    }

    fn write(&mut self, chunk: &Value) {
        self.last += 1;
        let bytes = match (&chunk["data"], &chunk["data_b64"]) {
            (Value::String(s), _) => s.as_bytes().to_vec(),
            (_, Value::String(b)) => base64_decode(b).unwrap_or_default(),
            _ => return,
        };
        self.unacked += bytes.len();
        let _ = if chunk["stream"] == "stderr" {
            std::io::stderr().write_all(&bytes)
        } else {
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes).and_then(|()| out.flush())
        };
    }
}
