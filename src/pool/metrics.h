/* Prometheus /metrics (text exposition format 0.0.4): the pool's counters
 * of refused submissions, and the page that joins them with the ring's job
 * counters (ring.h, "metrics"), the ring's queue and the scoreboard. The
 * series and their labels: doc/api.md, "GET /metrics".
 *
 * Label sets stay bounded: a model is one of the configuration's (at most
 * SDW_CONFIG_MAX_MODELS), an operation one of three, an API one of
 * sdw_metrics_api, an error code one of the fixed lists (contract.h's for
 * refusals, "other" for anything else; the engine's for failures, which
 * the ring bounds too). */
#ifndef SDW_METRICS_H
#define SDW_METRICS_H

#include "config/config.h"
#include "contract/contract.h"
#include "pool/board.h"
#include "ring/ring.h"

#include <stddef.h>

/* The API a request came in by: the "api" label. The OpenAI and A1111
 * routes take the next values (SDW_POOL_APIS has room for them). */
typedef enum sdw_metrics_api {
    SDW_METRICS_API_RBEE = 0,
    SDW_METRICS_APIS,
} sdw_metrics_api;

_Static_assert(SDW_METRICS_APIS <= SDW_POOL_APIS, "SDW_POOL_APIS has no room for every API");

const char *sdw_metrics_api_name(sdw_metrics_api api);

/* A submission refused with code (an SDW_API_* string), before its job
 * existed. A refusal of an image's pixels (invalid_init_image,
 * invalid_mask_image) counts as an image-decode rejection as well when
 * decoded is set, i.e. sdw_job_request_decode_images refused it. */
void sdw_metrics_count_rejection(sdw_pool_counters *c, sdw_metrics_api api, const char *code, bool decoded);

/* The ring label set of a job: model="...",operation="...",api="..." with
 * the values escaped. SDW_ETOOBIG when it does not fit n bytes. */
int sdw_metrics_job_labels(const char *model, sdw_operation op, sdw_metrics_api api, char *buf, size_t n,
                           sdw_error *e);

/* The whole page, malloc'd in *text (*len bytes). Reads the ring's counters
 * without its lock and its queue with the lock held for a walk over the
 * slots, never waiting on the engine. SDW_ENOMEM on failure. */
int sdw_metrics_render(const sdw_config *cfg, sdw_ring *ring, const sdw_board *board, char **text, size_t *len,
                       sdw_error *e);

#endif
