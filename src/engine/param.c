#include "param.h"

#include <stdlib.h>

int sdw_param_load(sdw_tensor *t, sdw_backend *be, const sdw_weights *w, const char *name, int ndim,
                   const int64_t *shape, sdw_error *e)
{
    float *host = NULL;
    int rc = sdw_weights_load(w, name, ndim, shape, &host, e);
    if (rc)
        return rc;
    rc = sdw_tensor_from_host(t, be, ndim, shape, host, e);
    free(host);
    return rc;
}
