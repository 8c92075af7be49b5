//! Data parallelism over contiguous chunks, on rayon's pool (already in the build through
//! candle and faer): per-layer calls reuse its workers instead of spawning OS threads each
//! time (about 60 spawns per training step before).
//!
//! The partition is fixed — one contiguous block per thread of candle's thread count — so
//! partial results (BN's per-block sums) are combined in the same order whatever the pool does,
//! and runs stay bit-for-bit reproducible.

use rayon::prelude::*;

/// Items per block: `items` split over candle's thread count.
fn per_block(items: usize) -> usize {
    let threads = candle_core::utils::get_num_threads().clamp(1, items.max(1));
    items.div_ceil(threads).max(1)
}

/// Calls `f(first_item, chunk)` on disjoint chunks of `out`, each a run of whole items of
/// `item_len` elements, in parallel.
pub(crate) fn for_each_chunk<T: Send>(
    out: &mut [T],
    item_len: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let items = out.len().checked_div(item_len).unwrap_or(0);
    let per = per_block(items);
    out.par_chunks_mut(per * item_len.max(1))
        .enumerate()
        .for_each(|(t, chunk)| f(t * per, chunk));
}

/// Splits `0..items` into per-thread ranges, maps each with `f`, returns the partial results
/// in range order.
pub(crate) fn map_ranges<R: Send>(
    items: usize,
    f: impl Fn(std::ops::Range<usize>) -> R + Sync,
) -> Vec<R> {
    let per = per_block(items);
    let starts: Vec<usize> = (0..items).step_by(per).collect();
    starts
        .into_par_iter()
        .map(|start| f(start..(start + per).min(items)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_every_item_once_and_ranges_keep_their_order() {
        let mut v = vec![0usize; 3 * 1001];
        for_each_chunk(&mut v, 3, |first, chunk| {
            for (i, item) in chunk.chunks_mut(3).enumerate() {
                item.fill(first + i + 1);
            }
        });
        let expect: Vec<usize> = (0..1001).flat_map(|i| [i + 1; 3]).collect();
        assert_eq!(v, expect);
        let parts = map_ranges(1001, |r| r);
        let joined: Vec<usize> = parts.into_iter().flatten().collect();
        assert_eq!(joined, (0..1001).collect::<Vec<_>>());
    }
}
