/* Helpers shared by the tests that compare with reference tensors: reading
 * a fixture tensor as float32, and the error measure every numeric test
 * states (max |got - want| / max |want|; NaN counts as infinitely wrong). */
#ifndef SDW_TEST_FIXTURE_H
#define SDW_TEST_FIXTURE_H

#include <math.h>
#include <stdlib.h>

#include "safetensors.h"

/* f's tensor `name` as a malloc'd float32 array (NULL when absent or not
 * floating point); *info, when given, receives its description. */
static inline float *fixture_f32(const sdw_st_file *f, const char *name, const sdw_st_tensor **info)
{
    const sdw_st_tensor *t = sdw_st_find(f, name);
    if (!t)
        return NULL;
    float *p = malloc((size_t)t->numel * sizeof *p);
    sdw_error e;
    if (!p || sdw_st_to_f32(t, p, &e)) {
        free(p);
        return NULL;
    }
    if (info)
        *info = t;
    return p;
}

static inline double max_rel_err(const float *got, const float *want, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(got[i]))
            return INFINITY;
        double d = fabs((double)got[i] - want[i]);
        num = d > num ? d : num;
        den = fabs(want[i]) > den ? fabs(want[i]) : den;
    }
    return num / (den > 0 ? den : 1);
}

#endif
