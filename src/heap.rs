//! How dcd keeps glibc's allocator from holding on to memory it no longer uses.
//!
//! The soak (bench/soak.sh, BENCHMARKS.md) grew the daemon's RSS by 38 % with no leak: a heap
//! profile put the live heap back at its baseline after the load, while glibc kept the freed
//! memory. glibc gives a thread that finds the arenas busy an arena of its own (up to 8 per
//! CPU), and our short-lived job, follow and exec threads kept making new ones; it returns
//! memory to the kernel only from the top of an arena, so a few live allocations made during
//! a burst pin everything freed below them. Both are fixed here, on glibc only: musl's
//! allocator (the static release binaries) has no per-thread arenas and unmaps what it frees.

/// Arenas glibc may create. The daemon's threads mostly wait on sockets, so two arenas are
/// contended rarely; the default (8 per CPU) only multiplies memory kept for threads gone.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENAS: libc::c_int = 2;

/// Limit glibc's arenas; call before other threads start (an arena is picked per thread).
/// `MALLOC_ARENA_MAX` in the environment still wins, for an operator who measures otherwise.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a tunable of the allocator; it is called before any other thread exists.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, ARENAS) };
    }
}

/// Give the kernel back the free pages in every arena, not only at their tops. It walks each
/// arena under its lock, so it is for a quiet moment, not for every call.
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe and only releases pages the allocator holds free.
    unsafe {
        libc::malloc_trim(0)
    };
}
