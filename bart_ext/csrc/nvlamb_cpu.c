/* NVLAMB's per-tensor passes for contiguous fp32 tensors on the CPU.
 *
 * Why: the LAMB step is memory-bound. PyTorch's multi-tensor CPU operations
 * make one pass over memory per operation (about ten for LAMB) and its
 * _foreach_norm runs at a third of the bandwidth of the fused AdamW kernel.
 * These three loops read and write each array the least number of times:
 *
 *   sumsq          sum(x^2)                          read x
 *   lamb_moments   m, v updated in place;            read p g m v, write m v
 *                  returns sum(p^2) and sum(u^2)
 *   lamb_apply     p -= step * u, u recomputed       read p m v, write p
 *                  from m, v and p
 *
 * with u = (m / bc1) / (sqrt(v) / sqrt_bc2 + eps) + wd * p, the same
 * expression in both passes, so the u that is normed is the u applied.
 * Sums accumulate in float over blocks and in double across blocks.
 * Built by bart_ext/cpu_kernels.py; nothing else depends on it.
 */
#include <math.h>
#include <stdint.h>

#define BLOCK 4096

static inline float direction(float m, float v, float p, float inv_bc1, float inv_sqrt_bc2,
                              float eps, float wd) {
    return (m * inv_bc1) / (sqrtf(v) * inv_sqrt_bc2 + eps) + wd * p;
}

double sumsq(const float *x, int64_t n, int threads) {
    double total = 0.0;
#pragma omp parallel for reduction(+ : total) num_threads(threads) if (n > 4 * BLOCK) schedule(static)
    for (int64_t b = 0; b < n; b += BLOCK) {
        int64_t end = b + BLOCK < n ? b + BLOCK : n;
        float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
        for (int64_t i = b; i < end; i++) acc += x[i] * x[i];
        total += acc;
    }
    return total;
}

void lamb_moments(const float *p, const float *g, float *m, float *v, int64_t n, float clip, float b1,
                  float b2, float inv_bc1, float inv_sqrt_bc2, float eps, float wd, double *out, int threads) {
    double pp = 0.0, uu = 0.0;
    const float a1 = (1.0f - b1) * clip, a2 = (1.0f - b2) * clip * clip;
#pragma omp parallel for reduction(+ : pp, uu) num_threads(threads) if (n > 4 * BLOCK) schedule(static)
    for (int64_t b = 0; b < n; b += BLOCK) {
        int64_t end = b + BLOCK < n ? b + BLOCK : n;
        float accp = 0.0f, accu = 0.0f;
#pragma omp simd reduction(+ : accp, accu)
        for (int64_t i = b; i < end; i++) {
            float gi = g[i];
            float mi = b1 * m[i] + a1 * gi;
            float vi = b2 * v[i] + a2 * gi * gi;
            m[i] = mi;
            v[i] = vi;
            float u = direction(mi, vi, p[i], inv_bc1, inv_sqrt_bc2, eps, wd);
            accp += p[i] * p[i];
            accu += u * u;
        }
        pp += accp;
        uu += accu;
    }
    out[0] = pp;
    out[1] = uu;
}

void lamb_apply(float *p, const float *m, const float *v, int64_t n, float inv_bc1, float inv_sqrt_bc2,
                float eps, float wd, float step, int threads) {
#pragma omp parallel for num_threads(threads) if (n > 4 * BLOCK) schedule(static)
    for (int64_t b = 0; b < n; b += BLOCK) {
        int64_t end = b + BLOCK < n ? b + BLOCK : n;
#pragma omp simd
        for (int64_t i = b; i < end; i++)
            p[i] -= step * direction(m[i], v[i], p[i], inv_bc1, inv_sqrt_bc2, eps, wd);
    }
}
