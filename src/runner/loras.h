/* The engine's LoRA library: the names the configuration gives (lora.<name>
 * lines, then each <stem>.safetensors in lora_dir not already named), and
 * the parsed files in a cache bounded in bytes, least recently used out
 * first. A cached file that changed on disk is read again, and checked
 * again by the caller, when a job asks for it. */
#ifndef SDW_LORAS_H
#define SDW_LORAS_H

#include "base/err.h"
#include "config/config.h"
#include "pipeline/pipeline.h" /* sdw_lora, as the pipeline takes it */

typedef struct sdw_loras sdw_loras;

/* Lists the configured LoRAs (a lora_dir that cannot be read is an error). */
int sdw_loras_open(sdw_loras **out, const sdw_config *cfg, sdw_error *e);
void sdw_loras_free(sdw_loras *s);

int sdw_loras_count(const sdw_loras *s);
const char *sdw_loras_name(const sdw_loras *s, int i);

/* The parsed files for names[0..n), loaded, or read again when changed
 * on disk (the caller checks them against the model); they stay valid until
 * the next call. SDW_ENOTFOUND for an unknown name; a file that fails to
 * load is an error naming it. */
int sdw_loras_get(sdw_loras *s, const char *const *names, int n, const sdw_lora **out, sdw_error *e);

/* Bytes the cache holds now. */
size_t sdw_loras_cached_bytes(const sdw_loras *s);

#endif
