//! The local terminal for `exec -it`: raw mode, restored on every way out
//! (the guard's drop, and a panic hook for an abort), and the window size.

use std::sync::OnceLock;

/// The settings before raw mode, for whoever restores them.
static SAVED: OnceLock<libc::termios> = OnceLock::new();

/// Raw mode on stdin while it lives.
pub struct Raw(());

impl Raw {
    /// Raw mode, if stdin is a terminal.
    pub fn enter() -> Option<Raw> {
        // SAFETY: termios calls on stdin with a zeroed struct they fill in.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return None;
            }
            if SAVED.set(t).is_ok() {
                let previous = std::panic::take_hook();
                std::panic::set_hook(Box::new(move |info| {
                    restore();
                    previous(info)
                }));
            }
            libc::cfmakeraw(&mut t);
            (libc::tcsetattr(0, libc::TCSANOW, &t) == 0).then_some(Raw(()))
        }
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        restore();
    }
}

fn restore() {
    if let Some(t) = SAVED.get() {
        // SAFETY: `t` came from tcgetattr on the same descriptor.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
    }
}

/// (rows, cols) of the terminal on stdout, else stdin.
pub fn size() -> Option<(u16, u16)> {
    [1, 0].into_iter().find_map(|fd| {
        // SAFETY: TIOCGWINSZ fills in a winsize.
        let mut w: libc::winsize = unsafe { std::mem::zeroed() };
        let ok = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut w) } == 0 && w.ws_row > 0;
        ok.then_some((w.ws_row, w.ws_col))
    })
}
