/* One growable array of fixed-size elements, after nginx's ngx_array: the
 * elements in one block that doubles as it fills, so that pointers into it
 * hold only until the next push or reserve. Every list the engine and the
 * tools build up (plans, cached blocks, profile rows, tensor names, token
 * ids) is one of these. */
#ifndef SDW_ARRAY_H
#define SDW_ARRAY_H

#include "base/err.h"

#include <stddef.h>

typedef struct sdw_array {
    void *elts;
    size_t n;       /* elements in use */
    size_t cap;     /* elements allocated */
    size_t size;    /* bytes per element */
} sdw_array;

/* An empty array of elements of `size` bytes; it allocates on first use. */
void sdw_array_init(sdw_array *a, size_t size);
/* Room for n elements in all (SDW_ENOMEM, with nothing changed, when there
 * is not enough memory or n * size overflows). */
int sdw_array_reserve(sdw_array *a, size_t n, sdw_error *e);
/* A new, uninitialised element at the end; NULL with e filled on SDW_ENOMEM. */
void *sdw_array_push(sdw_array *a, sdw_error *e);
/* Frees the elements; the array is empty again, with the same size. */
void sdw_array_free(sdw_array *a);

static inline void *sdw_array_at(const sdw_array *a, size_t i)
{
    return (char *)a->elts + i * a->size;
}

#endif
