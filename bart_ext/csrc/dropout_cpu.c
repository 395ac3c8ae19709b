/* Dropout for contiguous fp32 and bf16 tensors on the CPU, its mask drawn from a counter-based generator.
 *
 * Why: PyTorch's CPU dropout draws its mask with bernoulli_, about 9 ns an element on a 2-core
 * AVX2 machine (10 ms for a 2,048 x 512 activation, 55 times a multiplication's time): a tenth of
 * the demo model's training step. Here element i's draw is word i % 2 of Threefry-2x32-20
 * (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011; the generator JAX
 * uses) at counter i / 2 under a 64-bit key. That is pure 32-bit add, rotate and xor, which
 * vectorises, and a draw depends only on (key, i): the result does not depend on the number of
 * threads. (Regenerating the mask in the backward instead of keeping its bits costs 2.5 ms per
 * million elements there; reading the bits, 0.9.)
 *
 *   threefry2x32       one block, for known-answer tests
 *   dropout_forward    y[i] = draw(i) >= threshold ? x[i] * scale : 0, and the mask as bits
 *                      (bit i % 8 of bits[i / 8]: 1/8 of the bytes of PyTorch's bool mask)
 *   dropout_backward   out[i] = bit i ? grad[i] * scale : 0
 *   *_bf16             the same for bf16 tensors (computed in fp32, rounded to nearest even):
 *                      the same draws, so bf16 and fp32 runs of one seed drop the same elements
 *
 * An element is dropped with probability threshold / 2^32. The draws fill their last word, so a
 * draw past n is computed but not used.
 * Built by bart_ext/cpu_kernels.py.
 */
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define BLOCK 16384 /* elements per thread's chunk: a multiple of 2 * LANES and of 8 */
#define LANES 128   /* counters per vectorised batch */

static inline uint32_t rotl(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }

/* Threefry-2x32's 20 rounds: rotations 13 15 26 6 17 29 16 24, a key injection every 4. */
#define MIX(r) x0 += x1; x1 = rotl(x1, r) ^ x0;
#define INJECT(s) x0 += ks[((s) + 1) % 3]; x1 += ks[((s) + 2) % 3] + (uint32_t)((s) + 1);
#define ROUNDS20 \
    MIX(13) MIX(15) MIX(26) MIX(6) INJECT(0) MIX(17) MIX(29) MIX(16) MIX(24) INJECT(1) \
    MIX(13) MIX(15) MIX(26) MIX(6) INJECT(2) MIX(17) MIX(29) MIX(16) MIX(24) INJECT(3) \
    MIX(13) MIX(15) MIX(26) MIX(6) INJECT(4)

void threefry2x32(uint32_t c0, uint32_t c1, uint32_t k0, uint32_t k1, uint32_t *out) {
    const uint32_t ks[3] = {k0, k1, 0x1BD11BDAu ^ k0 ^ k1};
    uint32_t x0 = c0 + ks[0], x1 = c1 + ks[1];
    ROUNDS20
    out[0] = x0;
    out[1] = x1;
}

/* The draws of counters j0 .. j0 + LANES - 1 (counter j = (low word of j, high word of j)),
 * interleaved: d[2l], d[2l + 1] are counter j0 + l's two words. */
static void draws(int64_t j0, uint32_t k0, uint32_t k1, uint32_t *d) {
    const uint32_t ks[3] = {k0, k1, 0x1BD11BDAu ^ k0 ^ k1};
#pragma omp simd
    for (int l = 0; l < LANES; l++) {
        uint64_t j = (uint64_t)(j0 + l);
        uint32_t x0 = (uint32_t)j + ks[0], x1 = (uint32_t)(j >> 32) + ks[1];
        ROUNDS20
        d[2 * l] = x0;
        d[2 * l + 1] = x1;
    }
}

/* bf16 as PyTorch stores it: the upper 16 bits of an fp32, rounded to nearest even (NaN kept NaN). */
static inline float bf16_load(uint16_t h) {
    union { uint32_t u; float f; } v = {(uint32_t)h << 16};
    return v.f;
}
static inline uint16_t bf16_store(float f) {
    union { float f; uint32_t u; } v = {f};
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40u);
    return (uint16_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}
static inline float f32_load(float x) { return x; }
static inline float f32_store(float x) { return x; }
/* STORE(x) where keep is all ones, +0 where it is 0: a select without a branch (a branch on a
 * 10%-dropped mask mispredicts; x * 0 would turn a dropped inf or NaN gradient into NaN). */
static inline float f32_keep(float x, uint32_t keep) {
    union { float f; uint32_t u; } v = {x};
    v.u &= keep;
    return v.f;
}
static inline uint16_t bf16_keep(float x, uint32_t keep) { return bf16_store(x) & (uint16_t)keep; }

/* The backward's 16-element step with AVX-512, where the compiler targets it: the mask bits are
 * AVX-512's mask-register layout (bit i % 16 of two bytes is element i), so one masked multiply
 * does what the scalar loop does, with the same results (a multiply, round to nearest even). The
 * scalar loop did not vectorise and took 2x the forward's time (1.2 ms for a million fp32
 * elements on a 2-core Xeon). Returns the index it stopped at. */
#if defined(__AVX512F__)
static inline __mmask16 mask16(const uint8_t *bits, int64_t i) {
    uint16_t k;
    memcpy(&k, bits + (i >> 3), 2); /* i is a multiple of 16 */
    return (__mmask16)k;
}
static int64_t backward16(const float *grad, const uint8_t *bits, float *out, int64_t i, int64_t end,
                          float scale) {
    const __m512 vs = _mm512_set1_ps(scale);
    for (; i + 16 <= end; i += 16)
        _mm512_storeu_ps(out + i, _mm512_maskz_mul_ps(mask16(bits, i), _mm512_loadu_ps(grad + i), vs));
    return i;
}
static int64_t backward16_bf16(const uint16_t *grad, const uint8_t *bits, uint16_t *out, int64_t i,
                               int64_t end, float scale) {
    const __m512 vs = _mm512_set1_ps(scale);
    const __m512i one = _mm512_set1_epi32(1), half = _mm512_set1_epi32(0x7fff);
    const __m512i abs = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
    const __m512i quiet = _mm512_set1_epi32(0x40);
    for (; i + 16 <= end; i += 16) {
        __m512i u = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(grad + i))), 16);
        __m512i x = _mm512_castps_si512(_mm512_maskz_mul_ps(mask16(bits, i), _mm512_castsi512_ps(u), vs));
        __m512i hi = _mm512_srli_epi32(x, 16);
        __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(x, half), _mm512_and_si512(hi, one)), 16);
        __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(x, abs), inf);
        r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(hi, quiet));
        _mm256_storeu_si256((__m256i *)(out + i), _mm512_cvtepi32_epi16(r));
    }
    return i;
}
#define BACKWARD16(SUFFIX, grad, bits, out, i, end, scale) backward16##SUFFIX(grad, bits, out, i, end, scale)
#else
#define BACKWARD16(SUFFIX, grad, bits, out, i, end, scale) (i)
#endif

/* forward and backward for one element type T, read and written through LOAD and STORE (KEEP: a
 * STORE that zeroes where its mask is 0) */
#define DROPOUT_KERNELS(SUFFIX, T, LOAD, STORE, KEEP)                                                    \
    void dropout_forward##SUFFIX(const T *x, T *y, uint8_t *bits, int64_t n, uint32_t k0, uint32_t k1,   \
                                 uint32_t threshold, float scale, int threads) {                         \
        _Pragma("omp parallel for num_threads(threads) if (n > 4 * BLOCK) schedule(static)")           \
        for (int64_t b = 0; b < n; b += BLOCK) {                                                         \
            int64_t end = b + BLOCK < n ? b + BLOCK : n;                                                 \
            for (int64_t g = b; g < end; g += 2 * LANES) {                                               \
                uint32_t d[2 * LANES];                                                                   \
                draws(g / 2, k0, k1, d);                                                                 \
                int64_t m = end - g < 2 * LANES ? end - g : 2 * LANES;                                   \
                const T *xg = x + g;                                                                     \
                T *yg = y + g;                                                                           \
                for (int64_t i = 0; i < m; i++) yg[i] = STORE(d[i] >= threshold ? LOAD(xg[i]) * scale : 0.0f); \
                uint8_t *bg = bits + g / 8; /* g is a multiple of 8 */                                   \
                for (int64_t q = 0; q < (m + 7) / 8; q++) {                                              \
                    uint8_t v = 0;                                                                       \
                    for (int t = 0; t < 8; t++) v |= (uint8_t)((d[8 * q + t] >= threshold) << t);        \
                    bg[q] = v;                                                                           \
                }                                                                                        \
            }                                                                                            \
        }                                                                                                \
    }                                                                                                    \
    void dropout_backward##SUFFIX(const T *grad, const uint8_t *bits, T *out, int64_t n, float scale,    \
                                  int threads) {                                                         \
        _Pragma("omp parallel for num_threads(threads) if (n > 4 * BLOCK) schedule(static)")           \
        for (int64_t b = 0; b < n; b += BLOCK) {                                                         \
            int64_t end = b + BLOCK < n ? b + BLOCK : n;                                                 \
            for (int64_t i = BACKWARD16(SUFFIX, grad, bits, out, b, end, scale); i < end; i++)           \
                out[i] = KEEP(LOAD(grad[i]) * scale, -(uint32_t)((bits[i >> 3] >> (i & 7)) & 1));        \
        }                                                                                                \
    }

DROPOUT_KERNELS(, float, f32_load, f32_store, f32_keep)
DROPOUT_KERNELS(_bf16, uint16_t, bf16_load, bf16_store, bf16_keep)
