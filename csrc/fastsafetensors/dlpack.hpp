// The DLPack ABI (v1.x, with the legacy unversioned struct), restated for this engine: the
// structs consumers such as NumPy, PyTorch, JAX and CuPy read out of a "dltensor" capsule.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

namespace fst {

enum DLDeviceType : int32_t { kDLCPU = 1, kDLCUDA = 2, kDLCUDAHost = 3 };
enum DLDataTypeCode : uint8_t { kDLInt = 0, kDLUInt = 1, kDLFloat = 2, kDLBfloat = 4, kDLComplex = 5, kDLBool = 6 };

struct DLDevice {
  int32_t device_type;
  int32_t device_id;
};

struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};

struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // null: compact row-major
  uint64_t byte_offset;
};

struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};

struct DLPackVersion {
  uint32_t major;
  uint32_t minor;
};

struct DLManagedTensorVersioned {
  DLPackVersion version;
  void* manager_ctx;
  void (*deleter)(DLManagedTensorVersioned* self);
  uint64_t flags;
  DLTensor dl_tensor;
};

inline constexpr DLPackVersion kDLPackVersion{1, 1};
inline constexpr const char* kCapsuleName = "dltensor";
inline constexpr const char* kCapsuleNameVersioned = "dltensor_versioned";
inline constexpr const char* kCapsuleNameUsed = "used_dltensor";
inline constexpr const char* kCapsuleNameUsedVersioned = "used_dltensor_versioned";

class Buffer;

// One tensor inside a buffer, as it will be handed to a consumer.
struct TensorView {
  std::shared_ptr<Buffer> owner;
  uint64_t offset = 0;
  std::vector<int64_t> shape;
  DLDataType dtype{kDLUInt, 8, 1};
};

// Each returns a fresh managed tensor holding a reference to view.owner; the consumer's call of
// the deleter drops it.
DLManagedTensor* to_dlpack(const TensorView& view);
DLManagedTensorVersioned* to_dlpack_versioned(const TensorView& view);

}  // namespace fst
