/* libFuzzer target for the FastCGI parameters that the pool parses itself:
 * the input's NUL-separated fields are, in this order, SCRIPT_NAME,
 * PATH_INFO, DOCUMENT_URI, REQUEST_URI, QUERY_STRING, CONTENT_TYPE and
 * Last-Event-ID (fewer fields leave the later parameters unset). They go
 * through the path and routing (sdw_http_request_path, sdw_http_route_of),
 * the Content-Type check and sdw_sse_parse_last_event_id. A job route must
 * carry a well-formed job id. (The Authorization header has its own target,
 * fuzz_auth.) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "pool/http.h"
#include "pool/sse.h"

static const char *const names[] = {
    "SCRIPT_NAME", "PATH_INFO", "DOCUMENT_URI", "REQUEST_URI", "QUERY_STRING", "CONTENT_TYPE", "HTTP_LAST_EVENT_ID",
};
#define NPARAMS (sizeof names / sizeof *names)

int fuzz_http_one(const uint8_t *data, size_t size)
{
    char *env[NPARAMS + 1] = { 0 };
    const char *value[NPARAMS] = { 0 };
    size_t n = 0;
    for (int more = 1; n < NPARAMS && more; n++) {
        const uint8_t *nul = size ? memchr(data, 0, size) : NULL;
        size_t len = nul ? (size_t)(nul - data) : size;
        size_t name = strlen(names[n]);
        env[n] = malloc(name + 1 + len + 1);
        if (!env[n])
            abort();
        memcpy(env[n], names[n], name);
        env[n][name] = '=';
        memcpy(env[n] + name + 1, data, len);
        env[n][name + 1 + len] = '\0';
        value[n] = env[n] + name + 1;
        more = nul != NULL;
        if (nul) {
            size -= len + 1;
            data = nul + 1;
        }
    }

    int rc = -1;
    char path[1024];
    if (sdw_http_request_path(env, path, sizeof path)) {
        size_t len = strlen(path);
        if (len >= sizeof path)
            abort();
        char id[SDW_JOB_ID_LEN + 1];
        sdw_http_route r = sdw_http_route_of(path, id);
        if ((r == SDW_ROUTE_JOB || r == SDW_ROUTE_JOB_STREAM) &&
            (strlen(id) != SDW_JOB_ID_LEN || strncmp(id, "job-", 4) || !strstr(path, id)))
            abort();
        rc = r == SDW_ROUTE_NONE ? -1 : 0;
    }
    sdw_http_is_json_type(value[5]);
    sdw_sse_parse_last_event_id(value[6]);
    for (size_t i = 0; i < n; i++)
        free(env[i]);
    return rc;
}

SDW_FUZZ_ENTRY(fuzz_http_one)
