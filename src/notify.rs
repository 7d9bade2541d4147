//! systemd's service notification protocol: one datagram per message to the
//! socket named by `NOTIFY_SOCKET` (`READY=1`, `WATCHDOG=1`, `STOPPING=1`).
//! Written here rather than taken from a crate: it is one `send_to`, and the
//! crates add a dependency tree for it.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where to tell systemd how we are, if it listens.
pub struct Notifier {
    sock: UnixDatagram,
    addr: std::os::unix::net::SocketAddr,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`, a path or (with a leading `@`) an abstract name;
    /// `None` when unset or unusable, as when dcd is not run by systemd.
    pub fn new(socket: Option<&str>) -> Option<Notifier> {
        let socket = socket.filter(|s| !s.is_empty())?;
        let addr = match socket.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name).ok()?
            }
            None => std::os::unix::net::SocketAddr::from_pathname(socket).ok()?,
        };
        Some(Notifier { sock: UnixDatagram::unbound().ok()?, addr })
    }

    pub fn send(&self, state: &str) {
        if let Err(e) = self.sock.send_to_addr(state.as_bytes(), &self.addr) {
            log::debug!("systemd notify {state:?}: {e}");
        }
    }
}

/// The watchdog interval systemd expects pings within (`WATCHDOG_USEC`), if
/// it is meant for this process (`WATCHDOG_PID`, when set, is our pid).
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>) -> Option<Duration> {
    if pid.is_some_and(|p| p.parse::<u32>().ok() != Some(std::process::id())) {
        return None;
    }
    let us: u64 = usec?.parse().ok().filter(|us| *us > 0)?;
    Some(Duration::from_micros(us))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_the_socket_and_the_interval_is_ours() {
        let dir = std::env::temp_dir().join(format!("dcd-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        Notifier::new(path.to_str()).unwrap().send("READY=1");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        assert!(Notifier::new(None).is_none() && Notifier::new(Some("")).is_none());
        let me = std::process::id().to_string();
        assert_eq!(watchdog_interval(Some("30000000"), Some(&me)), Some(Duration::from_secs(30)));
        assert_eq!(watchdog_interval(Some("30000000"), None), Some(Duration::from_secs(30)));
        assert_eq!(watchdog_interval(Some("30000000"), Some("1")), None, "another process's watchdog");
        assert_eq!(watchdog_interval(None, None), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
