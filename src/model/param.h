/* Model parameters: a named tensor of a model part, shape-checked, converted
 * to float32 and placed in the backend's memory (in its storage type). */
#ifndef SDW_PARAM_H
#define SDW_PARAM_H

#include "model/model.h"
#include "tensor/tensor.h"

/* Loads w's tensor `name` (which must have exactly the given shape) into t. */
int sdw_param_load(sdw_tensor *t, sdw_backend *be, const sdw_weights *w, const char *name, int ndim,
                   const int64_t *shape, sdw_error *e);
/* The same for the weight of a linear layer or convolution, which the CPU
 * backend keeps as halves when the file stores halves. */
int sdw_param_load_weight(sdw_tensor *t, sdw_backend *be, const sdw_weights *w, const char *name, int ndim,
                          const int64_t *shape, sdw_error *e);

#endif
