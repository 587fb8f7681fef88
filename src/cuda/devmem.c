#include "cuda/devmem.h"

#include "base/vec.h"

#include <stdlib.h>
#include <string.h>

typedef struct block {
    char *p;
    size_t bytes;
    unsigned tag; /* the recording that used it; 0 outside recordings */
} block;

typedef SDW_VEC(block) blocks;

struct sdw_devmem_owned {
    blocks set;
};

struct sdw_devmem {
    sdw_devmem_hooks h;
    blocks live;    /* sorted by address */
    blocks cache;   /* unordered */
    blocks retired; /* live blocks given up while a recording may use them (also in live) */
    size_t reserved;
    size_t peak; /* most reserved since sdw_devmem_take_peak */
    size_t owned_sets;
    unsigned tag, last_tag;
};

/* Sizes are rounded so that blocks of nearly the same size share a cache
 * bucket: 512 bytes below 1 MiB, 2 MiB above. */
static size_t round_bytes(size_t bytes)
{
    if (bytes <= ((size_t)1 << 20))
        return bytes ? (bytes + 511) & ~(size_t)511 : 512;
    return (bytes + ((size_t)2 << 20) - 1) & ~(((size_t)2 << 20) - 1);
}

/* Index of the first live block at an address >= p. */
static size_t live_lower(const sdw_devmem *m, const char *p)
{
    size_t lo = 0, hi = m->live.n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (m->live.v[mid].p < p)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

int sdw_devmem_new(sdw_devmem **out, const sdw_devmem_hooks *hooks, sdw_error *e)
{
    sdw_devmem *m = calloc(1, sizeof *m);
    if (!m)
        return sdw_fail(e, SDW_ENOMEM, "out of host memory");
    m->h = *hooks;
    *out = m;
    return SDW_OK;
}

static void raw_free(sdw_devmem *m, block b)
{
    m->reserved -= b.bytes;
    m->h.raw_free(m->h.ctx, b.p);
}

void sdw_devmem_destroy(sdw_devmem *m)
{
    if (!m)
        return;
    blocks *all[] = {&m->live, &m->cache};
    for (size_t k = 0; k < sizeof all / sizeof *all; k++)
        for (size_t i = 0; i < all[k]->n; i++)
            raw_free(m, all[k]->v[i]);
    free(m->live.v);
    free(m->cache.v);
    free(m->retired.v);
    free(m);
}

size_t sdw_devmem_reserved(const sdw_devmem *m)
{
    return m->reserved;
}

size_t sdw_devmem_take_peak(sdw_devmem *m)
{
    size_t p = m->peak > m->reserved ? m->peak : m->reserved;
    m->peak = m->reserved;
    return p;
}

void sdw_devmem_trim(sdw_devmem *m)
{
    if (m->tag)
        return;
    while (m->cache.n)
        raw_free(m, m->cache.v[--m->cache.n]);
}

int sdw_devmem_alloc(sdw_devmem *m, size_t want, void **out, sdw_error *e)
{
    size_t bytes = round_bytes(want);
    block b = {NULL, bytes, 0};
    for (size_t i = 0; i < m->cache.n; i++)
        if (m->cache.v[i].bytes == bytes) {
            b = m->cache.v[i];
            m->cache.v[i] = m->cache.v[--m->cache.n];
            break;
        }
    if (!b.p) {
        int rc = m->h.raw_alloc(m->h.ctx, bytes, (void **)&b.p, e);
        /* Giving memory back may synchronise, which would break a
         * recording: there the caller's recording fails instead. */
        if (rc == SDW_ENOMEM && !m->tag && m->cache.n) {
            sdw_devmem_trim(m);
            rc = m->h.raw_alloc(m->h.ctx, bytes, (void **)&b.p, e);
        }
        if (rc)
            return rc;
        m->reserved += bytes;
        if (m->reserved > m->peak)
            m->peak = m->reserved;
    }
    b.tag = m->tag;
    /* Room first, so that a failure leaves nothing half done. */
    if (sdw_vec_push(&m->live, b, NULL)) {
        if (sdw_vec_push(&m->cache, b, NULL))
            raw_free(m, b);
        return sdw_fail(e, SDW_ENOMEM, "out of host memory");
    }
    size_t at = live_lower(m, b.p);
    memmove(m->live.v + at + 1, m->live.v + at, (m->live.n - 1 - at) * sizeof *m->live.v);
    m->live.v[at] = b;
    *out = b.p;
    return SDW_OK;
}

/* Removes p from the live blocks; 0 when it is not one. */
static int unlive(sdw_devmem *m, void *p, block *out)
{
    if (!p)
        return 0;
    size_t at = live_lower(m, p);
    if (at == m->live.n || m->live.v[at].p != p)
        return 0;
    *out = m->live.v[at];
    memmove(m->live.v + at, m->live.v + at + 1, (m->live.n - at - 1) * sizeof *m->live.v);
    m->live.n--;
    return 1;
}

void sdw_devmem_free(sdw_devmem *m, void *p)
{
    block b;
    if (!unlive(m, p, &b))
        return;
    if (m->h.released)
        m->h.released(m->h.ctx, b.p, b.bytes);
    /* Given back during a recording: a replay may write it. */
    b.tag = m->tag;
    if (sdw_vec_push(&m->cache, b, NULL) && !m->tag)
        raw_free(m, b);
    /* Without host memory for the cache entry during a recording the block
     * is lost until destroy would have found it: it cannot be freed there,
     * and a recording without host memory fails soon anyway. */
}

void sdw_devmem_record_begin(sdw_devmem *m)
{
    m->last_tag = m->last_tag + 1 ? m->last_tag + 1 : 1;
    m->tag = m->last_tag;
}

int sdw_devmem_recording(const sdw_devmem *m)
{
    return m->tag != 0;
}

static void untag(blocks *b, unsigned tag)
{
    for (size_t i = 0; i < b->n; i++)
        if (b->v[i].tag == tag)
            b->v[i].tag = 0;
}

int sdw_devmem_record_end(sdw_devmem *m, int keep, sdw_devmem_owned **owned, sdw_error *e)
{
    unsigned tag = m->tag;
    m->tag = 0;
    int rc = SDW_OK;
    for (size_t i = 0; keep && !rc && i < m->live.n; i++)
        if (m->live.v[i].tag == tag)
            rc = sdw_fail(e, SDW_EUNSUPPORTED,
                          "recording: a block of %zu bytes taken while recording is still in use after it",
                          m->live.v[i].bytes);
    sdw_devmem_owned *o = NULL;
    if (keep && !rc && !(o = calloc(1, sizeof *o)))
        rc = sdw_fail(e, SDW_ENOMEM, "out of host memory");
    for (size_t i = 0; o && !rc && i < m->cache.n; i++)
        if (m->cache.v[i].tag == tag && sdw_vec_push(&o->set, m->cache.v[i], NULL))
            rc = sdw_fail(e, SDW_ENOMEM, "out of host memory");
    if (rc || !keep) {
        if (o)
            free(o->set.v);
        free(o);
        untag(&m->cache, tag);
        untag(&m->live, tag);
        return rc;
    }
    for (size_t i = 0; i < m->cache.n;)
        if (m->cache.v[i].tag == tag)
            m->cache.v[i] = m->cache.v[--m->cache.n];
        else
            i++;
    m->owned_sets++;
    *owned = o;
    return SDW_OK;
}

void sdw_devmem_owned_release(sdw_devmem *m, sdw_devmem_owned *o)
{
    if (!o)
        return;
    for (size_t i = 0; i < o->set.n; i++) {
        block b = o->set.v[i];
        b.tag = 0;
        if (sdw_vec_push(&m->cache, b, NULL))
            raw_free(m, b);
    }
    free(o->set.v);
    free(o);
    if (--m->owned_sets == 0 && !m->tag)
        while (m->retired.n)
            sdw_devmem_free(m, m->retired.v[--m->retired.n].p);
}

void sdw_devmem_retire(sdw_devmem *m, void *p)
{
    size_t at = p ? live_lower(m, p) : m->live.n;
    if (at == m->live.n || m->live.v[at].p != p)
        return;
    if (m->owned_sets || m->tag) {
        /* Without host memory to note it, it stays live until destroy:
         * lost, but never handed out under a replay. */
        sdw_vec_push(&m->retired, m->live.v[at], NULL);
        return;
    }
    sdw_devmem_free(m, p);
}
