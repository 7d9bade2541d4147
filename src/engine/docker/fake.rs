//! For unit tests: a fake engine on a unix socket in a temp dir, answering each request as a
//! test scripts it, so the client's HTTP handling is tested without a real engine.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::sync::lock;

/// A status and a body; the body is sent as JSON.
pub(crate) type Answer = (u16, String);

/// Answers each request with `answer(path)` (the path with its query), recording the paths.
/// One request per connection, as an engine that closes each does.
pub(crate) struct FakeEngine {
    pub path: PathBuf,
    pub seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeEngine {
    /// A fresh socket path in the temp dir, unique to this process and call.
    pub fn socket_path() -> PathBuf {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        std::env::temp_dir().join(format!("dcd-fake-engine-{}-{n}.sock", std::process::id()))
    }

    /// Listening on `path` when this returns.
    pub fn start(path: PathBuf, answer: impl Fn(&str) -> Answer + Send + 'static) -> FakeEngine {
        FakeEngine::pinging(path, "", answer)
    }

    /// `start`, with `ping_headers` (each line ending in CRLF) in the answers to `/_ping`, as an
    /// engine names its versions there.
    pub fn pinging(
        path: PathBuf,
        ping_headers: &'static str,
        answer: impl Fn(&str) -> Answer + Send + 'static,
    ) -> FakeEngine {
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind the fake engine's socket");
        let (stop, seen) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let thread = {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(mut conn) = conn else { continue };
                    let mut reader = BufReader::new(conn.try_clone().expect("clone a unix stream"));
                    let mut request_line = String::new();
                    let _ = reader.read_line(&mut request_line);
                    let mut header = String::new();
                    while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                        header.clear();
                    }
                    let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
                    let (status, body) = answer(&path);
                    let extra = if path == "/_ping" { ping_headers } else { "" };
                    lock(&seen).push(path);
                    let _ = write!(
                        conn,
                        "HTTP/1.1 {status} Fake\r\nContent-Type: application/json\r\n{extra}\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
            })
        };
        FakeEngine { path, seen, stop, thread: Some(thread) }
    }

    /// `unix://<path>`, for `Docker::connect`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// The paths requested since the last call.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.seen))
    }
}

impl Drop for FakeEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees `stop`.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}
