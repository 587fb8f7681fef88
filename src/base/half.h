/* IEEE half and bfloat16 <-> float32, exact in the widening direction and
 * rounding to nearest even in the narrowing one (NaN stays NaN), as torch
 * converts: weights arrive in files as halves, and backends store them so. */
#ifndef SDW_HALF_H
#define SDW_HALF_H

#include <stdint.h>

float sdw_f16_to_f32(uint16_t h);
uint16_t sdw_f32_to_f16(float f);
float sdw_bf16_to_f32(uint16_t h);
uint16_t sdw_f32_to_bf16(float f);

#endif
