#ifndef FUZZ_SAFETENSORS_H
#define FUZZ_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

/* Runs one input through the parser and touches every tensor; returns the
 * parse status. */
int fuzz_safetensors_one(const uint8_t *data, size_t size);

#endif
