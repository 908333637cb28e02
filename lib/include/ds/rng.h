/* Seeded random numbers (xoshiro256** seeded by splitmix64): initialization, dropout, shuffling.
 * The state is a plain value owned by the caller; nothing is global. */
#ifndef DS_RNG_H
#define DS_RNG_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ds_rng {
    uint64_t s[4];
} ds_rng;

void ds_rng_seed(ds_rng *r, uint64_t seed);
uint64_t ds_rng_next(ds_rng *r);
/* Uniform in [0, 1) with 24 random bits. */
float ds_rng_uniform(ds_rng *r);
/* Standard normal (Box-Muller, both values used in turn is not kept: one draw per call). */
double ds_rng_normal(ds_rng *r);
/* Counter-based hash: a random 64-bit value for (key, counter) without state (dropout masks). */
uint64_t ds_hash64(uint64_t key, uint64_t counter);

#ifdef __cplusplus
}
#endif
#endif
