//! Giving memory back to the OS after a burst.
//!
//! Freed heap memory normally stays in glibc's arenas (one per thread that allocated), so RSS
//! after a burst stays at its peak although the tables are empty again. [`trim`] asks glibc to
//! return every free page of every arena (`malloc_trim(0)`); the process calls it when it
//! becomes idle after serving (see `App::maintain`), and [`init`] makes large blocks go back
//! by themselves. Elsewhere (musl) both do nothing.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
unsafe extern "C" {
    fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
}

/// Tunes glibc's malloc for a small resident set; call once, before threads start.
/// - `M_ARENA_MAX = 2`: glibc gives every thread that allocates its own arena (up to 8 per
///   core), and memory freed in one arena is not reused by the others; the forward, OAuth and
///   worker threads share two instead.
/// - `M_MMAP_THRESHOLD = 4 KiB`: a block this large (a backend answer, a kept 60 KB news reply,
///   its JSON strings) gets its own mapping and goes back to the OS the moment it is freed,
///   instead of leaving holes in the heap. The per-request path of a template reply allocates
///   nothing this large (its buffers are per worker and reused).
/// - `M_TRIM_THRESHOLD = 64 KiB`: free memory at the top of the heap goes back sooner.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn init() {
    const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
    const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
    const M_ARENA_MAX: std::ffi::c_int = -8;
    // SAFETY: `mallopt` is glibc's own function with this signature (malloc.h: `int
    // mallopt(int param, int value)`); these parameters only change the policy for later
    // allocations, and it is called before any other thread exists.
    unsafe {
        mallopt(M_ARENA_MAX, 2);
        mallopt(M_MMAP_THRESHOLD, 4 * 1024);
        mallopt(M_TRIM_THRESHOLD, 64 * 1024);
    }
}

/// Tunes the allocator; a no-op on other C libraries.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn init() {}

/// Returns free heap pages to the OS (glibc); a no-op on other C libraries.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim() {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: `malloc_trim` is glibc's own function with this exact signature (malloc.h: `int
    // malloc_trim(size_t pad)`). It has no preconditions: it takes each arena's lock and
    // releases memory that is already free, so it cannot race with or invalidate live
    // allocations of other threads. Rust's global allocator on this target is glibc's malloc.
    unsafe {
        malloc_trim(0);
    }
}

/// Returns free heap pages to the OS (glibc); a no-op on other C libraries.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() {}
