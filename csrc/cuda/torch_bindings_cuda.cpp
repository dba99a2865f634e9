// Registers the CUDA kernels of nanokern's ops (schemas: csrc/torch_bindings.cpp, in nanokern._C).
#include <Python.h>
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY_IMPL(nanokern, CUDA, m) {
  m.impl("gather_cast", &nanokern::gather_cast_cuda);
  m.impl("gather_quant_fp8", &nanokern::gather_quant_fp8_cuda);
}

// Lets `import nanokern._C_cuda` load the library (and so run the registration above).
extern "C" PyObject* PyInit__C_cuda(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C_cuda", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
