/* libFuzzer target for the LoRA parser (model/lora.h) over a safetensors
 * file image: it must refuse the input or give modules that each have both
 * factors of one rank, a positive alpha and a path that is SGM's or one
 * the SGM mapping leaves as it is. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "model/lora.h"

int fuzz_lora_one(const uint8_t *data, size_t size)
{
    sdw_lora *l = NULL;
    sdw_error e;
    int rc = sdw_lora_parse(&l, data, size, &e);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < l->n; i++) {
        const sdw_lora_module *m = &l->m[i];
        char again[sizeof m->flat];
        if (!m->down || !m->up || m->down->shape[0] != m->up->shape[1] || !(m->alpha > 0))
            abort();
        if (!strcmp(m->part, "unet") && !m->sgm &&
            (sdw_lora_sgm_path(m->flat, 2, again, sizeof again) || strcmp(again, m->flat)))
            abort();
    }
    sdw_lora_free(l);
    return 0;
}

SDW_FUZZ_ENTRY(fuzz_lora_one)
