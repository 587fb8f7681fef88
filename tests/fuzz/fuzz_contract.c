/* libFuzzer target for the request contract: any bytes as a POST /v1/jobs
 * body, and any bytes as a ring slot's serialised request (those starting
 * with the "SDWJ" magic). A request that parses must serialise, deserialise
 * to the same parameters, and render its parameters, and its images go
 * through the submission's decoding and checks; a rejection must come with
 * an error that renders. */
#include <stdlib.h>
#include <string.h>

#include "contract/contract.h"
#include "fuzz.h"
#include "image/image.h"

static void check_error(const sdw_api_error *e)
{
    if (e->http_status < 400 || e->http_status > 599 || !e->code)
        abort();
    free(sdw_api_error_json(e));
}

/* Serialises req, reads it back and compares the parameters. */
static void round_trip(const sdw_job_request *req)
{
    char *params = sdw_job_request_params_json(req);
    size_t len;
    unsigned char *blob = sdw_job_request_serialize(req, &len);
    if (!params || !blob)
        abort();
    sdw_job_request back;
    sdw_api_error e = { 0 };
    if (sdw_job_request_deserialize(blob, len, &back, &e) < 0)
        abort();
    char *again = sdw_job_request_params_json(&back);
    if (!again || strcmp(params, again) != 0 || back.init_image.len != req->init_image.len ||
        back.mask_image.len != req->mask_image.len ||
        (req->init_image.len && memcmp(back.init_image.data, req->init_image.data, req->init_image.len)) ||
        (req->mask_image.len && memcmp(back.mask_image.data, req->mask_image.data, req->mask_image.len)))
        abort();
    free(again);
    sdw_job_request_free(&back);
    free(blob);
    free(params);
}

int fuzz_contract_one(const uint8_t *data, size_t size)
{
    sdw_job_request req;
    sdw_api_error e = { 0 };
    int rc;
    if (size >= 4 && memcmp(data, "SDWJ", 4) == 0)
        rc = sdw_job_request_deserialize(data, size, &req, &e);
    else
        rc = sdw_contract_parse((const char *)data, size, NULL, &req, &e);
    if (rc < 0) {
        check_error(&e);
        return rc;
    }
    round_trip(&req);
    sdw_image init, mask;
    rc = sdw_job_request_decode_images(&req, sdw_contract_default_limits().max_pixels, &init, &mask, &e);
    if (rc < 0) {
        if (init.pixels || mask.pixels)
            abort();
        check_error(&e);
    } else if (mask.pixels && (mask.width != init.width || mask.height != init.height)) {
        abort();
    }
    sdw_image_free(&init);
    sdw_image_free(&mask);
    sdw_job_request_free(&req);
    return rc;
}

SDW_FUZZ_ENTRY(fuzz_contract_one)
