/* Helpers shared by the tests that compare with reference tensors: reading
 * a fixture tensor as float32, and the error measure every numeric test
 * states (max |got - want| / max |want|; NaN counts as infinitely wrong). */
#ifndef SDW_TEST_FIXTURE_H
#define SDW_TEST_FIXTURE_H

#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/safetensors.h"

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

/* Writes f's floating tensors again as a single-file (LDM) checkpoint at
 * path: each name becomes prefix + its entry in map (the name itself when
 * map is NULL), in its own dtype. attn_as_conv stores 2-D weights whose new
 * name contains ".attn_1." as [o,i,1,1], as the original VAE checkpoints do.
 * Returns 0, or -1 after a TAP diagnostic. */
static inline int fixture_write_ldm(const sdw_st_file *f, json_object *map, const char *prefix, int attn_as_conv,
                                    const char *path)
{
    size_t n = 0;
    sdw_st_entry *ents = calloc(f->ntensors, sizeof *ents);
    char **names = calloc(f->ntensors, sizeof *names);
    float **data = calloc(f->ntensors, sizeof *data);
    int64_t(*shapes)[4] = calloc(f->ntensors, sizeof *shapes);
    int rc = 0;
    for (size_t i = 0; i < f->ntensors && !rc; i++) {
        const sdw_st_tensor *t = &f->tensors[i];
        json_object *to = NULL;
        if (t->dtype != SDW_DT_F32 && t->dtype != SDW_DT_F16 && t->dtype != SDW_DT_BF16)
            continue;
        if (map && !json_object_object_get_ex(map, t->name, &to)) {
            printf("# %s has no LDM name\n", t->name);
            rc = -1;
            break;
        }
        size_t len = strlen(prefix) + strlen(to ? json_object_get_string(to) : t->name) + 1;
        names[n] = malloc(len);
        snprintf(names[n], len, "%s%s", prefix, to ? json_object_get_string(to) : t->name);
        data[n] = fixture_f32(f, t->name, NULL);
        int conv = attn_as_conv && t->ndim == 2 && strstr(names[n], ".attn_1.");
        shapes[n][0] = t->shape[0], shapes[n][1] = t->ndim > 1 ? t->shape[1] : 1, shapes[n][2] = shapes[n][3] = 1;
        ents[n] = (sdw_st_entry){names[n], t->dtype, conv ? 4 : t->ndim, conv ? shapes[n] : t->shape, data[n]};
        n++;
    }
    sdw_error e;
    if (!rc && sdw_st_write(path, ents, n, NULL, 0, &e)) {
        printf("# %s\n", e.msg);
        rc = -1;
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]), free(data[i]);
    free(ents), free(names), free(data), free(shapes);
    return rc;
}

#endif
