#include "base/vec.h"

#include <stdint.h>

int sdw_vec_grow(void **v, size_t *cap, size_t need, size_t size, sdw_error *e)
{
    if (need <= *cap)
        return SDW_OK;
    size_t nc = *cap ? *cap : 16;
    while (nc < need)
        nc = nc > SIZE_MAX / 2 ? need : nc * 2;
    if (nc > SIZE_MAX / size)
        return sdw_fail(e, SDW_ENOMEM, "a list of %zu elements of %zu bytes is too large", need, size);
    void *p = realloc(*v, nc * size);
    if (!p)
        return sdw_fail(e, SDW_ENOMEM, "out of memory growing a list to %zu elements", nc);
    *v = p;
    *cap = nc;
    return SDW_OK;
}
