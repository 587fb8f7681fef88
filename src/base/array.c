#include "base/array.h"

#include <stdint.h>
#include <stdlib.h>

void sdw_array_init(sdw_array *a, size_t size)
{
    *a = (sdw_array){NULL, 0, 0, size};
}

int sdw_array_reserve(sdw_array *a, size_t n, sdw_error *e)
{
    if (n <= a->cap)
        return SDW_OK;
    size_t nc = a->cap ? a->cap : 16;
    while (nc < n)
        nc = nc > SIZE_MAX / 2 ? n : nc * 2;
    if (nc > SIZE_MAX / a->size)
        return sdw_fail(e, SDW_ENOMEM, "array of %zu elements of %zu bytes: too large", n, a->size);
    void *p = realloc(a->elts, nc * a->size);
    if (!p)
        return sdw_fail(e, SDW_ENOMEM, "out of memory growing an array to %zu elements", nc);
    a->elts = p;
    a->cap = nc;
    return SDW_OK;
}

void *sdw_array_push(sdw_array *a, sdw_error *e)
{
    if (a->n == SIZE_MAX || sdw_array_reserve(a, a->n + 1, e))
        return NULL;
    return sdw_array_at(a, a->n++);
}

void sdw_array_free(sdw_array *a)
{
    free(a->elts);
    *a = (sdw_array){NULL, 0, 0, a->size};
}
