/*
 * Writes golden outputs of ggml's own quantizers for the codec tests (see README.md).
 *
 *   gen synth OUTDIR             synthetic rows -> OUTDIR/x.f32, OUTDIR/imp.f32, then as below
 *   gen file X.f32 IMP.f32 COLS OUTDIR
 *
 * For every type T: OUTDIR/T.ref     = quantize_row_<t>_ref over all rows (the reference path),
 *                   OUTDIR/T.imatrix = quantize_<t>(x, nrows, COLS, imp) (the imatrix path).
 * Build against ggml's src/ggml-quants.c; the few ggml.c functions it needs are defined here.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml.h"
#include "ggml-impl.h"
#include "ggml-quants.h"

/* --- the ggml.c symbols ggml-quants.c links against --- */
void ggml_abort(const char * file, int line, const char * fmt, ...) {
    fprintf(stderr, "ggml_abort at %s:%d (%s)\n", file, line, fmt);
    abort();
}
const char * ggml_type_name(enum ggml_type t) { (void) t; return "?"; }

static int64_t blck(enum ggml_type t) {
    switch (t) {
        case GGML_TYPE_F32: case GGML_TYPE_F16: case GGML_TYPE_BF16: return 1;
        case GGML_TYPE_Q2_K: case GGML_TYPE_Q3_K: case GGML_TYPE_Q4_K:
        case GGML_TYPE_Q5_K: case GGML_TYPE_Q6_K: return 256;
        default: return 32;
    }
}
size_t ggml_type_size(enum ggml_type t) {
    switch (t) {
        case GGML_TYPE_F32: return 4;
        case GGML_TYPE_F16: case GGML_TYPE_BF16: return 2;
        case GGML_TYPE_Q4_0: return sizeof(block_q4_0);
        case GGML_TYPE_Q4_1: return sizeof(block_q4_1);
        case GGML_TYPE_Q5_0: return sizeof(block_q5_0);
        case GGML_TYPE_Q5_1: return sizeof(block_q5_1);
        case GGML_TYPE_Q8_0: return sizeof(block_q8_0);
        case GGML_TYPE_Q2_K: return sizeof(block_q2_K);
        case GGML_TYPE_Q3_K: return sizeof(block_q3_K);
        case GGML_TYPE_Q4_K: return sizeof(block_q4_K);
        case GGML_TYPE_Q5_K: return sizeof(block_q5_K);
        case GGML_TYPE_Q6_K: return sizeof(block_q6_K);
        case GGML_TYPE_IQ4_NL: return sizeof(block_iq4_nl);
        case GGML_TYPE_MXFP4: return sizeof(block_mxfp4);
        default: abort();
    }
}
size_t ggml_row_size(enum ggml_type t, int64_t ne) { return ggml_type_size(t) * ne / blck(t); }

/* --- synthetic inputs: xorshift64 + Box-Muller, 12 rows of 512 with different shapes --- */
static uint64_t s = 0x2545F4914F6CDD1DULL;
static double uni(void) { s ^= s << 13; s ^= s >> 7; s ^= s << 17; return ((s >> 11) + 0.5) / 9007199254740992.0; }
static double nrm(void) { return sqrt(-2.0 * log(uni())) * cos(6.283185307179586 * uni()); }

enum { SROWS = 12, SCOLS = 512 };
static void synth(float * x, float * imp) {
    for (int r = 0; r < SROWS; ++r) {
        float * y = x + r * SCOLS;
        for (int j = 0; j < SCOLS; ++j) {
            float v;
            switch (r) {
                case 0: v = nrm(); break;                                   /* plain normal */
                case 1: v = 0.02 * (2 * uni() - 1); break;                  /* small uniform */
                case 2: v = nrm() * (uni() < 0.02 ? 20 : 1); break;         /* outliers */
                case 3: v = 0.5 + 1.5 * uni(); break;                       /* all positive */
                case 4: v = -0.5 - 1.5 * uni(); break;                      /* all negative */
                case 5: v = (uni() < 0.5 ? -1 : 1) * log(uni()); break;     /* Laplace */
                case 6: v = (j < 256 || (j >= 288 && j < 320) || (j >= 400 && j < 416)) ? 0 : nrm(); break; /* zero blocks */
                case 7: v = 1e-6 * nrm(); break;                            /* fp16-subnormal scales */
                case 8: v = 1000 * nrm(); break;                            /* large */
                case 9: v = 0.25 * ((int) (uni() * 16) - 8); break;         /* on a grid: rounding ties */
                case 10: v = 0.3f + 0.0f * j; break;                        /* constant */
                default: v = uni() < 0.1 ? nrm() : 0; break;                /* sparse */
            }
            y[j] = v;
        }
    }
    for (int j = 0; j < SCOLS; ++j) imp[j] = exp(1.5 * nrm());
    for (int j = 40; j < 48; ++j) imp[j] = 0;      /* a few zero importances */
    for (int j = 320; j < 336; ++j) imp[j] = 0;    /* a whole zero-importance sub-block */
}

static void put(const char * dir, const char * name, const void * p, size_t n) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE * f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n) { perror(path); exit(1); }
    fclose(f);
}

static float * get(const char * path, size_t * n) {
    FILE * f = fopen(path, "rb");
    if (!f) { perror(path); exit(1); }
    fseek(f, 0, SEEK_END); long len = ftell(f); fseek(f, 0, SEEK_SET);
    float * p = malloc(len);
    if (fread(p, 1, len, f) != (size_t) len) { perror(path); exit(1); }
    fclose(f);
    *n = len / 4;
    return p;
}

typedef void (*ref_fn)(const float *, void *, int64_t);
typedef size_t (*imat_fn)(const float *, void *, int64_t, int64_t, const float *);

static void f16_ref(const float * x, void * y, int64_t k) { for (int64_t i = 0; i < k; ++i) ((ggml_fp16_t *) y)[i] = GGML_FP32_TO_FP16(x[i]); }
static void bf16_ref(const float * x, void * y, int64_t k) { for (int64_t i = 0; i < k; ++i) ((ggml_bf16_t *) y)[i] = GGML_FP32_TO_BF16(x[i]); }
static void iq4nl_ref(const float * x, void * y, int64_t k) {
    /* quantize_row_iq4_nl_ref leaves an all-zero block's codes uninitialised; clear the output
       first so at least the output buffer is deterministic (the test skips those bytes). */
    memset(y, 0, k / 32 * sizeof(block_iq4_nl));
    quantize_row_iq4_nl_ref(x, y, k);
}

struct entry { const char * name; enum ggml_type t; ref_fn ref; imat_fn imat; };

int main(int argc, char ** argv) {
    float * x; float * imp; size_t nx, nimp, cols; const char * dir;
    if (argc == 3 && !strcmp(argv[1], "synth")) {
        dir = argv[2]; cols = SCOLS; nx = SROWS * SCOLS; nimp = SCOLS;
        x = malloc(nx * 4); imp = malloc(nimp * 4);
        synth(x, imp);
        put(dir, "x.f32", x, nx * 4);
        put(dir, "imp.f32", imp, nimp * 4);
    } else if (argc == 6 && !strcmp(argv[1], "file")) {
        x = get(argv[2], &nx); imp = get(argv[3], &nimp); cols = atol(argv[4]); dir = argv[5];
        if (nimp != cols || nx % cols) { fprintf(stderr, "bad sizes\n"); return 1; }
    } else {
        fprintf(stderr, "usage: gen synth OUTDIR | gen file X.f32 IMP.f32 COLS OUTDIR\n");
        return 1;
    }
    const struct entry types[] = {
        { "F16",    GGML_TYPE_F16,    f16_ref,                          NULL },
        { "BF16",   GGML_TYPE_BF16,   bf16_ref,                         NULL },
        { "Q8_0",   GGML_TYPE_Q8_0,   (ref_fn) quantize_row_q8_0_ref,   quantize_q8_0 },
        { "Q4_0",   GGML_TYPE_Q4_0,   (ref_fn) quantize_row_q4_0_ref,   quantize_q4_0 },
        { "Q4_1",   GGML_TYPE_Q4_1,   (ref_fn) quantize_row_q4_1_ref,   quantize_q4_1 },
        { "Q5_0",   GGML_TYPE_Q5_0,   (ref_fn) quantize_row_q5_0_ref,   quantize_q5_0 },
        { "Q5_1",   GGML_TYPE_Q5_1,   (ref_fn) quantize_row_q5_1_ref,   quantize_q5_1 },
        { "Q2_K",   GGML_TYPE_Q2_K,   (ref_fn) quantize_row_q2_K_ref,   quantize_q2_K },
        { "Q3_K",   GGML_TYPE_Q3_K,   (ref_fn) quantize_row_q3_K_ref,   quantize_q3_K },
        { "Q4_K",   GGML_TYPE_Q4_K,   (ref_fn) quantize_row_q4_K_ref,   quantize_q4_K },
        { "Q5_K",   GGML_TYPE_Q5_K,   (ref_fn) quantize_row_q5_K_ref,   quantize_q5_K },
        { "Q6_K",   GGML_TYPE_Q6_K,   (ref_fn) quantize_row_q6_K_ref,   quantize_q6_K },
        { "IQ4_NL", GGML_TYPE_IQ4_NL, iq4nl_ref,                        quantize_iq4_nl },
        { "MXFP4",  GGML_TYPE_MXFP4,  (ref_fn) quantize_row_mxfp4_ref,  quantize_mxfp4 },
    };
    size_t rows = nx / cols;
    for (size_t i = 0; i < sizeof types / sizeof types[0]; ++i) {
        const struct entry * e = &types[i];
        size_t bytes = rows * ggml_row_size(e->t, cols);
        void * y = calloc(1, bytes);
        char name[64];
        e->ref(x, y, (int64_t) nx);
        snprintf(name, sizeof name, "%s.ref", e->name);
        put(dir, name, y, bytes);
        if (e->imat) {
            memset(y, 0, bytes);
            e->imat(x, y, (int64_t) rows, (int64_t) cols, imp);
            snprintf(name, sizeof name, "%s.imatrix", e->name);
            put(dir, name, y, bytes);
        }
        free(y);
    }
    return 0;
}
