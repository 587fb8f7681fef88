/* The engine: the one process that owns the device. It loads the models the
 * configuration names, then takes jobs from the ring in FIFO order, runs
 * them through the pipeline, and publishes their events (progress, previews,
 * the finished PNG, or an error) back into the job's slot. */
#ifndef SDW_ENGINE_H
#define SDW_ENGINE_H

#include <signal.h>

#include "config.h"
#include "err.h"
#include "ring.h"

/* Loads every configured model (state LOADING, then READY) and serves jobs
 * until *stop becomes non-zero or a fatal error occurs. Model load failures
 * are fatal: the error says which model and why. */
int sdw_engine_run(const sdw_config *cfg, sdw_ring *ring, volatile sig_atomic_t *stop, sdw_error *e);

#endif
