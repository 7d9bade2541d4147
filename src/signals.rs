//! Signals taken by `sigwait` on a thread of our choosing, never by a
//! handler: the daemon's shutdown, the client's Ctrl-C and window size.

/// Block `signals` in this thread and every thread spawned after (they
/// inherit the mask), so they are only ever taken by `wait`. Call it before
/// any other thread exists.
pub fn block(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: plain libc signal-set calls on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// The next of the signals in `set` (made by `block`).
pub fn wait(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: `set` was initialised by `block`.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}
