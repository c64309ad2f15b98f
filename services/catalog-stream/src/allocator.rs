//! The process's allocator settings: the `catalog-stream` binary (and the benchmarks that run
//! its pipeline) use mimalloc as the global allocator and call [`keep_memory_near_use`] first
//! in `main`. Holds the workspace's one `unsafe` call (mimalloc's options have no safe
//! interface). Depends on nothing else in the crate.

/// Lets the process's RSS fall back after a burst instead of staying at its peak (SPEC §8: the
/// standalone mode within 128 MiB with 100k products; the figures with and without are in
/// `infrastructure/BENCHMARKS.md`).
///
/// - Transparent huge pages: mimalloc asks for them on its arenas, and a 2 MiB page stays
///   resident as long as any of it is in use.
/// - mimalloc returns freed pages to the OS only after its purge delay (1 s) *and* on a later
///   call into the allocator, which an idle process does not make: it kept the burst's peak.
///
/// `MIMALLOC_ALLOW_THP` / `MIMALLOC_PURGE_DELAY` in the environment override either. Call it
/// first in `main`, before the process starts other threads.
pub fn keep_memory_near_use() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none()
        && let Err(error) = rustix::thread::disable_transparent_huge_pages(true)
    {
        eprintln!("warning: cannot disable transparent huge pages: {error}");
    }
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        purge_freed_memory_at_once();
    }
}

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (`include/mimalloc.h`); the Rust
/// bindings only name the options both mimalloc 2 and 3 share.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

// The one call into C this crate makes: the allocator has no safe interface for its options.
#[allow(unsafe_code)]
fn purge_freed_memory_at_once() {
    // SAFETY: `mi_option_set` stores an integer in mimalloc's option table; it takes no
    // pointers. mimalloc notes the option functions are not thread-safe: this runs first in
    // `main`, before any other thread of this process exists.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) }
}
