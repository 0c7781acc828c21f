//! CPU hints for the module's hot loops (here because `unsafe` lives only under
//! `asterisk/`).

/// Asks the CPU to bring `r`'s cache line in: a hint, which reads nothing and cannot
/// fault. The store's merge and a catch-up's pushes look up keys in key order, all over
/// a table of tens of megabytes; fetching a few lookups ahead turns one cache miss per
/// key into misses that overlap.
pub(crate) fn prefetch<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing and never faults; the address is a live reference's.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((r as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}
