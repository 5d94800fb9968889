//! Reads of device values by the host, and uploads of host values to the device: on CUDA every
//! one waits for the device to finish what it was given (a plain `to_device` from pageable host
//! memory synchronises the stream), so the training loop makes as few as it can: loss and
//! accuracy accumulate on the device and are read once per epoch, an epoch's data order and
//! augmentation draws go up once, at its start. Each goes through here and is counted on its
//! thread, so that a test can hold the loop to its bound ([`count`], [`uploads`]).

use std::cell::Cell;

use tch::Tensor;

thread_local! {
    static READS: Cell<u64> = const { Cell::new(0) };
    static UPLOADS: Cell<u64> = const { Cell::new(0) };
}

fn counted() {
    READS.with(|r| r.set(r.get() + 1));
}

/// Host reads made on this thread so far.
pub fn count() -> u64 {
    READS.with(Cell::get)
}

/// Uploads made on this thread so far.
pub fn uploads() -> u64 {
    UPLOADS.with(Cell::get)
}

/// `t` (a host tensor) on `device` (one upload; a no-op copy on the CPU, counted all the same
/// so that the bound holds wherever the test runs).
pub fn upload(t: &Tensor, device: tch::Device) -> Tensor {
    UPLOADS.with(|r| r.set(r.get() + 1));
    t.to_device(device)
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

/// `t` (a host tensor) on `device` without a wait: on CUDA through pinned memory and a
/// non-blocking copy (the stream orders it before the kernels that read it, and PyTorch's
/// caching host allocator keeps the pinned block until the copy is done); elsewhere a plain
/// copy. Not counted: it does not synchronise. For data that only the host has, batch by batch
/// (decoded image files).
pub fn upload_async(t: &Tensor, device: tch::Device) -> Tensor {
    match device {
        tch::Device::Cuda(_) => match t.f_pin_memory(device) {
            Ok(pinned) => pinned.to_device_(device, pinned.kind(), true, false),
            Err(_) => upload(t, device),
        },
        _ => t.to_device(device),
    }
}
