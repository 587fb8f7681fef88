/* safetensors reader and writer.
 *
 * A file is mapped read-only; its JSON header is parsed with json-c and every
 * offset, shape and size is checked before any tensor can be read, so that a
 * truncated, oversized, overlapping or malformed file is an error, never a
 * crash. Tensor data is converted to float32 on request. */
#ifndef SDW_SAFETENSORS_H
#define SDW_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "base/err.h"

#define SDW_ST_MAX_DIMS 8

typedef enum sdw_dtype {
    SDW_DT_F32,
    SDW_DT_F16,
    SDW_DT_BF16,
    SDW_DT_F64,
    SDW_DT_I64,
    SDW_DT_I32,
    SDW_DT_I16,
    SDW_DT_I8,
    SDW_DT_U8,
    SDW_DT_BOOL,
    SDW_DT_F8_E4M3,
    SDW_DT_F8_E5M2,
} sdw_dtype;

typedef struct sdw_st_tensor {
    char *name;
    sdw_dtype dtype;
    int ndim;
    int64_t shape[SDW_ST_MAX_DIMS];
    int64_t numel;
    size_t nbytes;
    const void *data; /* inside the mapping (or caller's buffer) */
} sdw_st_tensor;

typedef struct sdw_st_file {
    char *path;          /* for messages; NULL when parsed from memory */
    void *map;           /* whole file, NULL when parsed from memory */
    size_t map_size;
    sdw_st_tensor *tensors; /* sorted by name */
    size_t ntensors;
    char **meta_keys;    /* "__metadata__" entries */
    char **meta_values;
    size_t nmeta;
} sdw_st_file;

/* Largest header accepted (the format's own limit). */
#define SDW_ST_MAX_HEADER 100000000u

/* Checks, besides JSON syntax (json-c, strict, UTF-8 validated): header length
 * within SDW_ST_MAX_HEADER and the file; only JSON whitespace after the object;
 * known dtypes; non-negative integer shapes of at most SDW_ST_MAX_DIMS whose
 * element and byte counts do not overflow; offsets [b, e] with e - b equal to
 * the byte size; tensors tiling the data area with no gap, overlap or tail.
 * A tensor name given twice at the top level is detected (json-c would keep
 * the last), even when spelled with different escapes; duplicated keys inside
 * a tensor entry or __metadata__ are not (json-c keeps the last one). Error
 * messages name the file ("<memory>" for sdw_st_parse) and the tensor. */
int sdw_st_open(sdw_st_file *f, const char *path, sdw_error *e);
/* Parses a complete file image held in memory; buf must outlive f. */
int sdw_st_parse(sdw_st_file *f, const void *buf, size_t len, sdw_error *e);
void sdw_st_close(sdw_st_file *f);

const sdw_st_tensor *sdw_st_find(const sdw_st_file *f, const char *name);
const char *sdw_st_meta(const sdw_st_file *f, const char *key);

size_t sdw_dtype_size(sdw_dtype dt);
const char *sdw_dtype_name(sdw_dtype dt);
/* Converts a floating tensor (F32, F16, BF16, F64) to float32 in dst[numel]. */
int sdw_st_to_f32(const sdw_st_tensor *t, float *dst, sdw_error *e);

/* Writing: tensors are given as float32 and stored as dtype (F32, F16, BF16). */
typedef struct sdw_st_entry {
    const char *name;
    sdw_dtype dtype;
    int ndim;
    const int64_t *shape;
    const float *data;
} sdw_st_entry;

/* Stores the tensors in the order given, rounding to nearest even; the header
 * is padded with spaces to a multiple of 8 bytes so the data starts aligned.
 * meta_kv holds nmeta key/value pairs. Written to a temporary file in the same
 * folder, then renamed: the path holds either the old file or the new one. */
int sdw_st_write(const char *path, const sdw_st_entry *entries, size_t n,
                 const char *const *meta_kv, size_t nmeta, sdw_error *e);

#endif
