/* A caching allocator for an accelerator's memory, and the ownership rules
 * that let a recorded sequence of kernels (a CUDA graph) be replayed safely.
 *
 * Freed blocks are kept by rounded size and handed out again, so once a
 * step has run, later steps of the same shapes never reach the driver. A
 * recording tags every block it takes or gives back; when it ends, the
 * tagged blocks in the cache become the recording's own (an owned set) and
 * nothing else is given them until the set is released, since every replay
 * writes them. A tagged block still live when the recording ends would be
 * written by replays behind its owner's back, so such a recording is
 * refused.
 *
 * The memory calls themselves are hooks, so the bookkeeping runs on any
 * machine: tests/test_devmem.c drives it with malloc. Not thread-safe: one
 * backend, one thread. */
#ifndef SDW_DEVMEM_H
#define SDW_DEVMEM_H

#include <stddef.h>

#include "base/err.h"

typedef struct sdw_devmem_hooks {
    void *ctx;
    /* Obtains bytes of memory: SDW_ENOMEM (then the cache is emptied and
     * the call retried once, outside recordings) or another error, with a
     * message. */
    int (*raw_alloc)(void *ctx, size_t bytes, void **p, sdw_error *e);
    void (*raw_free)(void *ctx, void *p);
    /* The live block [p, p + bytes) is being given back and may be handed
     * out again: drop whatever was derived from its contents. May be NULL;
     * may free other blocks. */
    void (*released)(void *ctx, void *p, size_t bytes);
} sdw_devmem_hooks;

typedef struct sdw_devmem sdw_devmem;
/* The blocks a recording used; see sdw_devmem_record_end. */
typedef struct sdw_devmem_owned sdw_devmem_owned;

int sdw_devmem_new(sdw_devmem **m, const sdw_devmem_hooks *hooks, sdw_error *e);
/* Gives every block back to raw_free: live, cached and retired ones, and
 * those of owned sets not yet released (the sets themselves stay the
 * caller's to free with sdw_devmem_owned_release before, or to leak). */
void sdw_devmem_destroy(sdw_devmem *m);

int sdw_devmem_alloc(sdw_devmem *m, size_t bytes, void **p, sdw_error *e);
/* p NULL or not from this allocator: nothing happens. */
void sdw_devmem_free(sdw_devmem *m, void *p);
/* Bytes obtained from raw_alloc and not yet given back. */
size_t sdw_devmem_reserved(const sdw_devmem *m);
/* The most bytes reserved at once since the previous call (or since
 * sdw_devmem_new); counting starts again from what is reserved now. */
size_t sdw_devmem_take_peak(sdw_devmem *m);
/* Gives the cached blocks back to raw_free (not during a recording). */
void sdw_devmem_trim(sdw_devmem *m);

/* Starts tagging: the blocks taken and given back from now on are the
 * recording's. */
void sdw_devmem_record_begin(sdw_devmem *m);
int sdw_devmem_recording(const sdw_devmem *m);
/* Stops tagging. With keep, the tagged blocks in the cache go into *owned
 * (SDW_EUNSUPPORTED, nothing owned, when a tagged block is still live);
 * without keep, or on failure, they are ordinary cached blocks again. */
int sdw_devmem_record_end(sdw_devmem *m, int keep, sdw_devmem_owned **owned, sdw_error *e);
/* The recording is gone: its blocks go back to the cache, and once no set
 * is owned any more, retired blocks are freed. o may be NULL. */
void sdw_devmem_owned_release(sdw_devmem *m, sdw_devmem_owned *o);
/* Frees the live block p, or, while a set is owned or a recording runs,
 * keeps it aside until none is: a block that a recorded kernel may still
 * use (a convolution workspace being replaced by a larger one). */
void sdw_devmem_retire(sdw_devmem *m, void *p);

#endif
