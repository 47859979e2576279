//! Run independent jobs of one command on several threads. Signing many files
//! is CPU work (one signature each) followed by disk waits (one fsync each);
//! both overlap well, and neither needs an async runtime.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::error::{Error, Result};

/// Threads for waiting on the disk (fsync): far more than cores, since the
/// waits overlap and the filesystem commits them together.
pub const IO_THREADS: usize = 16;

/// Threads for CPU work: one per core.
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// `f(0..n)` on `threads` threads, results in order. It stops handing out work
/// at the first error and returns the lowest-numbered one, so the error a user
/// sees does not depend on thread timing.
pub fn map<T: Send>(
    n: usize,
    threads: usize,
    f: impl Fn(usize) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let threads = threads.clamp(1, n.max(1));
    if threads == 1 {
        return (0..n).map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let mut results: Vec<(usize, Result<T>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = vec![];
                    // Work is handed out in order and only stops being handed
                    // out after a failure, so every item before a failed one
                    // has run: the lowest failure is the first in input order.
                    while !stop.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        let r = f(i);
                        if r.is_err() {
                            stop.store(true, Ordering::Relaxed);
                        }
                        mine.push((i, r));
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join().unwrap_or_else(|_| {
                    vec![(0, Err(Error::Internal("worker thread panicked".into())))]
                })
            })
            .collect()
    });
    results.sort_by_key(|(i, _)| *i);
    let mut out = Vec::with_capacity(n);
    for (_, r) in results {
        out.push(r?);
    }
    if out.len() != n {
        return Err(Error::Internal("not every item was processed".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_order() {
        let v = map(1000, 4, |i| Ok(i * 2)).unwrap();
        assert_eq!(v, (0..1000).map(|i| i * 2).collect::<Vec<_>>());
    }

    #[test]
    fn the_first_failure_in_input_order_wins() {
        for threads in [1, 2, 8] {
            let e = map(100, threads, |i| {
                if i == 10 || i == 50 {
                    Err(Error::Usage(format!("item {i}")))
                } else {
                    Ok(i)
                }
            })
            .unwrap_err();
            assert_eq!(e.to_string(), "item 10");
        }
    }
}
