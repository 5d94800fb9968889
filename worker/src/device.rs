//! The training device: which one a flag names ([`pick_device`]), the CPU allocator policy, and
//! the device facts a trial reports: peak memory. On CUDA that is the caching allocator's peak
//! allocation (`torch.cuda.max_memory_allocated`), read through a small C++ shim compiled
//! when libtorch has CUDA (cfg `convsweep_cuda_stats`); elsewhere the process's peak
//! resident memory. With several trials on one GPU (`--slots`), the peak is the device's.

use convsweep_proto::spec::Precision;
use tch::Device;

/// A device flag that names no usable device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// Not one of the spellings `--device` takes.
    #[error("unknown device {0:?}: use auto, cpu, cuda or cuda:N")]
    Unknown(String),
    /// A CUDA device that libtorch does not see.
    #[error("{asked} asked for, but libtorch sees {count} CUDA device(s)")]
    Missing {
        /// The flag's value.
        asked: String,
        /// CUDA devices libtorch sees.
        count: i64,
    },
}

/// Picks the training device: `auto` is CUDA device 0 when libtorch sees one, else the CPU.
pub fn pick_device(choice: &str) -> Result<Device, DeviceError> {
    match choice {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        cuda if cuda == "cuda" || cuda.starts_with("cuda:") => {
            let index = match cuda.strip_prefix("cuda:") {
                None => 0,
                Some(i) => i.parse::<usize>().map_err(|_| DeviceError::Unknown(cuda.to_owned()))?,
            };
            let count = tch::Cuda::device_count();
            if (index as i64) < count {
                Ok(Device::Cuda(index))
            } else {
                Err(DeviceError::Missing {
                    asked: cuda.to_owned(),
                    count,
                })
            }
        }
        other => Err(DeviceError::Unknown(other.to_owned())),
    }
}

#[cfg(convsweep_cuda_stats)]
#[allow(unsafe_code)]
mod cuda {
    unsafe extern "C" {
        fn convsweep_cuda_peak_allocated(device: i32) -> i64;
        fn convsweep_cuda_reset_peak(device: i32);
        fn convsweep_cuda_autocast_dtype(bf16: i32) -> i32;
    }

    pub fn autocast_dtype(bf16: bool) -> bool {
        // SAFETY: plain C function; the shim catches every C++ exception and returns -1.
        unsafe { convsweep_cuda_autocast_dtype(i32::from(bf16)) == 0 }
    }

    pub fn peak(device: usize) -> u64 {
        // SAFETY: plain C function; the shim catches every C++ exception and returns -1.
        let bytes = unsafe { convsweep_cuda_peak_allocated(device as i32) };
        bytes.max(0) as u64
    }

    pub fn reset(device: usize) {
        // SAFETY: as above.
        unsafe { convsweep_cuda_reset_peak(device as i32) }
    }
}

/// Configures glibc's allocator for training on the CPU: large blocks come from the heap
/// instead of fresh `mmap`s, and freed memory is not handed back after every step.
///
/// libtorch allocates activations and gradients anew each step; above glibc's mmap threshold
/// (at most 32 MiB) every such block is a new mapping whose pages fault in again, which on the
/// benchmark machine made half of an LC model's step system time. [`release_free_memory`]
/// returns what a finished trial freed. The CLI's `--malloc-tuning false`
/// (`CONVSWEEP_MALLOC_TUNING=0`) leaves glibc's defaults by not calling this.
#[allow(unsafe_code)]
pub fn tune_cpu_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation policy; it touches no memory.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Hands memory freed by a finished trial back to the operating system.
#[allow(unsafe_code)]
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Peak resident memory of this process in bytes (Linux `VmHWM`).
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        })
        .map_or(0, |kb| kb * 1024)
}

/// Starts a new peak measurement on `device` (CUDA only; RSS peaks cannot be reset).
pub fn reset_peak(device: Device) {
    #[cfg(convsweep_cuda_stats)]
    if let Device::Cuda(i) = device {
        cuda::reset(i);
    }
    let _ = device;
}

/// Peak memory in bytes: CUDA peak allocation on a GPU, else the process's peak RSS.
pub fn peak_memory_bytes(device: Device) -> u64 {
    #[cfg(convsweep_cuda_stats)]
    if let Device::Cuda(i) = device {
        return cuda::peak(i);
    }
    let _ = device;
    peak_rss_bytes()
}

/// Why a device cannot train at `precision`, if it cannot.
pub fn precision_unsupported(device: Device, precision: Precision) -> Option<String> {
    if precision == Precision::Fp32 {
        return None;
    }
    let name = match precision {
        Precision::Bf16 => "bf16",
        _ => "fp16",
    };
    if !matches!(device, Device::Cuda(_)) {
        return Some(format!(
            "train.precision = \"{name}\" needs a CUDA device (autocast): this worker trains on {}, where only \"fp32\" is allowed",
            describe_device(device)
        ));
    }
    if precision == Precision::Bf16 && !cfg!(convsweep_cuda_stats) {
        return Some(
            "train.precision = \"bf16\" needs the autocast shim, which this build lacks (libtorch's CUDA headers were not found when it was built; see worker/build.rs): \"fp16\" and \"fp32\" work".into(),
        );
    }
    None
}

/// Runs `f` under CUDA autocast at `precision` (`f` itself for fp32 or off CUDA).
pub fn with_precision<T>(device: Device, precision: Precision, f: impl FnOnce() -> T) -> T {
    if precision == Precision::Fp32 || !matches!(device, Device::Cuda(_)) {
        return f();
    }
    // The dtype is per thread and trials may share threads: set it every time.
    #[cfg(convsweep_cuda_stats)]
    cuda::autocast_dtype(precision == Precision::Bf16);
    tch::autocast(true, f)
}

/// Names a device for people: `cuda:0` or `cpu (4 threads)`.
pub fn describe_device(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => format!("cpu ({} threads)", tch::get_num_threads()),
    }
}
