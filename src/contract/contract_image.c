/* The images of a request, decoded as the engine will decode them: the
 * pool runs this before a job enters the ring, so that a broken image is a
 * 400 at submission rather than an error event later, and the engine runs
 * it again on what it takes from the ring. A file of its own because it
 * needs the image decoders, which sdw_contract_parse's users (the CLI) do
 * not link. */
#include "contract/contract.h"
#include "image/image.h"

#include <string.h>

static const char *image_code(const char *field)
{
    return strcmp(field, "mask_image") ? SDW_API_INVALID_INIT_IMAGE : SDW_API_INVALID_MASK_IMAGE;
}

/* The size the engine works at is the image's, rounded down to the grid;
 * it must be one a generation may ask for. */
static int check_size(const sdw_image *img, const char *field, sdw_api_error *e)
{
    int w = img->width / SDW_CONTRACT_GRID * SDW_CONTRACT_GRID;
    int h = img->height / SDW_CONTRACT_GRID * SDW_CONTRACT_GRID;
    if (w < SDW_CONTRACT_MIN_SIDE || h < SDW_CONTRACT_MIN_SIDE || w > SDW_CONTRACT_MAX_SIDE ||
        h > SDW_CONTRACT_MAX_SIDE)
        return sdw_api_fail_field(e, 400, image_code(field), field,
                                  "%s is %dx%d, %dx%d on the %d-pixel grid: each side must be %d to %d", field,
                                  img->width, img->height, w, h, SDW_CONTRACT_GRID, SDW_CONTRACT_MIN_SIDE,
                                  SDW_CONTRACT_MAX_SIDE);
    return 0;
}

static int decode_one(const sdw_image_blob *b, const char *field, int grey, size_t max_pixels, sdw_image *out,
                      sdw_api_error *e)
{
    sdw_error why;
    int rc = sdw_image_decode_max(out, b->data, b->len, grey, max_pixels, &why);
    if (rc == SDW_ENOMEM)
        return sdw_api_fail(e, 500, SDW_API_INTERNAL, "out of memory decoding %s", field);
    if (rc)
        return sdw_api_fail_field(e, 400, image_code(field), field, "%s: %s", field, why.msg);
    if ((rc = check_size(out, field, e)))
        sdw_image_free(out);
    return rc;
}

int sdw_job_request_decode_images(const sdw_job_request *req, size_t max_pixels, sdw_image *init, sdw_image *mask,
                                  sdw_api_error *e)
{
    memset(init, 0, sizeof *init);
    memset(mask, 0, sizeof *mask);
    if (req->op == SDW_OPERATION_GENERATE)
        return 0;
    int rc = decode_one(&req->init_image, "init_image", 0, max_pixels, init, e);
    if (rc || req->op != SDW_OPERATION_INPAINT)
        return rc;
    rc = decode_one(&req->mask_image, "mask_image", 1, max_pixels, mask, e);
    if (!rc && (mask->width != init->width || mask->height != init->height))
        rc = sdw_api_fail_field(e, 400, SDW_API_INVALID_MASK_IMAGE, "mask_image",
                                "mask_image is %dx%d but init_image is %dx%d: they must be the same size",
                                mask->width, mask->height, init->width, init->height);
    if (rc) {
        sdw_image_free(init);
        sdw_image_free(mask);
    }
    return rc;
}
