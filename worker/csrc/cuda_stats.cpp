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
