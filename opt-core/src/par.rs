//! Minimal data parallelism over contiguous chunks on candle's thread count (scoped threads:
//! the method library depends on candle only).

/// Calls `f(first_item, chunk)` on disjoint chunks of `out`, each a run of whole items of
/// `item_len` elements, in parallel.
pub(crate) fn for_each_chunk<T: Send>(
    out: &mut [T],
    item_len: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let items = out.len().checked_div(item_len).unwrap_or(0);
    let threads = candle_core::utils::get_num_threads().clamp(1, items.max(1));
    let per = items.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (t, chunk) in out.chunks_mut(per * item_len.max(1)).enumerate() {
            let f = &f;
            s.spawn(move || f(t * per, chunk));
        }
    });
}

/// Splits `0..items` into per-thread ranges, maps each with `f`, returns the partial results.
pub(crate) fn map_ranges<R: Send>(
    items: usize,
    f: impl Fn(std::ops::Range<usize>) -> R + Sync,
) -> Vec<R> {
    let threads = candle_core::utils::get_num_threads().clamp(1, items.max(1));
    let per = items.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..items)
            .step_by(per)
            .map(|start| {
                let f = &f;
                s.spawn(move || f(start..(start + per).min(items)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker thread panicked"))
            .collect()
    })
}
