// The depthwise plane kernels with the baseline instruction set (any CPU).
#include "depthwise_planes_impl.h"

CNNK_DEPTHWISE_PLANE_KERNELS(portable_kernels)
