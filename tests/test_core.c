/* Core of libds: error messages (formatting, prefixes, safe truncation), dtypes and the 16-bit
 * float conversions (known bit patterns, rounding, exhaustive round trips), the tensor table,
 * the rng, and network files (the example GPT's parameter table, error paths, summary). */
#define _GNU_SOURCE /* mkdtemp */
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "ds/ds.h"

/* ---- status and error messages ---------------------------------------------------------- */

Test(error, set_formats_and_returns_the_code)
{
    ds_error e = {0};
    cr_assert_eq(ds_error_set(&e, DS_ERR_IO, "%s: cannot open: %d", "x.bin", 42), DS_ERR_IO);
    cr_expect_eq(e.code, DS_ERR_IO);
    cr_expect_str_eq(e.msg, "x.bin: cannot open: 42");
    /* NULL is allowed: only the code comes back */
    cr_expect_eq(ds_error_set(NULL, DS_ERR_INVALID, "ignored %d", 1), DS_ERR_INVALID);
    ds_error_clear(&e);
    cr_expect_eq(e.code, DS_OK);
    cr_expect_str_eq(e.msg, "");
    ds_error_clear(NULL);
}

Test(error, long_messages_truncate_safely)
{
    static char big[3 * DS_ERROR_MSG_MAX];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    ds_error e;
    memset(&e, 0x55, sizeof e);
    ds_error_set(&e, DS_ERR_INVALID, "%s", big);
    cr_assert_eq(strnlen(e.msg, sizeof e.msg), DS_ERROR_MSG_MAX - 1);
    cr_expect(strspn(e.msg, "x") == DS_ERROR_MSG_MAX - 1);
}

Test(error, prefix_prepends_context)
{
    ds_error e = {0};
    ds_error_set(&e, DS_ERR_NUMERIC, "loss is NaN");
    cr_assert_eq(ds_error_prefix(&e, "%s:%d: ", "run.json", 7), DS_ERR_NUMERIC);
    cr_expect_str_eq(e.msg, "run.json:7: loss is NaN");
    cr_expect_eq(e.code, DS_ERR_NUMERIC);
    ds_error_prefix(&e, "ds-train: ");
    cr_expect_str_eq(e.msg, "ds-train: run.json:7: loss is NaN");
    cr_expect_eq(ds_error_prefix(NULL, "x"), DS_ERR_INTERNAL);
}

Test(error, prefix_of_a_full_message_keeps_the_context)
{
    static char big[2 * DS_ERROR_MSG_MAX];
    memset(big, 'o', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    ds_error e = {0};
    ds_error_set(&e, DS_ERR_INVALID, "%s", big); /* 1023 'o' */
    ds_error_prefix(&e, "ctx: ");
    cr_assert_eq(strnlen(e.msg, sizeof e.msg), DS_ERROR_MSG_MAX - 1);
    cr_expect(strncmp(e.msg, "ctx: ooo", 8) == 0, "%.20s", e.msg);
    cr_expect(strspn(e.msg + 5, "o") == DS_ERROR_MSG_MAX - 1 - 5);
    /* a prefix longer than the buffer: the prefix's start, terminated */
    big[sizeof big - 1] = '\0';
    memset(big, 'p', sizeof big - 1);
    ds_error_set(&e, DS_ERR_INVALID, "tail");
    ds_error_prefix(&e, "%s", big);
    cr_assert_eq(strnlen(e.msg, sizeof e.msg), DS_ERROR_MSG_MAX - 1);
    cr_expect(strspn(e.msg, "p") == DS_ERROR_MSG_MAX - 1);
}

Test(error, status_names)
{
    const char *seen[8];
    for (int s = DS_OK; s <= DS_ERR_INTERNAL; s++) {
        const char *n = ds_status_str((ds_status)s);
        cr_assert(n && *n);
        cr_expect_str_neq(n, "unknown status", "status %d has no name", s);
        for (int j = 0; j < s; j++)
            cr_expect_str_neq(n, seen[j], "statuses %d and %d share the name %s", j, s, n);
        seen[s] = n;
    }
    cr_expect_str_eq(ds_status_str(DS_OK), "ok");
    cr_expect_str_eq(ds_status_str((ds_status)99), "unknown status");
}

/* ---- dtypes ----------------------------------------------------------------------------- */

Test(dtype, names_sizes_parse)
{
    static const struct {
        ds_dtype t;
        const char *name;
        size_t size;
    } want[] = {{DS_F32, "F32", 4}, {DS_F16, "F16", 2}, {DS_BF16, "BF16", 2}, {DS_F64, "F64", 8},
                {DS_I64, "I64", 8}, {DS_I32, "I32", 4}, {DS_I16, "I16", 2},   {DS_I8, "I8", 1},
                {DS_U64, "U64", 8}, {DS_U32, "U32", 4}, {DS_U16, "U16", 2},   {DS_U8, "U8", 1},
                {DS_BOOL, "BOOL", 1}};
    cr_assert_eq(sizeof want / sizeof *want, DS_DTYPE_COUNT);
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        cr_expect_str_eq(ds_dtype_name(want[i].t), want[i].name);
        cr_expect_eq(ds_dtype_size(want[i].t), want[i].size, "%s", want[i].name);
        ds_dtype t = DS_DTYPE_COUNT;
        cr_expect_eq(ds_dtype_parse(want[i].name, &t), 0, "%s", want[i].name);
        cr_expect_eq(t, want[i].t, "%s", want[i].name);
    }
    ds_dtype t = DS_F64;
    cr_expect_eq(ds_dtype_parse("F8_E4M3", &t), -1);
    cr_expect_eq(ds_dtype_parse("", &t), -1);
    cr_expect_eq(ds_dtype_parse("F3", &t), -1);
    cr_expect_eq(ds_dtype_parse("F322", &t), -1);
    cr_expect_eq(t, DS_F64, "a failed parse changed the output");
    cr_expect_eq(ds_dtype_size(DS_DTYPE_COUNT), 0);
    cr_expect_eq(ds_dtype_size((ds_dtype)-1), 0);
    cr_expect_str_eq(ds_dtype_name(DS_DTYPE_COUNT), "?");
}

static uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float float_of(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

Test(dtype, bf16_known_patterns)
{
    cr_expect_eq(ds_f32_to_bf16(1.0f), 0x3F80);
    cr_expect_eq(ds_f32_to_bf16(-2.5f), 0xC020);
    cr_expect_eq(ds_f32_to_bf16(0.0f), 0x0000);
    cr_expect_eq(ds_f32_to_bf16(-0.0f), 0x8000);
    cr_expect_eq(ds_f32_to_bf16(INFINITY), 0x7F80);
    cr_expect_eq(ds_f32_to_bf16(-INFINITY), 0xFF80);
    /* 65504 = 0x477FE000: the low half 0xE000 rounds up to 0x4780 = 65536 */
    cr_expect_eq(ds_f32_to_bf16(65504.0f), 0x4780);
    /* round to nearest even on the dropped 16 bits */
    cr_expect_eq(ds_f32_to_bf16(float_of(0x3F808000u)), 0x3F80); /* tie, even below */
    cr_expect_eq(ds_f32_to_bf16(float_of(0x3F818000u)), 0x3F82); /* tie, even above */
    cr_expect_eq(ds_f32_to_bf16(float_of(0x3F808001u)), 0x3F81); /* above the tie */
    cr_expect_eq(ds_f32_to_bf16(float_of(0x3F807FFFu)), 0x3F80); /* below the tie */
    cr_expect_eq(ds_f32_to_bf16(FLT_MAX), 0x7F80, "FLT_MAX rounds past the largest bf16");
    /* subnormals */
    cr_expect_eq(ds_f32_to_bf16(float_of(0x00010000u)), 0x0001);
    cr_expect_eq(ds_f32_to_bf16(float_of(0x00008000u)), 0x0000);
    cr_expect_eq(ds_f32_to_bf16(float_of(0x00018000u)), 0x0002);
    cr_expect(ds_bf16_to_f32(0x0001) == ldexpf(1.0f, -133));
    cr_expect(ds_bf16_to_f32(0x3F80) == 1.0f);
    cr_expect(ds_bf16_to_f32(0xC020) == -2.5f);
    cr_expect(ds_bf16_to_f32(0x7F7F) == float_of(0x7F7F0000u));
    cr_expect(isinf(ds_bf16_to_f32(0xFF80)) && ds_bf16_to_f32(0xFF80) < 0);
    /* NaN stays NaN, even one whose payload sits only in the dropped bits */
    const uint32_t nans[] = {0x7FC00000u, 0xFFC00000u, 0x7F800001u, 0x7F80FFFFu, 0xFFFFFFFFu};
    for (size_t i = 0; i < sizeof nans / sizeof *nans; i++) {
        uint16_t h = ds_f32_to_bf16(float_of(nans[i]));
        cr_expect((h & 0x7F80) == 0x7F80 && (h & 0x7F) != 0, "NaN 0x%08x became 0x%04x", nans[i], h);
        cr_expect((h & 0x8000) == ((nans[i] >> 16) & 0x8000), "NaN 0x%08x lost its sign", nans[i]);
    }
    cr_expect(isnan(ds_bf16_to_f32(0x7FC0)));
}

Test(dtype, f16_known_patterns)
{
    cr_expect_eq(ds_f32_to_f16(1.0f), 0x3C00);
    cr_expect_eq(ds_f32_to_f16(-2.5f), 0xC100);
    cr_expect_eq(ds_f32_to_f16(0.1f), 0x2E66);
    cr_expect_eq(ds_f32_to_f16(0.0f), 0x0000);
    cr_expect_eq(ds_f32_to_f16(-0.0f), 0x8000);
    cr_expect_eq(ds_f32_to_f16(65504.0f), 0x7BFF);
    cr_expect_eq(ds_f32_to_f16(65519.99f), 0x7BFF);
    cr_expect_eq(ds_f32_to_f16(65520.0f), 0x7C00, "65520 is the tie above the largest half: inf");
    cr_expect_eq(ds_f32_to_f16(-65520.0f), 0xFC00);
    cr_expect_eq(ds_f32_to_f16(1e6f), 0x7C00);
    cr_expect_eq(ds_f32_to_f16(FLT_MAX), 0x7C00);
    cr_expect_eq(ds_f32_to_f16(INFINITY), 0x7C00);
    cr_expect_eq(ds_f32_to_f16(-INFINITY), 0xFC00);
    /* round to nearest even in the normal range */
    cr_expect_eq(ds_f32_to_f16(1.0f + ldexpf(1, -11)), 0x3C00);      /* tie, even below */
    cr_expect_eq(ds_f32_to_f16(1.0f + 3 * ldexpf(1, -11)), 0x3C02);  /* tie, even above */
    cr_expect_eq(ds_f32_to_f16(1.0f + ldexpf(1, -11) + ldexpf(1, -20)), 0x3C01);
    cr_expect_eq(ds_f32_to_f16(2048.0f + 1.0f), 0x6800);             /* 2049: tie to 2048 */
    cr_expect_eq(ds_f32_to_f16(2048.0f + 3.0f), 0x6802);             /* 2051: tie to 2052 */
    cr_expect_eq(ds_f32_to_f16(float_of(0x3FFFF000u)), 0x4000);      /* 1.999..: carry into the exponent */
    /* subnormals: units of 2^-24 */
    cr_expect_eq(ds_f32_to_f16(ldexpf(1, -24)), 0x0001);
    cr_expect_eq(ds_f32_to_f16(-ldexpf(1, -24)), 0x8001);
    cr_expect_eq(ds_f32_to_f16(ldexpf(1, -25)), 0x0000, "half the smallest subnormal ties to 0");
    cr_expect_eq(ds_f32_to_f16(ldexpf(1, -25) * 1.0001f), 0x0001);
    cr_expect_eq(ds_f32_to_f16(3 * ldexpf(1, -25)), 0x0002, "1.5 units tie to 2");
    cr_expect_eq(ds_f32_to_f16(ldexpf(1, -26)), 0x0000);
    cr_expect_eq(ds_f32_to_f16(1023 * ldexpf(1, -24)), 0x03FF);
    cr_expect_eq(ds_f32_to_f16(1023.5f * ldexpf(1, -24)), 0x0400, "tie between the largest subnormal and 2^-14");
    cr_expect_eq(ds_f32_to_f16(ldexpf(1, -14)), 0x0400);
    cr_expect_eq(ds_f32_to_f16(1e-30f), 0x0000);
    cr_expect(ds_f16_to_f32(0x0001) == ldexpf(1, -24));
    cr_expect(ds_f16_to_f32(0x8001) == -ldexpf(1, -24));
    cr_expect(ds_f16_to_f32(0x03FF) == 1023 * ldexpf(1, -24));
    cr_expect(ds_f16_to_f32(0x7BFF) == 65504.0f);
    cr_expect(ds_f16_to_f32(0xC100) == -2.5f);
    cr_expect(isinf(ds_f16_to_f32(0x7C00)) && ds_f16_to_f32(0x7C00) > 0);
    cr_expect(isinf(ds_f16_to_f32(0xFC00)) && ds_f16_to_f32(0xFC00) < 0);
    cr_expect(ds_f16_to_f32(0x8000) == 0.0f && signbit(ds_f16_to_f32(0x8000)));
    cr_expect(isnan(ds_f16_to_f32(0x7E00)) && isnan(ds_f16_to_f32(0x7C01)) && isnan(ds_f16_to_f32(0xFE00)));
    const uint32_t nans[] = {0x7FC00000u, 0xFFC00000u, 0x7F800001u, 0x7F801FFFu};
    for (size_t i = 0; i < sizeof nans / sizeof *nans; i++) {
        uint16_t h = ds_f32_to_f16(float_of(nans[i]));
        cr_expect((h & 0x7C00) == 0x7C00 && (h & 0x3FF) != 0, "NaN 0x%08x became 0x%04x", nans[i], h);
    }
}

/* Every non-NaN 16-bit value converts to float and back unchanged. */
Test(dtype, exhaustive_round_trips)
{
    for (uint32_t h = 0; h <= 0xFFFF; h++) {
        float f = ds_f16_to_f32((uint16_t)h);
        if ((h & 0x7C00) == 0x7C00 && (h & 0x3FF)) {
            cr_assert(isnan(f), "f16 0x%04x is a NaN", h);
            cr_assert(isnan(ds_f16_to_f32(ds_f32_to_f16(f))));
        } else {
            cr_assert_eq(ds_f32_to_f16(f), h, "f16 0x%04x -> %.9g -> 0x%04x", h, f, ds_f32_to_f16(f));
        }
        float b = ds_bf16_to_f32((uint16_t)h);
        cr_assert_eq(bits_of(b), h << 16, "bf16 0x%04x is the top half of a float", h);
        if ((h & 0x7F80) == 0x7F80 && (h & 0x7F))
            cr_assert(isnan(ds_bf16_to_f32(ds_f32_to_bf16(b))));
        else
            cr_assert_eq(ds_f32_to_bf16(b), h, "bf16 0x%04x round trip", h);
    }
}

/* Nearest-even against the neighbours: for random finite floats, no neighbour of the result is
 * closer, and on a tie the result is even. */
static void check_nearest(uint16_t (*to)(float), float (*from)(uint16_t), float f, uint16_t maxfinite,
                          const char *what)
{
    uint16_t h = to(f);
    uint16_t mag = h & 0x7FFF;
    if (mag > maxfinite) { /* overflow to inf: f must be at least halfway past the largest */
        double top = from(maxfinite), next = 2 * top - from((uint16_t)(maxfinite - 1));
        cr_assert(fabs((double)f) >= (top + next) / 2, "%s: %.9g overflowed to 0x%04x", what, f, h);
        return;
    }
    double d = fabs((double)from(h) - f);
    for (int s = -1; s <= 1; s += 2) {
        if ((mag == 0 && s < 0) || (mag == maxfinite && s > 0))
            continue;
        uint16_t n = (uint16_t)(h + s);
        double dn = fabs((double)from(n) - f);
        cr_assert(d < dn || (d == dn && (h & 1) == 0), "%s: %.9g (0x%08x) -> 0x%04x but 0x%04x is %s", what, f,
                  bits_of(f), h, n, d == dn ? "as close and even" : "closer");
    }
}

Test(dtype, nearest_even_random)
{
    ds_rng r;
    ds_rng_seed(&r, 99);
    for (int i = 0; i < 200000; i++) {
        uint32_t u = (uint32_t)ds_rng_next(&r);
        /* f16: magnitudes from 2^-28 to 2^17 (exponents 99..144), bf16: any finite float */
        uint32_t e = 99 + (uint32_t)(ds_rng_next(&r) % 46);
        float f = float_of((u & 0x807FFFFFu) | (e << 23));
        if (i % 7 == 0) /* exact ties: the dropped bits are 1000... */
            f = float_of((bits_of(f) & ~0x1FFFu) | 0x1000u);
        check_nearest(ds_f32_to_f16, ds_f16_to_f32, f, 0x7BFF, "f16");
        float g = float_of(u);
        if (i % 7 == 0)
            g = float_of((u & ~0xFFFFu) | 0x8000u);
        if (!isfinite(g))
            continue;
        check_nearest(ds_f32_to_bf16, ds_bf16_to_f32, g, 0x7F7F, "bf16");
    }
}

/* ---- tensor table ----------------------------------------------------------------------- */

Test(tensor, offsets_aligned_and_disjoint)
{
    ds_tensor_table tab;
    ds_table_init(&tab);
    ds_error e = {0};
    const int64_t shapes[][2] = {{1, 1}, {17, 1}, {16, 1}, {10, 10}, {3, 5}, {7, 1}};
    const int ndims[] = {1, 1, 1, 2, 2, 1};
    char name[32];
    for (int i = 0; i < 6; i++) {
        snprintf(name, sizeof name, "t%d.weight", i);
        cr_assert_eq(ds_table_add(&tab, name, ndims[i], shapes[i], &e), i, "%s", e.msg);
    }
    /* a scalar has numel 1 */
    cr_assert_eq(ds_table_add(&tab, "scalar", 0, NULL, &e), 6, "%s", e.msg);
    cr_expect_eq(tab.t[6].numel, 1);
    int64_t want_off[] = {0, 16, 48, 64, 176, 192, 208};
    for (int i = 0; i < tab.n; i++) {
        cr_expect_eq(tab.t[i].offset % DS_TENSOR_ALIGN, 0, "%s at %lld", tab.t[i].name, (long long)tab.t[i].offset);
        cr_expect_eq(tab.t[i].offset, want_off[i], "%s at %lld", tab.t[i].name, (long long)tab.t[i].offset);
        if (i + 1 < tab.n)
            cr_expect_leq(tab.t[i].offset + tab.t[i].numel, tab.t[i + 1].offset);
    }
    cr_expect_eq(tab.t[3].numel, 100);
    cr_expect_eq(tab.t[3].ndim, 2);
    cr_expect_eq(tab.total, 224);
    cr_expect_eq(tab.total % DS_TENSOR_ALIGN, 0);
    cr_expect_eq(ds_table_find(&tab, "t3.weight"), 3);
    cr_expect_eq(ds_table_find(&tab, "t3"), -1);
    cr_expect_eq(ds_table_find(&tab, "t3.weight.x"), -1);
    ds_table_free(&tab);
    cr_expect_eq(tab.n, 0);
}

Test(tensor, duplicates_and_long_names_refused)
{
    ds_tensor_table tab;
    ds_table_init(&tab);
    ds_error e = {0};
    int64_t s[1] = {4};
    cr_assert_eq(ds_table_add(&tab, "a.weight", 1, s, &e), 0);
    int64_t total = tab.total;
    cr_expect_eq(ds_table_add(&tab, "a.weight", 1, s, &e), -1);
    cr_expect_eq(e.code, DS_ERR_INVALID);
    cr_expect(strstr(e.msg, "duplicate") && strstr(e.msg, "a.weight"), "%s", e.msg);
    cr_expect_eq(tab.n, 1);
    cr_expect_eq(tab.total, total);
    char longname[DS_NAME_MAX + 8];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    cr_expect_eq(ds_table_add(&tab, longname, 1, s, &e), -1);
    cr_expect(strstr(e.msg, "too long"), "%s", e.msg);
    longname[DS_NAME_MAX - 1] = '\0'; /* 127 characters fit */
    cr_expect_eq(ds_table_add(&tab, longname, 1, s, &e), 1, "%s", e.msg);
    /* many entries: the table grows and keeps its order */
    for (int i = 0; i < 100; i++) {
        char n[16];
        snprintf(n, sizeof n, "x%d", i);
        cr_assert_eq(ds_table_add(&tab, n, 1, s, &e), 2 + i);
    }
    cr_expect_eq(ds_table_find(&tab, "x99"), 101);
    cr_expect_eq(tab.t[101].offset, 101 * 16);
    ds_table_free(&tab);
}

Test(tensor, shape_str)
{
    char buf[64];
    int64_t s[3] = {768, 256, 3};
    ds_shape_str(2, s, buf, sizeof buf);
    cr_expect_str_eq(buf, "[768, 256]");
    ds_shape_str(1, s, buf, sizeof buf);
    cr_expect_str_eq(buf, "[768]");
    ds_shape_str(0, s, buf, sizeof buf);
    cr_expect_str_eq(buf, "[]");
    char small[7];
    memset(small, 'Z', sizeof small);
    ds_shape_str(3, s, small, sizeof small);
    cr_expect_lt(strnlen(small, sizeof small), sizeof small, "not terminated");
    cr_expect(strncmp(small, "[768, 256, 3]", strlen(small)) == 0, "%s", small);
}

/* ---- rng -------------------------------------------------------------------------------- */

/* The documented generator, written out: xoshiro256** seeded by splitmix64. */
static uint64_t ref_splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t ref_rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

Test(rng, is_xoshiro256starstar_seeded_by_splitmix64)
{
    uint64_t x = 12345, s[4];
    for (int i = 0; i < 4; i++)
        s[i] = ref_splitmix(&x);
    ds_rng r;
    ds_rng_seed(&r, 12345);
    for (int i = 0; i < 100; i++) {
        uint64_t want = ref_rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
        s[2] ^= s[0], s[3] ^= s[1], s[1] ^= s[2], s[0] ^= s[3], s[2] ^= t, s[3] = ref_rotl(s[3], 45);
        cr_assert_eq(ds_rng_next(&r), want, "output %d", i);
    }
}

Test(rng, deterministic_and_seed_dependent)
{
    ds_rng a, b, c;
    ds_rng_seed(&a, 7);
    ds_rng_seed(&b, 7);
    ds_rng_seed(&c, 8);
    int same_c = 0;
    for (int i = 0; i < 1000; i++) {
        uint64_t x = ds_rng_next(&a), y = ds_rng_next(&b), z = ds_rng_next(&c);
        cr_assert_eq(x, y);
        same_c += x == z;
    }
    cr_expect_eq(same_c, 0);
    ds_rng_seed(&a, 0);
    cr_expect(a.s[0] | a.s[1] | a.s[2] | a.s[3], "seed 0 gave the all-zero state");
    /* the counter hash is a pure function that changes with key and counter */
    cr_expect_eq(ds_hash64(1, 2), ds_hash64(1, 2));
    cr_expect_neq(ds_hash64(1, 2), ds_hash64(1, 3));
    cr_expect_neq(ds_hash64(1, 2), ds_hash64(2, 2));
    cr_expect_neq(ds_hash64(0, 0), ds_hash64(0, 1));
}

Test(rng, uniform_and_normal_statistics)
{
    ds_rng r;
    ds_rng_seed(&r, 2024);
    const int n = 200000;
    double su = 0, sn = 0, sn2 = 0, sn4 = 0;
    int in1 = 0, bins[10] = {0};
    for (int i = 0; i < n; i++) {
        float u = ds_rng_uniform(&r);
        cr_assert(u >= 0.0f && u < 1.0f, "uniform %.9g", u);
        su += u;
        bins[(int)(u * 10)]++;
        double z = ds_rng_normal(&r);
        cr_assert(isfinite(z));
        sn += z, sn2 += z * z, sn4 += z * z * z * z;
        in1 += fabs(z) < 1;
    }
    /* n = 2e5: standard errors 0.00065 (uniform mean), 0.0022 (normal mean), 0.0032 (variance),
     * 0.001 (P(|z|<1)); bounds at ~5-7 standard errors */
    cr_expect(fabs(su / n - 0.5) < 0.004, "uniform mean %.5f", su / n);
    for (int b = 0; b < 10; b++)
        cr_expect(abs(bins[b] - n / 10) < 1000, "uniform bin %d has %d of %d", b, bins[b], n);
    double mean = sn / n, var = sn2 / n - mean * mean;
    cr_expect(fabs(mean) < 0.012, "normal mean %.5f", mean);
    cr_expect(fabs(var - 1) < 0.02, "normal variance %.5f", var);
    cr_expect(fabs(sn4 / n - 3) < 0.1, "normal fourth moment %.4f (3 for a Gaussian)", sn4 / n);
    cr_expect(fabs((double)in1 / n - 0.682689) < 0.006, "P(|z| < 1) = %.5f", (double)in1 / n);
}

/* ---- network files ---------------------------------------------------------------------- */

#define GPT_HEAD "{\"input\": {\"type\": \"tokens\", \"vocab_size\": 256, \"seq_len\": 64}, \"layers\": ["
#define GPT_BLOCK(HEADS)                                                                          \
    "{\"type\": \"repeat\", \"name\": \"h\", \"count\": 2, \"layers\": [{\"type\": \"residual\", "     \
    "\"layers\": [{\"type\": \"layernorm\", \"name\": \"ln_1\"}, {\"type\": \"attention\", \"name\": "  \
    "\"attn\", \"heads\": " HEADS ", \"causal\": true}]}, {\"type\": \"residual\", \"layers\": "        \
    "[{\"type\": \"layernorm\", \"name\": \"ln_2\"}, {\"type\": \"linear\", \"name\": \"fc\", "        \
    "\"out\": 512}, {\"type\": \"gelu\", \"approximate\": \"tanh\"}, {\"type\": \"linear\", \"name\": " \
    "\"proj\", \"out\": 128}]}]}"
#define GPT_WITH(HEADS, HEAD_LAYER, LOSS)                                                         \
    GPT_HEAD "{\"type\": \"embedding\", \"name\": \"wte\", \"dim\": 128}, {\"type\": "               \
             "\"position_embedding\", \"name\": \"wpe\"}, " GPT_BLOCK(HEADS)                          \
             ", {\"type\": \"layernorm\", \"name\": \"ln_f\"}, " HEAD_LAYER "], \"loss\": {\"type\": " \
             "\"" LOSS "\"}}"
#define LM_HEAD "{\"type\": \"linear\", \"name\": \"lm_head\", \"out\": 256, \"bias\": false, \"tied_to\": \"wte\"}"

/* the example, verbatim */
static const char *gpt_json = GPT_WITH("4", LM_HEAD, "cross_entropy");

static ds_net *parse_ok(const char *json)
{
    ds_net *net = NULL;
    ds_error e = {0};
    cr_assert_eq(ds_net_parse_string(&net, json, "gpt.json", &e), DS_OK, "%s", e.msg);
    return net;
}

/* Parse must fail with exactly this message (want starts with "gpt.json: ..."). */
static void parse_fails_exactly(const char *json, const char *want)
{
    ds_net *net = NULL;
    ds_error e = {0};
    ds_status st = ds_net_parse_string(&net, json, "gpt.json", &e);
    cr_assert_eq(st, DS_ERR_INVALID, "parsed, expected: %s", want);
    cr_expect_str_eq(e.msg, want);
}

/* Parse must fail with a message holding each of the strings. */
static void parse_fails(const char *json, const char *s1, const char *s2)
{
    ds_net *net = NULL;
    ds_error e = {0};
    ds_status st = ds_net_parse_string(&net, json, "net.json", &e);
    cr_assert_eq(st, DS_ERR_INVALID, "parsed, expected an error with \"%s\"", s1);
    cr_expect(strncmp(e.msg, "net.json", 8) == 0, "the message does not name the file: %s", e.msg);
    cr_expect(strstr(e.msg, s1) != NULL, "\"%s\" not in: %s", s1, e.msg);
    if (s2)
        cr_expect(strstr(e.msg, s2) != NULL, "\"%s\" not in: %s", s2, e.msg);
}

Test(net, example_gpt_parameter_table)
{
    ds_net *net = parse_ok(gpt_json);
    static const struct {
        const char *name;
        int ndim;
        int64_t d0, d1;
    } block[] = {{"ln_1.weight", 1, 128, 0},      {"ln_1.bias", 1, 128, 0},       {"attn.qkv.weight", 2, 384, 128},
                 {"attn.qkv.bias", 1, 384, 0},    {"attn.proj.weight", 2, 128, 128}, {"attn.proj.bias", 1, 128, 0},
                 {"ln_2.weight", 1, 128, 0},      {"ln_2.bias", 1, 128, 0},       {"fc.weight", 2, 512, 128},
                 {"fc.bias", 1, 512, 0},          {"proj.weight", 2, 128, 512},   {"proj.bias", 1, 128, 0}};
    char names[28][64];
    int ndim[28];
    int64_t d0[28], d1[28];
    int k = 0;
    snprintf(names[k], 64, "wte.weight"), ndim[k] = 2, d0[k] = 256, d1[k++] = 128;
    snprintf(names[k], 64, "wpe.weight"), ndim[k] = 2, d0[k] = 64, d1[k++] = 128;
    for (int l = 0; l < 2; l++)
        for (int j = 0; j < 12; j++)
            snprintf(names[k], 64, "h.%d.%s", l, block[j].name), ndim[k] = block[j].ndim, d0[k] = block[j].d0,
                                                                 d1[k++] = block[j].d1;
    snprintf(names[k], 64, "ln_f.weight"), ndim[k] = 1, d0[k] = 128, d1[k++] = 0;
    snprintf(names[k], 64, "ln_f.bias"), ndim[k] = 1, d0[k] = 128, d1[k++] = 0;
    cr_assert_eq(net->params.n, 28, "%d parameters", net->params.n);
    int64_t total = 0;
    for (int i = 0; i < 28; i++) {
        const ds_tensor_info *t = &net->params.t[i];
        cr_expect_str_eq(t->name, names[i], "parameter %d", i);
        cr_expect_eq(t->ndim, ndim[i], "%s ndim", t->name);
        cr_expect_eq(t->shape[0], d0[i], "%s shape[0] %lld", t->name, (long long)t->shape[0]);
        if (ndim[i] == 2)
            cr_expect_eq(t->shape[1], d1[i], "%s shape[1] %lld", t->name, (long long)t->shape[1]);
        cr_expect_eq(t->offset % DS_TENSOR_ALIGN, 0);
        total += t->numel;
    }
    cr_expect_eq(ds_table_find(&net->params, "lm_head.weight"), -1, "the tied head owns no weight");
    cr_expect_eq(ds_table_find(&net->params, "lm_head.bias"), -1);
    cr_expect_eq(net->total_params, 437760);
    cr_expect_eq(total, 437760);
    cr_expect_eq(net->input, DS_INPUT_TOKENS);
    cr_expect_eq(net->vocab_size, 256);
    cr_expect_eq(net->seq_len, 64);
    cr_expect_eq(net->positions, 64);
    cr_expect_eq(net->out_dim, 256);
    cr_expect_eq(net->loss, DS_LOSS_CROSS_ENTROPY);

    /* the flat layer list: repeat unrolled, residuals as BEGIN/END pairs */
    static const ds_layer_kind kinds[] = {
        DS_LAYER_EMBEDDING, DS_LAYER_POSITION_EMBEDDING,
        DS_LAYER_RESIDUAL_BEGIN, DS_LAYER_LAYERNORM, DS_LAYER_ATTENTION, DS_LAYER_RESIDUAL_END,
        DS_LAYER_RESIDUAL_BEGIN, DS_LAYER_LAYERNORM, DS_LAYER_LINEAR, DS_LAYER_GELU, DS_LAYER_LINEAR,
        DS_LAYER_RESIDUAL_END,
        DS_LAYER_RESIDUAL_BEGIN, DS_LAYER_LAYERNORM, DS_LAYER_ATTENTION, DS_LAYER_RESIDUAL_END,
        DS_LAYER_RESIDUAL_BEGIN, DS_LAYER_LAYERNORM, DS_LAYER_LINEAR, DS_LAYER_GELU, DS_LAYER_LINEAR,
        DS_LAYER_RESIDUAL_END,
        DS_LAYER_LAYERNORM, DS_LAYER_LINEAR};
    cr_assert_eq(net->n_layers, (int)(sizeof kinds / sizeof *kinds));
    for (int i = 0; i < net->n_layers; i++)
        cr_expect_eq(net->layers[i].kind, kinds[i], "layer %d is %s", i, ds_layer_kind_name(net->layers[i].kind));
    const ds_layer *attn1 = &net->layers[14], *head = &net->layers[23];
    cr_expect_str_eq(attn1->path, "h.1.attn");
    cr_expect_str_eq(attn1->json_path, "layers[2].layers[0].layers[1]");
    cr_expect_eq(attn1->heads, 4);
    cr_expect_eq(attn1->causal, 1);
    cr_expect_eq(net->layers[15].begin, 12, "a residual end points at its begin");
    cr_expect_eq(net->layers[19].approximate, 1);
    cr_expect_str_eq(head->path, "lm_head");
    cr_expect(head->tied);
    cr_expect_eq(head->w, ds_table_find(&net->params, "wte.weight"));
    cr_expect_eq(head->b, -1);
    cr_expect_eq(head->params, 0);
    /* forward FLOPs per sequence: at least the matmuls (2*T per weight) and attention's
     * q.k and p.v (4*T*T*C per layer), and not much more (elementwise ops are small) */
    int64_t mm = 2 * 64 * (2 * (384 * 128 + 128 * 128 + 512 * 128 + 128 * 512) + 256 * 128);
    int64_t lo = mm + 2 * 4 * 64 * 64 * 128;
    cr_expect(net->flops_per_sample >= lo && net->flops_per_sample <= lo + lo / 10, "flops %lld, expected ~%lld",
              (long long)net->flops_per_sample, (long long)lo);
    ds_net_free(net);
}

Test(net, init_params)
{
    ds_net *net = parse_ok(gpt_json);
    int64_t n = net->params.total;
    float *a = malloc((size_t)n * sizeof *a), *b = malloc((size_t)n * sizeof *b);
    memset(a, 0x7f, (size_t)n * sizeof *a); /* garbage: padding must come out zero */
    ds_net_init_params(net, a, 1);
    ds_net_init_params(net, b, 1);
    cr_expect(memcmp(a, b, (size_t)n * sizeof *a) == 0, "same seed, different parameters");
    ds_net_init_params(net, b, 2);
    cr_expect(memcmp(a, b, (size_t)n * sizeof *a) != 0, "another seed, same parameters");
    int64_t covered = 0;
    for (int i = 0; i < net->params.n; i++) {
        const ds_tensor_info *t = &net->params.t[i];
        const float *p = a + t->offset;
        size_t len = strlen(t->name);
        double s = 0, s2 = 0;
        for (int64_t j = 0; j < t->numel; j++)
            s += p[j], s2 += (double)p[j] * p[j];
        if (strstr(t->name, "ln_") && strcmp(t->name + len - 7, ".weight") == 0) {
            for (int64_t j = 0; j < t->numel; j++)
                cr_assert(p[j] == 1.0f, "%s[%lld] = %g, expected 1", t->name, (long long)j, p[j]);
        } else if (strcmp(t->name + len - 5, ".bias") == 0) {
            for (int64_t j = 0; j < t->numel; j++)
                cr_assert(p[j] == 0.0f, "%s[%lld] = %g, expected 0", t->name, (long long)j, p[j]);
        } else { /* normal(0, 0.02); the smallest weight has 8192 elements: sd error ~1% */
            double sd = sqrt(s2 / t->numel);
            cr_expect(fabs(sd - 0.02) < 0.001, "%s: sd %.5f, expected 0.02", t->name, sd);
            cr_expect(fabs(s / t->numel) < 0.002, "%s: mean %.5f", t->name, s / t->numel);
        }
        for (int64_t j = t->offset + t->numel; j < (i + 1 < net->params.n ? net->params.t[i + 1].offset : n); j++)
            cr_assert(a[j] == 0.0f, "padding after %s is %g", t->name, a[j]);
        covered += t->numel;
    }
    cr_expect_eq(covered, net->total_params);
    free(a);
    free(b);
    ds_net_free(net);
}

/* ds_net_init_each: the values of ds_net_init_params, tensor by tensor in table order, through
 * one buffer; the callback's error stops it at that tensor */
typedef struct {
    const ds_net *net;
    const float *flat;
    int seen, bad, stop_at;
} each_ctx;

static ds_status each_check(void *ctx, int tensor, const float *v, ds_error *err)
{
    each_ctx *c = ctx;
    const ds_tensor_info *t = &c->net->params.t[tensor];
    c->bad += tensor != c->seen || memcmp(v, c->flat + t->offset, (size_t)t->numel * sizeof *v) != 0;
    c->seen++;
    return tensor == c->stop_at ? ds_error_set(err, DS_ERR_IO, "stop at %d", tensor) : DS_OK;
}

Test(net, init_each_gives_init_params_values)
{
    ds_net *net = parse_ok(gpt_json);
    float *flat = malloc((size_t)net->params.total * sizeof *flat);
    int64_t largest = 0;
    for (int i = 0; i < net->params.n; i++)
        largest = net->params.t[i].numel > largest ? net->params.t[i].numel : largest;
    float *buf = malloc((size_t)largest * sizeof *buf);
    ds_net_init_params(net, flat, 5);
    each_ctx c = {net, flat, 0, 0, -1};
    ds_error e = {0};
    cr_expect_eq(ds_net_init_each(net, 5, buf, each_check, &c, &e), DS_OK);
    cr_expect_eq(c.seen, net->params.n);
    cr_expect_eq(c.bad, 0, "%d tensors differ from ds_net_init_params's", c.bad);
    each_ctx d = {net, flat, 0, 0, 2};
    cr_expect_eq(ds_net_init_each(net, 5, buf, each_check, &d, &e), DS_ERR_IO);
    cr_expect_eq(d.seen, 3, "stops at the failing tensor");
    cr_expect_str_eq(e.msg, "stop at 2");
    free(buf);
    free(flat);
    ds_net_free(net);
}

Test(net, summary_has_the_table_and_totals)
{
    ds_net *net = parse_ok(gpt_json);
    char *s = ds_net_summary(net, 8);
    cr_assert(s != NULL);
    cr_expect(strncmp(s, "layer", 5) == 0, "%s", s);
    cr_expect(strstr(s, "total: 437760 parameters (437.76K) in 28 tensors, 1.75 MB in fp32\n") != NULL, "%s", s);
    cr_expect(strstr(s, "FLOPs per step of batch 8: forward ") != NULL, "%s", s);
    cr_expect(strstr(s, "h.1.attn") && strstr(s, "attention") && strstr(s, "[8, 64, 128]"), "%s", s);
    cr_expect(strstr(s, "(tied)") && strstr(s, "[8, 64, 256]"), "%s", s);
    /* one line per layer except the residual begins, plus the header and two totals */
    int lines = 0;
    for (const char *p = s; *p; p++)
        lines += *p == '\n';
    cr_expect_eq(lines, 1 + (24 - 4) + 2, "%d lines:\n%s", lines, s);
    free(s);
    ds_net_free(net);
}

Test(net, error_paths_in_the_gpt)
{
    /* the attention inside repeat "h" -> its first residual -> its second layer */
    parse_fails_exactly(GPT_WITH("5", LM_HEAD, "cross_entropy"),
                        "gpt.json: layers[2].layers[0].layers[1].heads: 5 does not divide dim 128");
    parse_fails_exactly(GPT_WITH("0", LM_HEAD, "cross_entropy"),
                        "gpt.json: layers[2].layers[0].layers[1].heads: expected an integer >= 1, found 0");
    parse_fails_exactly(GPT_WITH("4.5", LM_HEAD, "cross_entropy"),
                        "gpt.json: layers[2].layers[0].layers[1].heads: expected an integer, found 4.5");
    parse_fails_exactly(GPT_WITH("\"4\"", LM_HEAD, "cross_entropy"),
                        "gpt.json: layers[2].layers[0].layers[1].heads: expected an integer, found \"4\"");
    /* doubles beyond 64 bits are not integers here (found by scripts/fuzz.sh: the conversion to
     * int64 was undefined behaviour before the range check) */
    parse_fails_exactly(GPT_WITH("644e36", LM_HEAD, "cross_entropy"),
                        "gpt.json: layers[2].layers[0].layers[1].heads: expected an integer, found 644e36");
    parse_fails_exactly(GPT_WITH("-1e19", LM_HEAD, "cross_entropy"),
                        "gpt.json: layers[2].layers[0].layers[1].heads: expected an integer, found -1e19");
    parse_fails_exactly(GPT_WITH("4e9", LM_HEAD, "cross_entropy"),
                        "gpt.json: layers[2].layers[0].layers[1].heads: 4000000000 is too large (at most 2147483647)");
    /* FLOPs beyond 2^62, per layer (4 T^2 C of attention at seq_len 2^28) and in all (six
     * layers at seq_len 111111116), were int64 overflows (UBSan, found by fuzzing) */
    parse_fails_exactly("{\"input\": {\"type\": \"tokens\", \"vocab_size\": 64, \"seq_len\": 268435456},"
                        " \"layers\": [{\"type\": \"embedding\", \"name\": \"wte\", \"dim\": 32},"
                        " {\"type\": \"attention\", \"name\": \"attn\", \"heads\": 4, \"causal\": true},"
                        " {\"type\": \"linear\", \"name\": \"head\", \"out\": 64}],"
                        " \"loss\": {\"type\": \"cross_entropy\"}}",
                        "gpt.json: layers[1]: 9.22e+18 forward FLOPs per sample: too large (at most 2^62; "
                        "seq_len or dim too large)");
    char six[1024] = "";
    for (int i = 0; i < 6; i++)
        snprintf(six + strlen(six), sizeof six - strlen(six),
                 ", {\"type\": \"attention\", \"name\": \"a%d\", \"heads\": 4}", i);
    char big[1400];
    snprintf(big, sizeof big,
             "{\"input\": {\"type\": \"tokens\", \"vocab_size\": 64, \"seq_len\": 111111116}, \"layers\":"
             " [{\"type\": \"embedding\", \"name\": \"wte\", \"dim\": 32}%s, {\"type\": \"linear\", "
             "\"name\": \"head\", \"out\": 64}], \"loss\": {\"type\": \"cross_entropy\"}}", six);
    parse_fails_exactly(big, "gpt.json: layers: 9.48e+18 forward FLOPs per sample in all: too large (at most 2^62)");
    /* bad ties: no such layer; a weight of the wrong shape */
    parse_fails_exactly(
        GPT_WITH("4", "{\"type\": \"linear\", \"name\": \"lm_head\", \"out\": 256, \"tied_to\": \"wtf\"}", "cross_entropy"),
        "gpt.json: layers[4].tied_to: no earlier layer \"wtf\" with a weight to tie to");
    /* tied to a layer that is itself tied: named, and the weight's owner suggested */
    parse_fails_exactly(
        GPT_WITH("4", "{\"type\": \"linear\", \"name\": \"lm_head\", \"out\": 256, \"tied_to\": \"wte\"}, "
                 "{\"type\": \"linear\", \"name\": \"again\", \"out\": 256, \"tied_to\": \"lm_head\"}", "cross_entropy"),
        "gpt.json: layers[5].tied_to: \"lm_head\" has no weight of its own: it is tied to \"wte\"; tie to that "
        "(\"tied_to\": \"wte\")");
    parse_fails_exactly(
        GPT_WITH("4", "{\"type\": \"linear\", \"name\": \"lm_head\", \"out\": 256, \"tied_to\": \"wpe\"}", "cross_entropy"),
        "gpt.json: layers[4].tied_to: a tied weight must have the shape [out, in] = [256, 128] but wpe.weight is "
        "[64, 128]");
    /* tokens predict tokens: mse is refused, and the head must produce vocab_size logits */
    parse_fails_exactly(GPT_WITH("4", LM_HEAD, "mse"),
                        "gpt.json: loss.type: mse needs a features input (tokens predict the next token: use "
                        "cross_entropy)");
    parse_fails_exactly(GPT_WITH("4", "{\"type\": \"linear\", \"name\": \"lm_head\", \"out\": 255}", "cross_entropy"),
                        "gpt.json: loss: cross_entropy over next tokens: the last layer gives 255 features but the "
                        "vocabulary has 256 tokens");
    parse_fails(GPT_WITH("4", LM_HEAD, "hinge"), "loss.type", "\"cross_entropy\" or \"mse\"");
    /* unknown layer type, unknown key, missing name */
    parse_fails(GPT_WITH("4", "{\"type\": \"conv\", \"name\": \"c\"}", "cross_entropy"), "layers[4]: ",
                "unknown layer type \"conv\"");
    parse_fails(GPT_WITH("4", "{\"type\": \"linear\", \"name\": \"lm_head\", \"out\": 256, \"tied\": \"wte\"}",
                         "cross_entropy"),
                "layers[4].tied: unknown key", "tied_to");
    parse_fails(GPT_WITH("4", "{\"type\": \"linear\", \"out\": 256}", "cross_entropy"), "layers[4].name: missing",
                NULL);
}

/* A features network around one layer: {"input": features dim 8, "layers": [L, ...]} */
#define FEAT(LAYERS, LOSS)                                                                        \
    "{\"input\": {\"type\": \"features\", \"dim\": 8}, \"layers\": [" LAYERS "], \"loss\": {\"type\": \"" LOSS "\"}}"

Test(net, error_paths_in_small_networks)
{
    /* layernorm computes in fp32: an eps that is 0 or inf there is refused, naming it */
    parse_fails(FEAT("{\"type\": \"layernorm\", \"name\": \"ln\", \"eps\": 1e-60}", "mse"), "layers[0].eps: ",
                "expected a positive number that fp32 holds (1e-45 to 3.4e38), found 1e-60");
    parse_fails(FEAT("{\"type\": \"layernorm\", \"name\": \"ln\", \"eps\": 1e60}", "mse"), "layers[0].eps: ",
                "found 1e60");
    parse_fails(FEAT("{\"type\": \"linear\", \"name\": \"a\", \"out\": 4, \"bias\": 1}", "mse"), "layers[0].bias: ",
                "expected true or false, found 1");
    parse_fails(FEAT("{\"type\": \"repeat\", \"name\": \"r\", \"count\": 2, \"layers\": [{\"type\": \"relu\"}, "
                     "{\"type\": \"linear\", \"out\": 4}]}",
                     "mse"),
                "layers[0].layers[1].name: missing", NULL);
    parse_fails(FEAT("{\"type\": \"repeat\", \"name\": \"r\", \"count\": 0, \"layers\": [{\"type\": \"relu\"}]}", "mse"),
                "layers[0].count: expected an integer >= 1, found 0", NULL);
    /* a count that expands past the layer limit is refused at once (it took minutes and GBs) */
    parse_fails(FEAT("{\"type\": \"repeat\", \"name\": \"r\", \"count\": 2000000000, \"layers\": [{\"type\": \"relu\"}]}",
                     "mse"),
                "layers[0].layers[0]: the network expands to more than 16384 layers", NULL);
    parse_fails(FEAT("{\"type\": \"residual\", \"layers\": [{\"type\": \"linear\", \"name\": \"a\", \"out\": 4}]}", "mse"),
                "layers[0]: the branch maps 8 features to 4", NULL);
    parse_fails(FEAT("{\"type\": \"residual\", \"layers\": []}", "mse"), "layers[0].layers: expected a non-empty array",
                NULL);
    parse_fails(FEAT("{\"type\": \"dropout\", \"p\": 1}", "mse"), "layers[0].p: expected a probability in [0, 1)", NULL);
    parse_fails(FEAT("{\"type\": \"gelu\", \"approximate\": \"sigmoid\"}", "mse"), "layers[0].approximate: ",
                "\"sigmoid\"");
    parse_fails(FEAT("{\"type\": \"attention\", \"name\": \"a\", \"heads\": 2}", "mse"), "layers[0]: ",
                "attention needs a tokens input");
    parse_fails(FEAT("{\"type\": \"linear\", \"name\": \"a.b\", \"out\": 4}", "mse"), "layers[0].name: ",
                "not a valid name");
    parse_fails(FEAT("{\"type\": \"relu\"}, 5", "mse"), "layers[1]: expected a layer object, found 5", NULL);
    parse_fails(FEAT("{\"name\": \"x\"}", "mse"), "layers[0].type: missing", NULL);
    parse_fails(FEAT("", "mse"), "layers: expected a non-empty array of layers, found []", NULL);
    /* present but of the wrong kind: said so, with what was found (not "missing") */
    parse_fails("{\"input\": 5, \"layers\": [], \"loss\": {\"type\": \"mse\"}}",
                "input: expected an object such as {\"type\": \"tokens\", ...}, found 5", NULL);
    parse_fails("{\"input\": {\"type\": \"features\", \"dim\": 8}, \"layers\": [{\"type\": \"relu\"}], \"loss\": \"mse\"}",
                "loss: expected {\"type\": \"cross_entropy\"} or {\"type\": \"mse\"}, found \"mse\"", NULL);
    parse_fails("{\"input\": {\"type\": \"features\", \"dim\": 8}, \"loss\": {\"type\": \"mse\"}}",
                "layers: missing (expected a non-empty array of layers)", NULL);
    /* dropout p: a number, below 1 in fp32 too (0.99999999 is 1.0f: it would drop everything) */
    parse_fails(FEAT("{\"type\": \"dropout\", \"p\": 0.99999999}", "mse"),
                "layers[0].p: expected a probability in [0, 1), found 0.99999998999999995 (1 in fp32)", NULL);
    parse_fails(FEAT("{\"type\": \"dropout\", \"p\": \"0.1\"}", "mse"),
                "layers[0].p: expected a probability in [0, 1), found \"0.1\"", NULL);
    /* layers without parameters ignore a name, but a given one is a string */
    parse_fails(FEAT("{\"type\": \"relu\", \"name\": 5}", "mse"), "layers[0].name: expected a string, found 5", NULL);
    parse_fails(FEAT("{\"type\": \"gelu\", \"name\": {\"a\": 1}}", "mse"), "layers[0].name: expected a string", NULL);
    /* an error in a repeat's second copy names the copy (the JSON path is copy 0's too) */
    parse_fails(FEAT("{\"type\": \"repeat\", \"name\": \"h\", \"count\": 2, \"layers\": [{\"type\": \"residual\", "
                     "\"layers\": [{\"type\": \"linear\", \"name\": \"c\", \"out\": 8}]}, {\"type\": \"linear\", "
                     "\"name\": \"b\", \"out\": 3}]}",
                     "mse"),
                "layers[0].layers[0]: the branch maps 3 features to 8", "(in copy h.1)");
    /* a full name too long for its parameters' names is refused, never cut */
    {
        char net[1024], a[80], bn[80];
        memset(a, 'A', 64), a[64] = 0;
        memset(bn, 'B', 60), bn[60] = 0;
        snprintf(net, sizeof net, FEAT("{\"type\": \"repeat\", \"name\": \"%s\", \"count\": 1, \"layers\": "
                                       "[{\"type\": \"repeat\", \"name\": \"%s\", \"count\": 1, \"layers\": "
                                       "[{\"type\": \"linear\", \"name\": \"c\", \"out\": 8}]}]}", "mse"), a, bn);
        parse_fails(net, "layers[0].layers[0]: the copies' names (", ".0) are too long");
        /* a linear's longest parameter name is NAME.weight: 117 characters leave it at 124 */
        memset(bn, 'B', 50), bn[50] = 0;
        snprintf(net, sizeof net, FEAT("{\"type\": \"repeat\", \"name\": \"%s\", \"count\": 1, \"layers\": "
                                       "[{\"type\": \"linear\", \"name\": \"%s\", \"out\": 8}]}", "mse"), a, bn);
        ds_net_free(parse_ok(net));
        /* an attention's is NAME.proj.weight */
        snprintf(net, sizeof net, "{\"input\": {\"type\": \"tokens\", \"vocab_size\": 8, \"seq_len\": 4}, \"layers\": "
                 "[{\"type\": \"embedding\", \"name\": \"e\", \"dim\": 8}, {\"type\": \"repeat\", \"name\": \"%s\", "
                 "\"count\": 1, \"layers\": [{\"type\": \"attention\", \"name\": \"%s\", \"heads\": 2}]}, "
                 "{\"type\": \"linear\", \"name\": \"h\", \"out\": 8}], \"loss\": {\"type\": \"cross_entropy\"}}", a, bn);
        parse_fails(net, "layers[1].layers[0].name: the layer's full name", "is 117 characters");
    }
    /* two layers of the same name would share parameter names */
    parse_fails(FEAT("{\"type\": \"linear\", \"name\": \"fc\", \"out\": 8}, {\"type\": \"linear\", \"name\": \"fc\", "
                     "\"out\": 8}",
                     "mse"),
                "duplicate", "fc.weight");
    /* tokens networks start with an embedding */
    parse_fails("{\"input\": {\"type\": \"tokens\", \"vocab_size\": 10, \"seq_len\": 4}, \"layers\": [{\"type\": "
                "\"linear\", \"name\": \"a\", \"out\": 10}], \"loss\": {\"type\": \"cross_entropy\"}}",
                "layers[0]: the first layer of a tokens network must be an embedding", NULL);
    parse_fails("{\"input\": {\"type\": \"tokens\", \"vocab_size\": 10, \"seq_len\": 4, \"dim\": 3}, \"layers\": [], "
                "\"loss\": {\"type\": \"cross_entropy\"}}",
                "input.dim: unknown key", NULL);
    parse_fails("{\"input\": {\"type\": \"images\"}, \"layers\": [], \"loss\": {\"type\": \"mse\"}}", "input.type: ",
                "\"tokens\" or \"features\"");
    parse_fails("{\"input\": {\"type\": \"features\", \"dim\": 8}, \"layers\": [{\"type\": \"relu\"}], \"loss\": "
                "{\"type\": \"mse\"}, \"optimizer\": {}}",
                "optimizer: unknown key", NULL);
    parse_fails("[1, 2]", "expected a JSON object", NULL);
}

Test(net, invalid_json_and_duplicate_keys)
{
    /* line 2, column 13: the comma where a key should be */
    parse_fails("{\n  \"input\": {,\n}", "net.json:2:13: invalid JSON", NULL);
    parse_fails("{\"input\": [1, 2", "net.json:1:", "invalid JSON");
    parse_fails("", "net.json:1:1: invalid JSON", NULL);
    parse_fails(FEAT("{\"type\": \"relu\"}", "mse") " trailing", "net.json:1:", "invalid JSON: text after the end");
    /* strict JSON, as Python's json reads DeepSpeed's configs: no comments, trailing commas,
     * single quotes */
    parse_fails("{\"input\": {\"type\": \"features\", \"dim\": 8}, /* c */ \"layers\": []}", "net.json:1:", "invalid JSON");
    parse_fails("{\"input\": {\"type\": \"features\", \"dim\": 8},}", "net.json:1:", "invalid JSON");
    parse_fails("{'input': {}}", "net.json:1: invalid JSON: a single quote", NULL);
    parse_fails("\xEF\xBB\xBF{}", "net.json:1:1: invalid JSON: a UTF-8 byte-order mark", NULL);
    /* json-c would keep the last of duplicate keys; they are refused, with the line */
    parse_fails("{\"input\": {\"type\": \"features\", \"dim\": 8},\n\"layers\": [{\"type\": \"relu\"}],\n"
                "\"loss\": {\"type\": \"mse\"},\n\"loss\": {\"type\": \"mse\"}}",
                "net.json:4: duplicate key \"loss\"", NULL);
    parse_fails("{\"input\": {\"type\": \"features\", \"dim\": 8, \"dim\": 8}, \"layers\": [{\"type\": \"relu\"}], "
                "\"loss\": {\"type\": \"mse\"}}",
                "duplicate key \"dim\"", NULL);
    /* err may be NULL (libds(3)): the parser's own errors must not read it (two layers named
     * fc crashed there) */
    {
        ds_net *none = NULL;
        cr_expect_eq(ds_net_parse_string(&none, FEAT("{\"type\": \"linear\", \"name\": \"fc\", \"out\": 8}, "
                                                     "{\"type\": \"linear\", \"name\": \"fc\", \"out\": 3}", "mse"),
                                         "net.json", NULL),
                     DS_ERR_INVALID);
        cr_expect_null(none);
    }
    /* the same key in different objects is fine */
    ds_net *net = parse_ok(FEAT("{\"type\": \"linear\", \"name\": \"a\", \"out\": 8}, {\"type\": \"linear\", "
                                "\"name\": \"b\", \"out\": 3}",
                                "mse"));
    cr_expect_eq(net->params.n, 4);
    cr_expect_eq(net->out_dim, 3);
    cr_expect_eq(net->input, DS_INPUT_FEATURES);
    cr_expect_eq(net->loss, DS_LOSS_MSE);
    ds_net_free(net);
}

Test(net, files)
{
    char dir[] = "/tmp/ds-test-core-XXXXXX";
    cr_assert(mkdtemp(dir));
    char path[128];
    ds_net *net = NULL;
    ds_error e = {0};
    snprintf(path, sizeof path, "%s/missing.json", dir);
    cr_expect_eq(ds_net_parse_file(&net, path, &e), DS_ERR_IO);
    cr_expect(strstr(e.msg, path) != NULL, "%s", e.msg);
    snprintf(path, sizeof path, "%s/gpt.json", dir);
    FILE *f = fopen(path, "w");
    cr_assert(f);
    fputs(gpt_json, f);
    fclose(f);
    cr_assert_eq(ds_net_parse_file(&net, path, &e), DS_OK, "%s", e.msg);
    cr_expect_eq(net->total_params, 437760);
    cr_expect_str_eq(net->source_name, path);
    ds_net_free(net);
    f = fopen(path, "w");
    fputs("{\n\n  \"input\": 1,,\n}\n", f);
    fclose(f);
    cr_expect_eq(ds_net_parse_file(&net, path, &e), DS_ERR_INVALID);
    char want[160];
    snprintf(want, sizeof want, "%s:3:", path);
    cr_expect(strncmp(e.msg, want, strlen(want)) == 0, "%s", e.msg);
    remove(path);
    rmdir(dir);
}
