// Peak CUDA allocation of libtorch's caching allocator (what torch.cuda.max_memory_allocated
// reports), for convsweep's trial cost. C entry points that never throw.
#include <c10/cuda/CUDACachingAllocator.h>

#include <cstdint>

extern "C" int64_t convsweep_cuda_peak_allocated(int32_t device) {
  try {
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
    return stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
  } catch (...) {
    return -1;
  }
}

extern "C" void convsweep_cuda_reset_peak(int32_t device) {
  try {
    c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(device));
  } catch (...) {
  }
}

// The dtype CUDA autocast casts to on this thread (tch's `autocast` only switches it on, at
// libtorch's default float16): 1 for bfloat16, 0 for float16. Returns 0, or -1 on an error.
#include <ATen/autocast_mode.h>

extern "C" int convsweep_cuda_autocast_dtype(int32_t bf16) {
  try {
    at::autocast::set_autocast_dtype(at::kCUDA, bf16 ? at::kBFloat16 : at::kHalf);
    return 0;
  } catch (...) {
    return -1;
  }
}
