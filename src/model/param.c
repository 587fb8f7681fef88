#include "model/param.h"

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

int sdw_param_load_weight(sdw_tensor *t, sdw_backend *be, const sdw_weights *w, const char *name, int ndim,
                          const int64_t *shape, sdw_error *e)
{
    uint16_t *halves = NULL;
    int rc = sdw_weights_load_f16(w, name, ndim, shape, &halves, e);
    if (rc < 0)
        return rc;
    if (rc > 0) {
        float *host = NULL;
        if ((rc = sdw_weights_load(w, name, ndim, shape, &host, e)))
            return rc;
        rc = sdw_tensor_from_host(t, be, ndim, shape, host, e);
        free(host);
        return rc;
    }
    rc = sdw_tensor_weight_f16(t, be, ndim, shape, halves, e);
    free(halves);
    return rc;
}
