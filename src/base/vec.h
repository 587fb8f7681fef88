/* One growable vector for every list the engine and the tools build up
 * (conv plans, cached device blocks, profile rows, tensor names, token ids):
 * a typed struct of {v, n, cap} whose storage doubles as it fills, so that
 * pointers into v hold only until the next push or reserve. nginx's
 * ngx_array, typed by a macro so that elements read as v[i].
 *
 *     typedef SDW_VEC(block) blocks;
 *     blocks b = {0};
 *     if (sdw_vec_push(&b, x, e)) return e->code;
 *     ... b.v[i] ...
 *     sdw_vec_free(&b);
 */
#ifndef SDW_VEC_H
#define SDW_VEC_H

#include "base/err.h"

#include <stddef.h>
#include <stdlib.h>

#define SDW_VEC(T)       \
    struct {             \
        T *v;            \
        size_t n, cap;   \
    }

/* Room for `need` elements of `size` bytes in *v (capacity *cap): 0, or
 * SDW_ENOMEM with e filled and nothing changed. */
int sdw_vec_grow(void **v, size_t *cap, size_t need, size_t size, sdw_error *e);

#define sdw_vec_reserve(vec, need, e) sdw_vec_grow((void **)&(vec)->v, &(vec)->cap, (need), sizeof *(vec)->v, (e))
/* Appends x; 0, or SDW_ENOMEM with the vector unchanged. */
#define sdw_vec_push(vec, x, e) \
    (sdw_vec_reserve((vec), (vec)->n + 1, (e)) ? SDW_ENOMEM : ((vec)->v[(vec)->n++] = (x), SDW_OK))
#define sdw_vec_free(vec) (free((vec)->v), (vec)->v = NULL, (vec)->n = (vec)->cap = 0)

#endif
