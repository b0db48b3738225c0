/* Native kernels of the flight's frame pipeline (issue #16). Loaded with ctypes by
 * flight/native/__init__.py; the numpy/OpenCV path in flight/calibrate.py stays the reference, and
 * each kernel must give its results bit for bit (checked at load and in tests/test_native_kernels.py).
 *
 * Build: make native (cc -O3 -shared -fPIC -ffp-contract=off). -ffp-contract=off matters: a fused
 * multiply-add would round once where OpenCV rounds twice. On x86-64 each kernel is cloned for
 * AVX-512 (x86-64-v4), AVX2 and the baseline, and glibc picks the clone for the CPU at load time
 * (AVX2 alone is 1.5x slower here, the baseline slower than OpenCV); aarch64 has NEON in its
 * baseline. No libm, no allocation, no global state: the caller owns every buffer. */
#include <stddef.h>
#include <stdint.h>

#define FK_ABI_VERSION 1
#define FLAT_Q_BIAS 896 /* flight.calibrate.FLAT_Q_BIAS */

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FK_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define FK_CLONES
#endif

int fk_abi_version(void) { return FK_ABI_VERSION; }

/* One band's rows of a strip, n pixels in a row:
 *   out = saturate_u16(round_half_even(((float)scale * max(raw - base - offset, 0)) * (flat + 896)))
 * what flight.calibrate does with numpy and OpenCV (np.add, cv2.subtract, cv2.multiply with a
 * float scale) in four passes, here in one. Needs scale * 65535 * 1151 < 2^22 (the caller checks):
 * then adding and taking away 2^23 rounds to the nearest integer, ties to even, as OpenCV's
 * cvRound does, without libm and in a loop the compiler vectorizes. */
FK_CLONES
void fk_calibrate_rows(const uint16_t *restrict raw, const uint8_t *restrict offset,
                       const uint8_t *restrict flat, uint16_t *restrict out, size_t n,
                       int32_t base, float scale)
{
    for (size_t i = 0; i < n; i++) {
        int32_t d = (int32_t)raw[i] - base - (int32_t)offset[i];
        d = d < 0 ? 0 : d;
        float r = (scale * (float)d) * (float)(flat[i] + FLAT_Q_BIAS);
        int32_t q = (int32_t)((r + 8388608.0f) - 8388608.0f);
        out[i] = (uint16_t)(q < 65535 ? q : 65535);
    }
}
