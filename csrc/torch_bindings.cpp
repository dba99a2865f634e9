// The one place where nanokern's op schemas are defined (TORCH_LIBRARY), plus the CPU kernels.
// CUDA kernels register into the same namespace from csrc/cuda/torch_bindings_cuda.cpp.
#include <Python.h>
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(nanokern, m) {
  // out[i, :] = cast_to(out.dtype, src[rows[i], :]); rows = None is the identity map.
  m.def("gather_cast(Tensor src, Tensor? rows, Tensor(a!) out) -> ()");
  // out = float8_e4m3fn of src[rows] per 128 x 128 block, scale_inv = 1 / each block's scale
  // (ue8m0: rounded up to a power of two first, float32 still).
  m.def("gather_quant_fp8(Tensor src, Tensor? rows, Tensor(a!) out, Tensor(b!) scale_inv, bool ue8m0=False) -> ()");
}

TORCH_LIBRARY_IMPL(nanokern, CPU, m) {
  m.impl("gather_cast", &nanokern::gather_cast_cpu);
  m.impl("gather_quant_fp8", &nanokern::gather_quant_fp8_cpu);
}

// Lets `import nanokern._C` load the library (and so run the registrations above).
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
