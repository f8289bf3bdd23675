// The depthwise plane kernels compiled with -mavx2 -mfma (CMakeLists.txt):
// chosen at run time when the CPU has them.
#include "depthwise_planes_impl.h"

CNNK_DEPTHWISE_PLANE_KERNELS(avx2_kernels)
