//! Reads of device values by the host: every one waits for the device to finish what it was
//! given, so the training loop makes as few as it can (loss and accuracy accumulate on the
//! device and are read once per epoch). Each goes through here and is counted on its thread,
//! so that a test can hold the loop to its bound ([`count`]).

use std::cell::Cell;

use tch::Tensor;

thread_local! {
    static READS: Cell<u64> = const { Cell::new(0) };
}

fn counted() {
    READS.with(|r| r.set(r.get() + 1));
}

/// Host reads made on this thread so far.
pub fn count() -> u64 {
    READS.with(Cell::get)
}

/// A scalar as `f64` (one read).
pub fn f64(t: &Tensor) -> f64 {
    counted();
    t.double_value(&[])
}

/// A scalar as `i64` (one read).
pub fn i64(t: &Tensor) -> i64 {
    counted();
    t.int64_value(&[])
}

/// A vector of integers (one read).
pub fn i64s(t: &Tensor) -> Vec<i64> {
    counted();
    Vec::<i64>::try_from(t.to_device(tch::Device::Cpu)).unwrap_or_default()
}
