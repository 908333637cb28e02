/* xoshiro256** (Blackman & Vigna) seeded through splitmix64, and a stateless 64-bit hash
 * for counter-based streams (dropout masks that do not depend on thread scheduling). */
#include "ds/rng.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void ds_rng_seed(ds_rng *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t ds_rng_next(ds_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

float ds_rng_uniform(ds_rng *r)
{
    return (float)(ds_rng_next(r) >> 40) * (1.0f / 16777216.0f);
}

double ds_rng_normal(ds_rng *r)
{
    /* Box-Muller with u1 in (0, 1] so the log is finite. */
    double u1 = ((double)(ds_rng_next(r) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
    double u2 = (double)(ds_rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

uint64_t ds_hash64(uint64_t key, uint64_t counter)
{
    uint64_t x = key ^ (counter * 0xd1b54a32d192ed03ull);
    return splitmix64(&x);
}
