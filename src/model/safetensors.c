#include "model/safetensors.h"
#include "base/half.h"
#include "base/vec.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Below this many elements a conversion is not worth waking the thread pool. */
#define PAR_MIN_ELEMS 65536

static const struct {
    const char *name;
    size_t size;
} dtype_info[] = {
    [SDW_DT_F32] = {"F32", 4},      [SDW_DT_F16] = {"F16", 2},
    [SDW_DT_BF16] = {"BF16", 2},    [SDW_DT_F64] = {"F64", 8},
    [SDW_DT_I64] = {"I64", 8},      [SDW_DT_I32] = {"I32", 4},
    [SDW_DT_I16] = {"I16", 2},      [SDW_DT_I8] = {"I8", 1},
    [SDW_DT_U8] = {"U8", 1},        [SDW_DT_BOOL] = {"BOOL", 1},
    [SDW_DT_F8_E4M3] = {"F8_E4M3", 1}, [SDW_DT_F8_E5M2] = {"F8_E5M2", 1},
};
#define NDTYPES (sizeof dtype_info / sizeof dtype_info[0])

size_t sdw_dtype_size(sdw_dtype dt)
{
    return (unsigned)dt < NDTYPES ? dtype_info[dt].size : 0;
}

const char *sdw_dtype_name(sdw_dtype dt)
{
    return (unsigned)dt < NDTYPES ? dtype_info[dt].name : "?";
}

static int dtype_from_name(const char *s, sdw_dtype *dt)
{
    for (size_t i = 0; i < NDTYPES; i++) {
        if (strcmp(s, dtype_info[i].name) == 0) {
            *dt = (sdw_dtype)i;
            return 1;
        }
    }
    return 0;
}

/* ---- parsing ---- */

typedef struct span {
    uint64_t begin, end;
    size_t idx;
} span;

static int span_cmp(const void *a, const void *b)
{
    const span *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return 0;
}

static int tensor_cmp(const void *a, const void *b)
{
    return strcmp(((const sdw_st_tensor *)a)->name, ((const sdw_st_tensor *)b)->name);
}

static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* json-c keeps only the last of duplicated keys, so a file that names a tensor
 * twice would silently lose one. Counting the top-level keys in the raw text
 * catches that: json-c has already validated the syntax, so tracking string
 * and nesting state is enough. Returns the number of keys. */
static size_t count_top_keys(const char *s, size_t n, char ***raw_keys)
{
    size_t count = 0;
    int depth = 0;
    SDW_VEC(char *) keys = {0};
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            depth--;
        } else if (c == '"') {
            size_t start = i++;
            while (i < n && s[i] != '"') {
                if (s[i] == '\\')
                    i++;
                i++;
            }
            if (depth != 1)
                continue;
            size_t j = i + 1;
            while (j < n && (s[j] == ' ' || s[j] == '\t' || s[j] == '\n' || s[j] == '\r'))
                j++;
            if (j < n && s[j] == ':') {
                if (raw_keys) {
                    char *key = strndup(s + start, i + 1 - start);
                    if (!key || sdw_vec_push(&keys, key, NULL)) {
                        free(key);
                        break;
                    }
                }
                count++;
            }
        }
    }
    if (raw_keys)
        *raw_keys = keys.v;
    return count;
}

/* Names the duplicated key for the error message, decoding JSON escapes so
 * that "a" and "\u0061" are recognised as the same name. */
static int report_duplicate(const char *fname, const char *hdr, size_t n, sdw_error *e)
{
    char **raw = NULL;
    size_t k = count_top_keys(hdr, n, &raw);
    char **dec = calloc(k ? k : 1, sizeof *dec);
    const char *dup = NULL;
    size_t nd = 0;
    if (raw && dec) {
        for (size_t i = 0; i < k && raw[i]; i++) {
            json_object *o = json_tokener_parse(raw[i]);
            if (o && json_object_is_type(o, json_type_string))
                dec[nd++] = strdup(json_object_get_string(o));
            json_object_put(o);
            if (nd && !dec[nd - 1])
                nd--;
        }
        qsort(dec, nd, sizeof *dec, str_cmp);
        for (size_t i = 1; i < nd && !dup; i++)
            if (strcmp(dec[i - 1], dec[i]) == 0)
                dup = dec[i];
    }
    int rc = dup ? sdw_fail(e, SDW_EFORMAT, "%s: tensor '%s' is listed more than once in the header",
                            fname, dup)
                 : sdw_fail(e, SDW_EFORMAT, "%s: the header lists a name more than once", fname);
    for (size_t i = 0; raw && i < k; i++)
        free(raw[i]);
    free(raw);
    for (size_t i = 0; i < nd; i++)
        free(dec[i]);
    free(dec);
    return rc;
}

/* A JSON integer in [0, INT64_MAX]. json-c clamps bigger values to INT64_MAX,
 * which then fails the size checks, so clamping cannot make a file pass. */
static int get_nonneg_int(json_object *o, int64_t *v)
{
    if (!o || !json_object_is_type(o, json_type_int))
        return 0;
    int64_t x = json_object_get_int64(o);
    if (x < 0)
        return 0;
    *v = x;
    return 1;
}

static int parse_metadata(sdw_st_file *f, json_object *meta, const char *fname, sdw_error *e)
{
    if (!json_object_is_type(meta, json_type_object))
        return sdw_fail(e, SDW_EFORMAT, "%s: __metadata__ is not an object", fname);
    size_t n = (size_t)json_object_object_length(meta);
    f->meta_keys = calloc(n ? n : 1, sizeof *f->meta_keys);
    f->meta_values = calloc(n ? n : 1, sizeof *f->meta_values);
    if (!f->meta_keys || !f->meta_values)
        return sdw_fail(e, SDW_ENOMEM, "%s: out of memory reading __metadata__", fname);
    json_object_object_foreach(meta, k, v) {
        if (!json_object_is_type(v, json_type_string))
            return sdw_fail(e, SDW_EFORMAT, "%s: __metadata__ entry '%s' is not a string", fname, k);
        f->meta_keys[f->nmeta] = strdup(k);
        f->meta_values[f->nmeta] = strdup(json_object_get_string(v));
        f->nmeta++;
        if (!f->meta_keys[f->nmeta - 1] || !f->meta_values[f->nmeta - 1])
            return sdw_fail(e, SDW_ENOMEM, "%s: out of memory reading __metadata__", fname);
    }
    return 0;
}

static int parse_tensor(sdw_st_tensor *t, span *sp, const char *name, json_object *v,
                        const uint8_t *data, uint64_t data_len, const char *fname, sdw_error *e)
{
    if (!json_object_is_type(v, json_type_object))
        return sdw_fail(e, SDW_EFORMAT, "%s: tensor '%s': entry is not an object", fname, name);
    json_object *jd, *js, *jo;
    if (!json_object_object_get_ex(v, "dtype", &jd) || !json_object_is_type(jd, json_type_string))
        return sdw_fail(e, SDW_EFORMAT, "%s: tensor '%s': missing or non-string dtype", fname, name);
    const char *ds = json_object_get_string(jd);
    if (!dtype_from_name(ds, &t->dtype))
        return sdw_fail(e, SDW_EUNSUPPORTED, "%s: tensor '%s': unknown dtype '%.32s'", fname, name, ds);
    if (!json_object_object_get_ex(v, "shape", &js) || !json_object_is_type(js, json_type_array))
        return sdw_fail(e, SDW_EFORMAT, "%s: tensor '%s': missing or non-array shape", fname, name);
    size_t nd = json_object_array_length(js);
    if (nd > SDW_ST_MAX_DIMS)
        return sdw_fail(e, SDW_EUNSUPPORTED, "%s: tensor '%s': %zu dimensions (at most %d supported)",
                        fname, name, nd, SDW_ST_MAX_DIMS);
    t->ndim = (int)nd;
    int64_t numel = 1;
    for (size_t i = 0; i < nd; i++) {
        int64_t d;
        if (!get_nonneg_int(json_object_array_get_idx(js, i), &d))
            return sdw_fail(e, SDW_EFORMAT,
                            "%s: tensor '%s': shape[%zu] is not a non-negative integer", fname, name, i);
        t->shape[i] = d;
        if (__builtin_mul_overflow(numel, d, &numel))
            return sdw_fail(e, SDW_EFORMAT, "%s: tensor '%s': element count overflows", fname, name);
    }
    int64_t nbytes;
    if (__builtin_mul_overflow(numel, (int64_t)sdw_dtype_size(t->dtype), &nbytes))
        return sdw_fail(e, SDW_EFORMAT, "%s: tensor '%s': byte size overflows", fname, name);
    t->numel = numel;
    t->nbytes = (size_t)nbytes;
    if (!json_object_object_get_ex(v, "data_offsets", &jo) || !json_object_is_type(jo, json_type_array) ||
        json_object_array_length(jo) != 2)
        return sdw_fail(e, SDW_EFORMAT, "%s: tensor '%s': data_offsets must be an array [begin, end]",
                        fname, name);
    int64_t b, en;
    if (!get_nonneg_int(json_object_array_get_idx(jo, 0), &b) ||
        !get_nonneg_int(json_object_array_get_idx(jo, 1), &en))
        return sdw_fail(e, SDW_EFORMAT, "%s: tensor '%s': data_offsets are not non-negative integers",
                        fname, name);
    if (b > en)
        return sdw_fail(e, SDW_EFORMAT, "%s: tensor '%s': data_offsets [%lld, %lld] end before they begin",
                        fname, name, (long long)b, (long long)en);
    if ((uint64_t)en > data_len)
        return sdw_fail(e, SDW_EFORMAT,
                        "%s: tensor '%s': data_offsets end %lld is past the data area (%llu bytes)", fname,
                        name, (long long)en, (unsigned long long)data_len);
    if (en - b != nbytes)
        return sdw_fail(e, SDW_EFORMAT,
                        "%s: tensor '%s': data_offsets span %lld bytes but %s shape needs %lld", fname,
                        name, (long long)(en - b), sdw_dtype_name(t->dtype), (long long)nbytes);
    t->data = data + b;
    sp->begin = (uint64_t)b;
    sp->end = (uint64_t)en;
    return 0;
}

static int parse_image(sdw_st_file *f, const uint8_t *buf, size_t len, const char *fname, sdw_error *e)
{
    if (len < 8)
        return sdw_fail(e, SDW_EFORMAT, "%s: %zu bytes is too short for a safetensors file", fname, len);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | buf[i];
    if (n > SDW_ST_MAX_HEADER)
        return sdw_fail(e, SDW_EFORMAT, "%s: header length %llu exceeds the limit of %u bytes", fname,
                        (unsigned long long)n, SDW_ST_MAX_HEADER);
    if (n > len - 8)
        return sdw_fail(e, SDW_EFORMAT, "%s: header length %llu is past the end of the file (%zu bytes)",
                        fname, (unsigned long long)n, len);
    const char *hdr = (const char *)buf + 8;
    const uint8_t *data = buf + 8 + n;
    uint64_t data_len = len - 8 - n;

    json_tokener *tok = json_tokener_new();
    if (!tok)
        return sdw_fail(e, SDW_ENOMEM, "%s: out of memory", fname);
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_ALLOW_TRAILING_CHARS |
                                    JSON_TOKENER_VALIDATE_UTF8);
    json_object *root = n ? json_tokener_parse_ex(tok, hdr, (int)n) : NULL;
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t end = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    int rc = 0;
    if (!root) {
        rc = sdw_fail(e, SDW_EFORMAT, "%s: header is not valid JSON: %s", fname,
                      n == 0 ? "empty" : jerr == json_tokener_continue ? "unexpected end"
                                                                       : json_tokener_error_desc(jerr));
        goto out;
    }
    for (size_t i = end; i < n; i++) {
        char c = hdr[i];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
            rc = sdw_fail(e, SDW_EFORMAT, "%s: unexpected data after the JSON header at byte %zu",
                          fname, 8 + i);
            goto out;
        }
    }
    if (!json_object_is_type(root, json_type_object)) {
        rc = sdw_fail(e, SDW_EFORMAT, "%s: header is not a JSON object", fname);
        goto out;
    }
    size_t nkeys = (size_t)json_object_object_length(root);
    if (count_top_keys(hdr, end, NULL) != nkeys) {
        rc = report_duplicate(fname, hdr, end, e);
        goto out;
    }

    f->tensors = calloc(nkeys ? nkeys : 1, sizeof *f->tensors);
    span *spans = calloc(nkeys ? nkeys : 1, sizeof *spans);
    if (!f->tensors || !spans) {
        free(spans);
        rc = sdw_fail(e, SDW_ENOMEM, "%s: out of memory for %zu tensors", fname, nkeys);
        goto out;
    }
    json_object_object_foreach(root, k, v) {
        if (strcmp(k, "__metadata__") == 0) {
            if ((rc = parse_metadata(f, v, fname, e)) < 0)
                break;
            continue;
        }
        sdw_st_tensor *t = &f->tensors[f->ntensors];
        if (!(t->name = strdup(k))) {
            rc = sdw_fail(e, SDW_ENOMEM, "%s: out of memory", fname);
            break;
        }
        f->ntensors++;
        if ((rc = parse_tensor(t, &spans[f->ntensors - 1], k, v, data, data_len, fname, e)) < 0)
            break;
        spans[f->ntensors - 1].idx = f->ntensors - 1;
    }
    if (rc == 0) {
        /* The format wants the tensors to tile the data area exactly. */
        qsort(spans, f->ntensors, sizeof *spans, span_cmp);
        uint64_t pos = 0;
        for (size_t i = 0; i < f->ntensors && rc == 0; i++) {
            const char *nm = f->tensors[spans[i].idx].name;
            if (spans[i].begin < pos)
                rc = sdw_fail(e, SDW_EFORMAT, "%s: tensor '%s' overlaps tensor '%s' (bytes %llu..%llu)",
                              fname, nm, f->tensors[spans[i - 1].idx].name,
                              (unsigned long long)spans[i].begin, (unsigned long long)pos);
            else if (spans[i].begin > pos)
                rc = sdw_fail(e, SDW_EFORMAT,
                              "%s: tensor '%s' starts at byte %llu, leaving a gap after byte %llu", fname,
                              nm, (unsigned long long)spans[i].begin, (unsigned long long)pos);
            pos = spans[i].end;
        }
        if (rc == 0 && pos != data_len)
            rc = sdw_fail(e, SDW_EFORMAT,
                          "%s: tensors cover %llu of the %llu data bytes (%s)", fname,
                          (unsigned long long)pos, (unsigned long long)data_len,
                          f->ntensors ? "trailing bytes after the last tensor" : "no tensors");
    }
    free(spans);
    if (rc == 0)
        qsort(f->tensors, f->ntensors, sizeof *f->tensors, tensor_cmp);
out:
    json_object_put(root);
    return rc;
}

static void free_contents(sdw_st_file *f)
{
    for (size_t i = 0; i < f->ntensors; i++)
        free(f->tensors[i].name);
    free(f->tensors);
    for (size_t i = 0; i < f->nmeta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_values[i]);
    }
    free(f->meta_keys);
    free(f->meta_values);
    free(f->path);
}

int sdw_st_parse(sdw_st_file *f, const void *buf, size_t len, sdw_error *e)
{
    memset(f, 0, sizeof *f);
    int rc = parse_image(f, buf, len, "<memory>", e);
    if (rc < 0) {
        free_contents(f);
        memset(f, 0, sizeof *f);
    }
    return rc;
}

int sdw_st_open(sdw_st_file *f, const char *path, sdw_error *e)
{
    memset(f, 0, sizeof *f);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return sdw_fail(e, errno == ENOENT ? SDW_ENOTFOUND : SDW_EIO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int err = errno;
        close(fd);
        return sdw_fail(e, SDW_EIO, "%s: %s", path, strerror(err));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return sdw_fail(e, SDW_EFORMAT, "%s: not a regular file", path);
    }
    if (st.st_size < 8) {
        close(fd);
        return sdw_fail(e, SDW_EFORMAT, "%s: %lld bytes is too short for a safetensors file", path,
                        (long long)st.st_size);
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int err = errno;
    close(fd);
    if (map == MAP_FAILED)
        return sdw_fail(e, SDW_EIO, "%s: mmap: %s", path, strerror(err));
    int rc = parse_image(f, map, (size_t)st.st_size, path, e);
    if (rc < 0) {
        free_contents(f);
        memset(f, 0, sizeof *f);
        munmap(map, (size_t)st.st_size);
        return rc;
    }
    f->map = map;
    f->map_size = (size_t)st.st_size;
    if (!(f->path = strdup(path))) {
        sdw_st_close(f);
        return sdw_fail(e, SDW_ENOMEM, "%s: out of memory", path);
    }
    return 0;
}

void sdw_st_close(sdw_st_file *f)
{
    if (!f)
        return;
    free_contents(f);
    if (f->map)
        munmap(f->map, f->map_size);
    memset(f, 0, sizeof *f);
}

const sdw_st_tensor *sdw_st_find(const sdw_st_file *f, const char *name)
{
    size_t lo = 0, hi = f->ntensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, f->tensors[mid].name);
        if (c == 0)
            return &f->tensors[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

const char *sdw_st_meta(const sdw_st_file *f, const char *key)
{
    for (size_t i = 0; i < f->nmeta; i++)
        if (strcmp(f->meta_keys[i], key) == 0)
            return f->meta_values[i];
    return NULL;
}

/* Tensor data sits at arbitrary byte offsets in the mapping, so every element
 * is read through memcpy rather than a cast pointer. */
int sdw_st_to_f32(const sdw_st_tensor *t, float *dst, sdw_error *e)
{
    const uint8_t *src = t->data;
    int64_t n = t->numel;
    switch (t->dtype) {
    case SDW_DT_F32:
        memcpy(dst, src, (size_t)n * 4);
        return 0;
    case SDW_DT_F16:
#pragma omp parallel for if (n >= PAR_MIN_ELEMS)
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            dst[i] = sdw_f16_to_f32(h);
        }
        return 0;
    case SDW_DT_BF16:
#pragma omp parallel for if (n >= PAR_MIN_ELEMS)
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            dst[i] = sdw_bf16_to_f32(h);
        }
        return 0;
    case SDW_DT_F64:
#pragma omp parallel for if (n >= PAR_MIN_ELEMS)
        for (int64_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, src + 8 * i, 8);
            dst[i] = (float)d;
        }
        return 0;
    default:
        return sdw_fail(e, SDW_EUNSUPPORTED,
                        "tensor '%s' has dtype %s; only F32, F16, BF16 and F64 convert to float32",
                        t->name ? t->name : "?", sdw_dtype_name(t->dtype));
    }
}

/* ---- writing ---- */

static int write_all(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n) {
        ssize_t w = write(fd, b, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

static int write_tensor_data(int fd, const sdw_st_entry *en, int64_t numel)
{
    enum { CHUNK = 1 << 16 };
    if (en->dtype == SDW_DT_F32)
        return write_all(fd, en->data, (size_t)numel * 4);
    uint16_t buf[CHUNK];
    for (int64_t i = 0; i < numel; i += CHUNK) {
        int64_t m = numel - i < CHUNK ? numel - i : CHUNK;
        for (int64_t j = 0; j < m; j++)
            buf[j] = en->dtype == SDW_DT_F16 ? sdw_f32_to_f16(en->data[i + j])
                                             : sdw_f32_to_bf16(en->data[i + j]);
        if (write_all(fd, buf, (size_t)m * 2) < 0)
            return -1;
    }
    return 0;
}

static int entry_name_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int build_header(const sdw_st_entry *en, size_t n, const char *const *meta_kv, size_t nmeta,
                        int64_t *numels, json_object **out, const char *path, sdw_error *e)
{
    json_object *root = json_object_new_object();
    if (!root)
        return sdw_fail(e, SDW_ENOMEM, "%s: out of memory", path);
    if (nmeta) {
        json_object *m = json_object_new_object();
        json_object_object_add(root, "__metadata__", m);
        for (size_t i = 0; i < nmeta; i++)
            json_object_object_add(m, meta_kv[2 * i], json_object_new_string(meta_kv[2 * i + 1]));
    }
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        json_object *t = json_object_new_object(), *shape = json_object_new_array();
        json_object *offs = json_object_new_array();
        int64_t numel = 1;
        for (int d = 0; d < en[i].ndim; d++) {
            numel *= en[i].shape[d];
            json_object_array_add(shape, json_object_new_int64(en[i].shape[d]));
        }
        numels[i] = numel;
        uint64_t nb = (uint64_t)numel * sdw_dtype_size(en[i].dtype);
        json_object_array_add(offs, json_object_new_int64((int64_t)off));
        json_object_array_add(offs, json_object_new_int64((int64_t)(off + nb)));
        off += nb;
        json_object_object_add(t, "dtype", json_object_new_string(sdw_dtype_name(en[i].dtype)));
        json_object_object_add(t, "shape", shape);
        json_object_object_add(t, "data_offsets", offs);
        json_object_object_add(root, en[i].name, t);
    }
    *out = root;
    return 0;
}

static int validate_entries(const sdw_st_entry *en, size_t n, const char *const *meta_kv,
                            size_t nmeta, const char *path, sdw_error *e)
{
    for (size_t i = 0; i < nmeta; i++)
        if (!meta_kv || !meta_kv[2 * i] || !meta_kv[2 * i + 1])
            return sdw_fail(e, SDW_EINVAL, "%s: metadata entry %zu is NULL", path, i);
    const char **names = calloc(n ? n : 1, sizeof *names);
    if (!names)
        return sdw_fail(e, SDW_ENOMEM, "%s: out of memory", path);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const char *nm = en[i].name;
        if (!nm || !*nm || strcmp(nm, "__metadata__") == 0) {
            rc = sdw_fail(e, SDW_EINVAL, "%s: entry %zu has an invalid name", path, i);
            break;
        }
        names[i] = nm;
        if (en[i].dtype != SDW_DT_F32 && en[i].dtype != SDW_DT_F16 && en[i].dtype != SDW_DT_BF16)
            rc = sdw_fail(e, SDW_EUNSUPPORTED, "%s: tensor '%s': writing %s is not supported", path, nm,
                          sdw_dtype_name(en[i].dtype));
        else if (en[i].ndim < 0 || en[i].ndim > SDW_ST_MAX_DIMS || (en[i].ndim && !en[i].shape))
            rc = sdw_fail(e, SDW_EINVAL, "%s: tensor '%s': bad rank %d", path, nm, en[i].ndim);
        int64_t numel = 1;
        for (int d = 0; rc == 0 && d < en[i].ndim; d++)
            if (en[i].shape[d] < 0 || __builtin_mul_overflow(numel, en[i].shape[d], &numel) ||
                numel > INT64_MAX / 8)
                rc = sdw_fail(e, SDW_EINVAL, "%s: tensor '%s': bad shape", path, nm);
        if (rc == 0 && numel > 0 && !en[i].data)
            rc = sdw_fail(e, SDW_EINVAL, "%s: tensor '%s': no data", path, nm);
    }
    if (rc == 0) {
        qsort(names, n, sizeof *names, entry_name_cmp);
        for (size_t i = 1; i < n && rc == 0; i++)
            if (strcmp(names[i - 1], names[i]) == 0)
                rc = sdw_fail(e, SDW_EINVAL, "%s: tensor '%s' given twice", path, names[i]);
    }
    free(names);
    return rc;
}

int sdw_st_write(const char *path, const sdw_st_entry *entries, size_t n, const char *const *meta_kv,
                 size_t nmeta, sdw_error *e)
{
    int rc = validate_entries(entries, n, meta_kv, nmeta, path, e);
    if (rc < 0)
        return rc;
    int64_t *numels = calloc(n ? n : 1, sizeof *numels);
    if (!numels)
        return sdw_fail(e, SDW_ENOMEM, "%s: out of memory", path);
    json_object *root = NULL;
    if ((rc = build_header(entries, n, meta_kv, nmeta, numels, &root, path, e)) < 0) {
        free(numels);
        return rc;
    }
    size_t jlen;
    const char *js = json_object_to_json_string_length(
        root, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &jlen);
    size_t hlen = (jlen + 7) & ~(size_t)7;

    size_t plen = strlen(path);
    char *tmp = malloc(plen + 16);
    int fd = -1;
    if (!tmp || !js) {
        rc = sdw_fail(e, SDW_ENOMEM, "%s: out of memory", path);
        goto out;
    }
    snprintf(tmp, plen + 16, "%s.tmp.XXXXXX", path);
    if ((fd = mkstemp(tmp)) < 0) {
        rc = sdw_fail(e, SDW_EIO, "%s: cannot create temporary file: %s", path, strerror(errno));
        goto out;
    }
    uint8_t len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    static const char spaces[8] = "        ";
    int bad = fchmod(fd, 0644) < 0 || write_all(fd, len8, 8) < 0 || write_all(fd, js, jlen) < 0 ||
              write_all(fd, spaces, hlen - jlen) < 0;
    for (size_t i = 0; i < n && !bad; i++)
        bad = write_tensor_data(fd, &entries[i], numels[i]) < 0;
    if (!bad)
        bad = fsync(fd) < 0;
    if (close(fd) < 0)
        bad = 1;
    fd = -1;
    if (bad || rename(tmp, path) < 0) {
        rc = sdw_fail(e, SDW_EIO, "%s: write failed: %s", path, strerror(errno));
        unlink(tmp);
    }
out:
    if (fd >= 0) {
        close(fd);
        unlink(tmp);
    }
    free(tmp);
    free(numels);
    json_object_put(root);
    return rc;
}
