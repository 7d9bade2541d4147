//! A unix socket in front of the engine's, which a test can cut and restore, as an engine that
//! crashes, restarts or breaks does.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The real engine's socket (Docker's, or the Podman service's), which the relay stands in front of.
fn engine_socket() -> String {
    let host = super::engine_host().expect("the real engine's host");
    host.strip_prefix("unix://").unwrap_or_else(|| panic!("{host} is not a unix socket")).to_string()
}

/// Down until `restore` (or `break_engine`). Restored, it passes every connection through to
/// the engine; broken, it acts as an engine that is up but broken: it answers its version check
/// and closes every other connection unanswered after reading its request. Cut, every
/// connection is closed and the socket is gone. It counts the container list requests it sees
/// and the event streams the engine started, and without `replay` it sets the `since` of
/// `/events` requests to now, as an engine restarted during an outage has nothing to replay.
pub struct Relay {
    path: PathBuf,
    tap: Arc<Tap>,
    open: Arc<Mutex<Vec<UnixStream>>>,
    accepting: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl Relay {
    pub fn new(tag: &str, replay: bool) -> Relay {
        let path = std::env::temp_dir().join(format!("{}.sock", super::unique(&format!("relay-{tag}"))));
        let tap = Arc::new(Tap { lists: 0.into(), streams: 0.into(), replay });
        Relay { path, tap, open: Arc::default(), accepting: None }
    }

    /// The DOCKER_HOST that reaches the engine through the relay.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Passing connections through when this returns.
    pub fn restore(&mut self) {
        self.listen(true);
    }

    /// Up but broken when this returns.
    pub fn break_engine(&mut self) {
        self.listen(false);
    }

    /// Gone, with every open connection closed, when this returns.
    pub fn cut(&mut self) {
        if let Some((stop, thread)) = self.accepting.take() {
            stop.store(true, Ordering::SeqCst);
            // Wakes the accept loop so it sees `stop`.
            let _ = UnixStream::connect(&self.path);
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.path);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Container list requests seen so far.
    pub fn lists(&self) -> usize {
        self.tap.lists.load(Ordering::SeqCst)
    }

    /// Wait until the engine has answered `n` `/events` requests in all (its answer starts the
    /// stream), for at most `within`.
    pub fn wait_streams(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.tap.streams.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "no event stream {n} through the relay within {within:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn listen(&mut self, forward: bool) {
        self.cut();
        // Bound before this returns, so a connection made next is queued, not refused.
        let listener = UnixListener::bind(&self.path).expect("bind the relay socket");
        let (stop, open, tap) = (Arc::new(AtomicBool::new(false)), self.open.clone(), self.tap.clone());
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    if forward {
                        pipe(client, &tap, &open);
                    } else {
                        broken(client, &tap);
                    }
                }
            }
        });
        self.accepting = Some((stop, thread));
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}

/// What the relay sees pass.
struct Tap {
    lists: AtomicUsize,
    streams: AtomicUsize,
    replay: bool,
}

impl Tap {
    const LIST: &[u8] = b"/containers/json";
    const EVENTS: &[u8] = b"/events?";

    /// Copy requests to the engine, looking at each on the way; `events` is set once one of
    /// them asks for `/events`.
    fn forward(&self, mut from: UnixStream, mut to: UnixStream, events: &AtomicBool) {
        let mut buf = vec![0u8; 64 * 1024];
        // The end of the previous read, so a request line cut by a read still counts.
        let mut tail = Vec::new();
        while let Ok(n @ 1..) = from.read(&mut buf) {
            let chunk = self.look(&buf[..n], &mut tail);
            if chunk.windows(Self::EVENTS.len()).any(|w| w == Self::EVENTS) {
                events.store(true, Ordering::SeqCst);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
    }

    /// Count the list requests in `chunk` and strip `since` if asked; returns what to send on.
    fn look(&self, chunk: &[u8], tail: &mut Vec<u8>) -> Vec<u8> {
        let mut chunk = chunk.to_vec();
        if !self.replay && chunk.windows(Self::EVENTS.len()).any(|w| w == Self::EVENTS) {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
            set_query(&mut chunk, b"&since=", format!("{}.{:06}", now.as_secs(), now.subsec_micros()).as_bytes());
        }
        let seen = [&tail[..], &chunk[..]].concat();
        let new = seen
            .windows(Self::LIST.len())
            .enumerate()
            .filter(|(i, w)| *w == Self::LIST && i + Self::LIST.len() > tail.len())
            .count();
        self.lists.fetch_add(new, Ordering::SeqCst);
        *tail = seen[seen.len().saturating_sub(Self::LIST.len() - 1)..].to_vec();
        chunk
    }
}

/// Copy bytes both ways between `client` and a new engine connection until either side ends.
fn pipe(client: UnixStream, tap: &Arc<Tap>, open: &Mutex<Vec<UnixStream>>) {
    let Ok(engine) = UnixStream::connect(engine_socket()) else { return };
    let events = Arc::new(AtomicBool::new(false));
    let (c, e) = (client.try_clone().unwrap(), engine.try_clone().unwrap());
    std::thread::spawn({
        let (tap, events) = (tap.clone(), events.clone());
        move || {
            tap.forward(c.try_clone().unwrap(), e.try_clone().unwrap(), &events);
            let _ = c.shutdown(std::net::Shutdown::Both);
            let _ = e.shutdown(std::net::Shutdown::Both);
        }
    });
    let (mut e, mut c) = (engine.try_clone().unwrap(), client.try_clone().unwrap());
    let tap = tap.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut answered = false;
        while let Ok(n @ 1..) = e.read(&mut buf) {
            // The request went out before any answer came back, so `events` is known by now.
            if !answered && events.load(Ordering::SeqCst) {
                tap.streams.fetch_add(1, Ordering::SeqCst);
            }
            answered = true;
            if c.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = c.shutdown(std::net::Shutdown::Both);
        let _ = e.shutdown(std::net::Shutdown::Both);
    });
    open.lock().unwrap().extend([client, engine]);
}

/// Answer the version check (`GET /_ping`, `GET /version`, and Podman's `/libpod/info`), or
/// every call would stop there, and drop the rest.
fn broken(mut client: UnixStream, tap: &Tap) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = vec![0u8; 64 * 1024];
    if let Ok(n) = client.read(&mut buf) {
        let request = tap.look(&buf[..n], &mut Vec::new());
        let info = request.windows(13).any(|w| w == b"/libpod/info ");
        if request.starts_with(b"GET /version ") || request.starts_with(b"GET /_ping ") || info {
            version_once(&request, &mut client);
        }
    }
}

/// Pass one request of the version check to the engine, which closes the connection after its
/// answer.
fn version_once(request: &[u8], client: &mut UnixStream) {
    let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") else {
        return;
    };
    let Ok(mut engine) = UnixStream::connect(engine_socket()) else {
        return;
    };
    let request = [&request[..end], b"\r\nconnection: close\r\n\r\n"].concat();
    if engine.write_all(&request).is_ok() {
        let _ = std::io::copy(&mut engine, client);
    }
}

/// Set the value of `key` (`&name=`) in the first request line in `chunk`, if it has one.
fn set_query(chunk: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let Some(at) = chunk.windows(key.len()).position(|w| w == key) else {
        return;
    };
    let from = at + key.len();
    let len = chunk[from..].iter().position(|&b| b == b'&' || b == b' ').unwrap_or(0);
    chunk.splice(from..from + len, value.iter().copied());
}
