#include "base/sampler.h"

#include <string.h>

static const char *const names[SDW_SAMPLER_COUNT] = {
    [SDW_SAMPLER_EULER] = "euler",
    [SDW_SAMPLER_EULER_A] = "euler_a",
    [SDW_SAMPLER_DDIM] = "ddim",
    [SDW_SAMPLER_DPMPP_2M] = "dpmpp_2m",
    [SDW_SAMPLER_DPMPP_2M_KARRAS] = "dpmpp_2m_karras",
    [SDW_SAMPLER_PNDM] = "pndm",
    [SDW_SAMPLER_LCM] = "lcm",
};

const char sdw_sampler_names[] = "euler, euler_a, ddim, dpmpp_2m, dpmpp_2m_karras, pndm, lcm";

const char *sdw_sampler_name(int s)
{
    return s >= 0 && s < SDW_SAMPLER_COUNT ? names[s] : "";
}

int sdw_sampler_parse(const char *name)
{
    for (int i = 0; i < SDW_SAMPLER_COUNT; i++)
        if (!strcmp(name, names[i]))
            return i;
    return -1;
}
