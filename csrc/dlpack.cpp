#include "fastsafetensors/dlpack.hpp"

#include "fastsafetensors/buffer.hpp"

namespace fst {
namespace {

// What a managed tensor keeps alive: the buffer and the shape array the DLTensor points at.
struct Context {
  std::shared_ptr<Buffer> owner;
  std::vector<int64_t> shape;
};

template <typename Managed>
Managed* make_managed(const TensorView& view) {
  auto* ctx = new Context{view.owner, view.shape};
  auto* m = new Managed{};
  m->manager_ctx = ctx;
  m->deleter = [](Managed* self) {
    delete static_cast<Context*>(self->manager_ctx);
    delete self;
  };
  DLTensor& t = m->dl_tensor;
  t.data = view.owner->data() + view.offset;
  t.device = view.owner->device();
  t.ndim = static_cast<int32_t>(ctx->shape.size());
  t.dtype = view.dtype;
  t.shape = ctx->shape.empty() ? nullptr : ctx->shape.data();
  t.strides = nullptr;
  t.byte_offset = 0;
  return m;
}

}  // namespace

DLManagedTensor* to_dlpack(const TensorView& view) { return make_managed<DLManagedTensor>(view); }

DLManagedTensorVersioned* to_dlpack_versioned(const TensorView& view) {
  auto* m = make_managed<DLManagedTensorVersioned>(view);
  m->version = kDLPackVersion;
  m->flags = 0;
  return m;
}

}  // namespace fst
