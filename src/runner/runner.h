/* The job runner of the engine process, the one process that owns the
 * device: it loads the models the configuration names, then takes jobs from
 * the ring in FIFO order, runs them through the pipeline, and publishes
 * their events (progress, previews, the finished PNG, or an error) back into
 * the job's slot. sdworker-engine (src/tools) supervises it. */
#ifndef SDW_RUNNER_H
#define SDW_RUNNER_H

#include <signal.h>

#include "base/err.h"
#include "config/config.h"
#include "ring/ring.h"

/* Loads every configured model (state LOADING, then READY) and serves jobs
 * until *stop becomes non-zero or a fatal error occurs. Model load failures
 * are fatal: the error says which model and why. */
int sdw_runner_run(const sdw_config *cfg, sdw_ring *ring, volatile sig_atomic_t *stop, sdw_error *e);

#endif
