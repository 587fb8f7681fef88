/* The fuzz targets for the parsers of untrusted bytes. Each fuzz_NAME_one
 * runs one input through its parser and returns 0 when the input was
 * accepted, a negative sdw_status when it was rejected; it aborts when the
 * parser broke one of its promises (a round trip that differs, a result out
 * of its limits). fuzz_corpus replays tests/fuzz/corpus/NAME/ through each
 * of them in make check; with --enable-fuzzing each file also builds as the
 * libFuzzer binary tests/fuzz/fuzz_NAME (SDW_LIBFUZZER defined), whose
 * entry point SDW_FUZZ_ENTRY defines. */
#ifndef FUZZ_H
#define FUZZ_H

#include <stddef.h>
#include <stdint.h>

int fuzz_safetensors_one(const uint8_t *data, size_t size);
int fuzz_lora_one(const uint8_t *data, size_t size);
int fuzz_contract_one(const uint8_t *data, size_t size);
int fuzz_base64_one(const uint8_t *data, size_t size);
int fuzz_image_one(const uint8_t *data, size_t size);
int fuzz_tokenizer_one(const uint8_t *data, size_t size);
int fuzz_tokenizer_hf_one(const uint8_t *data, size_t size);
int fuzz_tokenizer_json_one(const uint8_t *data, size_t size);
int fuzz_config_one(const uint8_t *data, size_t size);
int fuzz_auth_one(const uint8_t *data, size_t size);
int fuzz_http_one(const uint8_t *data, size_t size);

/* Loads the CLIP vocabulary once, from $SDW_DATA_DIR or the source tree's
 * data/; returns 0 or a negative sdw_status after printing why. */
int fuzz_tokenizer_init(void);

/* A malloc'd NUL-terminated copy of data[0..size). */
char *fuzz_strndup(const uint8_t *data, size_t size);

#ifdef SDW_LIBFUZZER
#define SDW_FUZZ_ENTRY(fn)                                          \
    int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);   \
    int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)    \
    {                                                               \
        fn(data, size);                                             \
        return 0;                                                   \
    }
#else
#define SDW_FUZZ_ENTRY(fn)
#endif

#endif
