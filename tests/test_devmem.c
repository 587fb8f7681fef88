/* The device-memory allocator's bookkeeping (src/cuda/devmem.c), with
 * malloc standing in for cudaMalloc: reuse by size, the retry after an
 * out-of-memory failure, and the ownership rules of recordings (CUDA
 * graphs): the blocks a recording used are never handed out while it lives,
 * a recording that leaves a block live is refused, retired blocks wait for
 * the last recording, and everything obtained is given back. */
#include <stdlib.h>
#include <string.h>

#include "cuda/devmem.h"
#include "tap.h"

typedef struct fake {
    size_t cap;          /* raw_alloc fails with SDW_ENOMEM beyond this many bytes held */
    size_t held, allocs, frees, released;
    size_t released_bytes;
} fake;

/* Blocks carry their size in front, so that raw_free can account them. */
static int fake_alloc(void *ctx, size_t bytes, void **p, sdw_error *e)
{
    fake *f = ctx;
    if (f->held + bytes > f->cap)
        return sdw_fail(e, SDW_ENOMEM, "fake device: %zu bytes held, %zu more asked, cap %zu", f->held, bytes,
                        f->cap);
    size_t *b = malloc(sizeof *b + bytes);
    if (!b)
        return sdw_fail(e, SDW_EDEVICE, "malloc");
    *b = bytes;
    f->held += bytes;
    f->allocs++;
    *p = b + 1;
    return SDW_OK;
}

static void fake_free(void *ctx, void *p)
{
    fake *f = ctx;
    size_t *b = (size_t *)p - 1;
    f->held -= *b;
    f->frees++;
    free(b);
}

static void fake_released(void *ctx, void *p, size_t bytes)
{
    fake *f = ctx;
    (void)p;
    f->released++;
    f->released_bytes += bytes;
}

static sdw_devmem *make(fake *f, size_t cap)
{
    memset(f, 0, sizeof *f);
    f->cap = cap;
    sdw_devmem_hooks h = {.ctx = f, .raw_alloc = fake_alloc, .raw_free = fake_free, .released = fake_released};
    sdw_devmem *m = NULL;
    sdw_error e;
    if (sdw_devmem_new(&m, &h, &e))
        abort();
    return m;
}

static void *get(sdw_devmem *m, size_t bytes)
{
    void *p = NULL;
    sdw_error e;
    return sdw_devmem_alloc(m, bytes, &p, &e) ? NULL : p;
}

static void test_reuse(void)
{
    fake f;
    sdw_devmem *m = make(&f, (size_t)1 << 30);
    void *a = get(m, 1000), *b = get(m, 3 << 20);
    tap_ok(a && b && f.allocs == 2 && sdw_devmem_reserved(m) == 1024 + (4 << 20),
           "sizes are rounded (512 B below 1 MiB, 2 MiB above): %zu bytes reserved", sdw_devmem_reserved(m));
    sdw_devmem_free(m, a);
    tap_ok(f.released == 1 && f.released_bytes == 1024, "a free reports the block's bytes to the released hook");
    void *c = get(m, 1020);
    tap_ok(c == a && f.allocs == 2, "a block of the same rounded size comes back from the cache");
    void *d = get(m, 600);
    tap_ok(d && d != a && f.allocs == 3, "another size is a new block");
    sdw_devmem_free(m, (char *)b + 8);
    sdw_devmem_free(m, NULL);
    tap_ok(f.released == 1, "freeing an address inside a block, or NULL, does nothing");
    size_t top = 1024 + (4 << 20) + 1024;
    size_t p1 = sdw_devmem_take_peak(m);
    sdw_devmem_free(m, b);
    sdw_devmem_trim(m);
    tap_ok(f.frees == 1 && sdw_devmem_reserved(m) == 1024 + 1024, "trim gives the cached blocks back");
    size_t p2 = sdw_devmem_take_peak(m), p3 = sdw_devmem_take_peak(m);
    tap_ok(p1 == top && p2 == top && p3 == 2048,
           "the peak is the most ever reserved (%zu), kept until taken (%zu), then what is reserved (%zu)", p1, p2,
           p3);
    sdw_devmem_destroy(m);
    tap_ok(f.frees == f.allocs && f.held == 0, "destroy gives every block back (%zu of %zu)", f.frees, f.allocs);
}

static void test_out_of_memory(void)
{
    fake f;
    sdw_devmem *m = make(&f, 8 << 20);
    void *a = get(m, 4 << 20), *b = get(m, 2 << 20);
    sdw_devmem_free(m, a);
    void *c = get(m, 6 << 20);
    tap_ok(c && f.frees == 1 && sdw_devmem_reserved(m) == (8 << 20),
           "out of memory: the cache is emptied and the call retried");
    void *d = NULL;
    sdw_error e = {0};
    int rc = sdw_devmem_alloc(m, 1 << 20, &d, &e);
    tap_ok(rc == SDW_ENOMEM && !d && strstr(e.msg, "fake device"), "still out of memory: the hook's error: %s",
           e.msg);
    sdw_devmem_free(m, c);
    sdw_devmem_record_begin(m);
    rc = sdw_devmem_alloc(m, 4 << 20, &d, &e);
    tap_ok(rc == SDW_ENOMEM && f.frees == 1, "while recording the cache is not emptied (that would synchronise)");
    sdw_devmem_record_end(m, 0, NULL, &e);
    sdw_devmem_free(m, b);
    sdw_devmem_destroy(m);
    tap_ok(f.held == 0, "all given back");
}

static void test_recording(void)
{
    fake f;
    sdw_error e = {0};
    sdw_devmem *m = make(&f, (size_t)1 << 30);
    void *input = get(m, 4096), *before = get(m, 8192), *spare = get(m, 2048);
    sdw_devmem_free(m, spare);

    /* The recorded step: temporaries from the cache and new ones, a block
     * from before the recording given back inside it. */
    sdw_devmem_record_begin(m);
    tap_ok(sdw_devmem_recording(m), "recording");
    void *t1 = get(m, 2048), *t2 = get(m, 65536);
    sdw_devmem_free(m, t1);
    void *t3 = get(m, 2048);
    sdw_devmem_free(m, t3);
    sdw_devmem_free(m, t2);
    sdw_devmem_free(m, before);
    sdw_devmem_owned *o = NULL;
    int rc = sdw_devmem_record_end(m, 1, &o, &e);
    tap_ok(rc == 0 && o && !sdw_devmem_recording(m), "a recording that gives back all it took is kept");
    tap_ok(t1 == spare && t3 == spare, "inside the recording, blocks are reused as usual");

    size_t allocs = f.allocs;
    void *n1 = get(m, 2048), *n2 = get(m, 65536), *n3 = get(m, 8192);
    tap_ok(n1 != spare && n2 != t2 && n3 != before && f.allocs == allocs + 3,
           "while it is owned, no block the recording used is handed out");
    tap_ok(n1 != input && n2 != input && n3 != input, "live blocks stay live");
    sdw_devmem_free(m, n1), sdw_devmem_free(m, n2), sdw_devmem_free(m, n3);

    sdw_devmem_owned_release(m, o);
    void *r1 = get(m, 2048), *r2 = get(m, 65536), *r3 = get(m, 8192);
    int back = (r1 == spare || r1 == n1) && (r2 == t2 || r2 == n2) && (r3 == before || r3 == n3);
    tap_ok(back && f.allocs == allocs + 3, "released, they are ordinary cached blocks again");
    sdw_devmem_free(m, r1), sdw_devmem_free(m, r2), sdw_devmem_free(m, r3), sdw_devmem_free(m, input);
    sdw_devmem_destroy(m);
    tap_ok(f.held == 0 && f.frees == f.allocs, "all given back");
}

static void test_refused(void)
{
    fake f;
    sdw_error e = {0};
    sdw_devmem *m = make(&f, (size_t)1 << 30);
    sdw_devmem_record_begin(m);
    void *kept = get(m, 4096), *tmp = get(m, 1024);
    sdw_devmem_free(m, tmp);
    sdw_devmem_owned *o = NULL;
    int rc = sdw_devmem_record_end(m, 1, &o, &e);
    tap_ok(rc == SDW_EUNSUPPORTED && !o && strstr(e.msg, "4096 bytes"),
           "a recording that leaves a block live is refused: %s", e.msg);
    void *again = get(m, 1024);
    tap_ok(again == tmp, "after a refused recording its blocks are ordinary again");
    sdw_devmem_free(m, again);

    sdw_devmem_record_begin(m);
    void *x = get(m, 1024);
    sdw_devmem_free(m, x);
    rc = sdw_devmem_record_end(m, 0, &o, &e);
    tap_ok(rc == 0 && get(m, 1024) == x, "an abandoned recording owns nothing");
    sdw_devmem_free(m, x), sdw_devmem_free(m, kept);
    sdw_devmem_destroy(m);
    tap_ok(f.held == 0, "all given back");
}

static void test_retire(void)
{
    fake f;
    sdw_error e = {0};
    sdw_devmem *m = make(&f, (size_t)1 << 30);
    void *ws = get(m, 1 << 20);
    sdw_devmem_record_begin(m);
    void *t = get(m, 512);
    sdw_devmem_free(m, t);
    sdw_devmem_owned *o1 = NULL, *o2 = NULL;
    sdw_devmem_record_end(m, 1, &o1, &e);
    sdw_devmem_record_begin(m);
    sdw_devmem_record_end(m, 1, &o2, &e);
    sdw_devmem_retire(m, ws);
    tap_ok(f.released == 1 && get(m, 1 << 20) != ws, "a retired block is not handed out while recordings live");
    sdw_devmem_owned_release(m, o1);
    tap_ok(f.released == 1, "nor while one of them does");
    sdw_devmem_owned_release(m, o2);
    tap_ok(f.released == 2 && get(m, 1 << 20) == ws, "then it is given back");
    void *w2 = get(m, 3 << 20);
    sdw_devmem_retire(m, w2);
    tap_ok(f.released == 3 && get(m, 3 << 20) == w2, "with no recording, retiring is freeing");
    sdw_devmem_destroy(m);
    tap_ok(f.held == 0 && f.frees == f.allocs, "all given back, retired blocks once");
}

int main(void)
{
    test_reuse();
    test_out_of_memory();
    test_recording();
    test_refused();
    test_retire();
    return tap_done();
}
