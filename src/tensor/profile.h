/* Per-op timings: where a backend's time goes, by op and shape.
 *
 * While a profile is attached to a backend (sdw_backend_profile), every
 * sdw_op_* first waits for the backend's earlier work, then runs, waits for
 * itself, and adds its wall time (and, for products, convolutions and
 * attention, its floating-point operations) to the row of its op and
 * shapes. Recording graphs is refused meanwhile, so every step runs op by
 * op. The waits give each op's own time, launch included, and make the whole
 * slower than a normal run: a profile says where the time goes, not how long
 * a run takes. Uploads and downloads are not counted. */
#ifndef SDW_PROFILE_H
#define SDW_PROFILE_H

#include <stdint.h>
#include <stdio.h>

#include "tensor/tensor.h"

typedef struct sdw_profile sdw_profile;

int sdw_profile_new(sdw_profile **p, sdw_error *e);
void sdw_profile_free(sdw_profile *p);
/* Attaches p to be; NULL detaches. p must outlive the attachment. */
void sdw_backend_profile(sdw_backend *be, sdw_profile *p);

/* What a row holds: op and shapes ("conv2d 2x320x64x64 * 320x320x3x3"),
 * calls, seconds in all, floating-point operations in all (0 for ops that
 * are moves and elementwise arithmetic). */
typedef struct sdw_profile_row {
    char what[112];
    int64_t calls;
    double seconds, flops;
} sdw_profile_row;
/* The rows, most time first; *n of them, valid until the next op. */
const sdw_profile_row *sdw_profile_rows(sdw_profile *p, size_t *n);
/* A table of the `most` costliest rows, then the totals per op. */
void sdw_profile_print(sdw_profile *p, FILE *f, int most);

/* tensor.c's side: the wait and clock before an op (when be has a profile),
 * then the wait and bookkeeping after it, which returns rc (or the wait's
 * failure). The row's text is printf-formatted. */
int sdw_profile_enter(sdw_backend *be, double *t0, sdw_error *e);
int sdw_profile_leave(sdw_backend *be, double t0, int rc, double flops, sdw_error *e, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

#endif
