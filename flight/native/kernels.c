/* Native kernels of the flight's frame pipeline (issue #16). Loaded with ctypes by
 * flight/native/__init__.py; the numpy/OpenCV path stays the reference, and each kernel must give
 * its results bit for bit (the calibration and the tile input are checked against it at load, on
 * the constants in use; all four in tests/test_native_kernels.py).
 *
 * Build: make native (cc -O3 -shared -fPIC -ffp-contract=off). -ffp-contract=off matters: a fused
 * multiply-add would round once where OpenCV rounds twice. On x86-64 each kernel is cloned for
 * AVX-512 (x86-64-v4), AVX2 and the baseline, and glibc picks the clone for the CPU at load time
 * (AVX2 alone is 1.5x slower here, the baseline slower than OpenCV); aarch64 has NEON in its
 * baseline. No libm calls (memcpy of fixed sizes only), no allocation, no global state: the
 * caller owns every buffer. */
#include <stddef.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define FK_ABI_VERSION 5
#define FLAT_Q_BIAS 896 /* flight.calibrate.FLAT_Q_BIAS */

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "fk_tiles_u8 stores two bands as one little-endian uint16"
#endif

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

/* Model input straight from a calibrated block: tiles cut, interleaved and quantized in one pass.
 * planar: the block's 6 bands (band_stride elements apart), rows row_stride apart, at least tp
 * rows; cols: the n tile columns to cut (tile k is columns cols[k]*tp .. +tp); tiles: uint8
 * (n, tp, tp, 6), channels last, or with cell > 1 in cell x cell blocks (space to depth):
 * (n, tp/cell, tp/cell, cell*cell*6), each cell's pixels row-major, bands innermost (the layout of
 * an INT8 model whose stem runs as a 1 x 1 convolution, flight.inference.to_cells). Per value:
 *   q = saturate_u8(round_half_even((float)v * alpha + beta))
 * what flight.inference.quantize_tiles does with cv2.convertScaleAbs on the tiles of
 * flight.pipeline.tiles_of (alpha > 0, beta >= 0, alpha * 65535 + beta < 2^22: the caller checks).
 * Each band's row of a tile is quantized into a small buffer (contiguous: vectorized), then two
 * bands at a time are stored as one uint16 (three-way interleave, which the compiler vectorizes;
 * a six-way byte interleave it does not). tp <= 256. */
FK_CLONES
void fk_tiles_u8(const uint16_t *restrict planar, size_t band_stride, size_t row_stride, int32_t tp,
                 int32_t cell, const int32_t *restrict cols, size_t n, float alpha, float beta,
                 uint8_t *restrict tiles)
{
    uint8_t q[6][256];
    uint16_t row[3 * 256]; /* one tile row, bands interleaved, before it is spread over its cells */
    /* row by row across the tiles, so each band's row is read in order: a tile at a time read
     * 128 bytes 4 KB apart, which the prefetchers do not follow (the tile stage took 11-15 instead
     * of 5-6 ms per 2048 x 2048 frame in the pipeline, where the block is no longer in cache) */
    for (int32_t y = 0; y < tp; y++) {
        for (size_t k = 0; k < n; k++) {
            const uint16_t *src = planar + (size_t)y * row_stride + (size_t)cols[k] * (size_t)tp;
            for (int b = 0; b < 6; b++) {
                const uint16_t *s = src + (size_t)b * band_stride;
                uint8_t *qb = q[b];
                for (int32_t x = 0; x < tp; x++) {
                    float r = (float)s[x] * alpha;
                    r = r + beta;
                    int32_t v = (int32_t)((r + 8388608.0f) - 8388608.0f);
                    qb[x] = (uint8_t)(v < 255 ? v : 255);
                }
            }
            uint8_t *t = tiles + k * (size_t)tp * (size_t)tp * 6;
            uint16_t *d = cell == 1 ? (uint16_t *)(t + (size_t)y * (size_t)tp * 6) : row;
            for (int32_t x = 0; x < tp; x++) {
                d[3 * x + 0] = (uint16_t)(q[0][x] | (q[1][x] << 8));
                d[3 * x + 1] = (uint16_t)(q[2][x] | (q[3][x] << 8));
                d[3 * x + 2] = (uint16_t)(q[4][x] | (q[5][x] << 8));
            }
            if (cell > 1) {
                /* the row's runs of cell pixels go to its cells: cell row y / cell, at row y % cell
                 * inside each cell; fixed-size copies for the usual cells (moves, not calls). Taking
                 * a tile's cell rows together to write whole cells was slower (the tile stage 13 ->
                 * 21-24 ms per frame: 6 x cell read streams at once) */
                size_t run = (size_t)cell * 6, cells = (size_t)(tp / cell);
                uint8_t *c0 = t + ((size_t)(y / cell) * cells * (size_t)cell + (size_t)(y % cell)) * run;
                const uint8_t *src = (const uint8_t *)row;
                switch (cell) {
                case 2: for (size_t j = 0; j < cells; j++) memcpy(c0 + j * 2 * run, src + j * run, 12); break;
                case 4: for (size_t j = 0; j < cells; j++) memcpy(c0 + j * 4 * run, src + j * run, 24); break;
                case 8: for (size_t j = 0; j < cells; j++) memcpy(c0 + j * 8 * run, src + j * run, 48); break;
                default: for (size_t j = 0; j < cells; j++) memcpy(c0 + j * (size_t)cell * run, src + j * run, run);
                }
            }
        }
    }
}

/* Per tile of one band of a block: the exact integer sum of its values and, when maxes is not
 * NULL, its largest value (the prescreen's contrast and the water index take their means from the
 * sums: flight.pipeline.tile_means and tile_contrast compute the same from OpenCV's column sums).
 * band: one band's rows, row_stride apart, at least tp rows; n tiles of tp columns from column 0.
 * Row by row across the tiles, as fk_tiles_u8 reads. sums < 2^32 needs tp <= 256 (the caller). */
FK_CLONES
void fk_tile_sums(const uint16_t *restrict band, size_t row_stride, int32_t tp, size_t n,
                  uint32_t *restrict sums, uint16_t *restrict maxes)
{
    for (size_t k = 0; k < n; k++) {
        sums[k] = 0;
        if (maxes) maxes[k] = 0;
    }
    for (int32_t y = 0; y < tp; y++) {
        const uint16_t *row = band + (size_t)y * row_stride;
        for (size_t k = 0; k < n; k++) {
            const uint16_t *s = row + k * (size_t)tp;
            uint32_t sum = 0;
            uint16_t top = 0;
            for (int32_t x = 0; x < tp; x++) {
                sum += s[x];
                top = s[x] > top ? s[x] : top;
            }
            sums[k] += sum;
            if (maxes && top > maxes[k]) maxes[k] = top;
        }
    }
}

/* Local maxima of per-tile heatmaps with their 3 x 3 value-weighted centroids: what
 * flight.inference.heatmap_peaks computes with numpy for min_distance_cells = 1, in the same
 * order and to the same bits (doubles added in the same order; -ffp-contract=off).
 * heat: float32 (n, rows, cols). A cell is a peak when it is >= threshold, above every earlier
 * neighbour (raster order) and not below any later one; outside the tile counts as -inf and a NaN
 * neighbour fails both tests, as numpy's maximum propagates it. Per peak: its tile, its row and
 * column in pixels ((centroid + 0.5) * stride) and its score; sorted by tile, then descending
 * score, ties in raster order. Returns the number of peaks, or (size_t)-1 when more than cap
 * (the caller's arrays hold cap). */
size_t fk_heatmap_peaks(const float *restrict heat, size_t n, int32_t rows, int32_t cols, float threshold,
                        double stride, int32_t *restrict tile, double *restrict row, double *restrict col,
                        double *restrict score, size_t cap)
{
    static const int dr[9] = {-1, -1, -1, 0, 0, 0, 1, 1, 1};
    static const int dc[9] = {-1, 0, 1, -1, 0, 1, -1, 0, 1};
    size_t m = 0;
    for (size_t k = 0; k < n; k++) {
        const float *h = heat + k * (size_t)rows * (size_t)cols;
        size_t first = m;
        for (int32_t r = 0; r < rows; r++) {
            for (int32_t c = 0; c < cols; c++) {
                float v = h[r * cols + c];
                if (!(v >= threshold))
                    continue;
                int peak = 1;
                for (int j = 0; j < 9 && peak; j++) {
                    if (j == 4)
                        continue;
                    int32_t rr = r + dr[j], cc = c + dc[j];
                    float nb = (rr < 0 || rr >= rows || cc < 0 || cc >= cols) ? -INFINITY : h[rr * cols + cc];
                    peak = j < 4 ? v > nb : v >= nb;  /* NaN: false either way */
                }
                if (!peak)
                    continue;
                if (m == cap)
                    return (size_t)-1;
                double total = 0.0, rsum = 0.0, csum = 0.0;
                for (int j = 0; j < 9; j++) {
                    int32_t rr = r + dr[j], cc = c + dc[j];
                    double w = 0.0;
                    if (rr >= 0 && rr < rows && cc >= 0 && cc < cols) {
                        double x = (double)h[rr * cols + cc];
                        w = x > 0.0 ? x : 0.0;
                    }
                    double pr = (double)rr * w, pc = (double)cc * w;
                    total = j ? total + w : w;
                    rsum = j ? rsum + pr : pr;
                    csum = j ? csum + pc : pc;
                }
                double cr = total > 0.0 ? rsum / total : (double)r;
                double ccn = total > 0.0 ? csum / total : (double)c;
                /* insert by descending score, after equal scores: a stable sort within the tile */
                size_t at = m;
                while (at > first && score[at - 1] < (double)v) {
                    tile[at] = tile[at - 1]; row[at] = row[at - 1]; col[at] = col[at - 1]; score[at] = score[at - 1];
                    at--;
                }
                tile[at] = (int32_t)k;
                row[at] = (cr + 0.5) * stride;
                col[at] = (ccn + 0.5) * stride;
                score[at] = (double)v;
                m++;
            }
        }
    }
    return m;
}
