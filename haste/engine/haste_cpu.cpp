// Fused HASTE convolution for CPU: one pass per (image, tile), parallel over tiles.
//
// Every tile reads its (P-1)*S+k input region where it lies in the channels-last input (an NCHW input is made
// channels-last first); pixels outside the image (the conv's zero padding and the bottom/right tile padding)
// are skipped, as their zeros contribute nothing. Per tile: project every channel on the first L hyperplanes
// (one vector of channels per region pixel, broadcast plane entries), centre the projections across channels
// (or within each channel for the scaled merge), turn signs into integer codes, group equal codes into
// buckets (a stamped lookup table; a sort when L is large), gather each bucket's region into a small planar
// tile buffer (a singleton's own values, a merged bucket's mean), sum the filter rows of the buckets with more
// than one member (singletons' rows are read where they are, in the weight), and multiply the merged channels
// with the merged filters for the tile's valid output pixels only, in a register-blocked micro-kernel (implicit
// im2col over the tile buffer). Codes and bucket counts equal those of the reference implementation
// (haste/functional.py); buckets are numbered in first-occurrence order.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <optional>
#include <tuple>
#include <vector>

namespace {

// Stage timers (nanoseconds summed over threads), compiled in only with -DHASTE_PROFILE.
// kPrepare and kFinish are the calling thread's wall time before and after the tile loop (padding, planes,
// allocations; per-image sums), the others thread time inside it.
enum Stage { kRegion, kHash, kBucket, kMerge, kIm2col, kFilters, kGemm, kPrepare, kFinish, kLoop, kStages };
std::array<std::atomic<int64_t>, kStages> stage_ns{};
#ifdef HASTE_PROFILE
#define STAGE_START auto mark = std::chrono::steady_clock::now();
#define STAGE(id)                                                                               \
  {                                                                                             \
    const auto now = std::chrono::steady_clock::now();                                          \
    stage_ns[id] += std::chrono::duration_cast<std::chrono::nanoseconds>(now - mark).count(); \
    mark = now;                                                                                 \
  }
#else
#define STAGE_START
#define STAGE(id)
#endif

// One native vector register: 16 floats with AVX-512, else 8 (AVX2). A wider type than the hardware's is
// split by the compiler into pieces kept in memory: the 16-float type on an AVX2 machine made every kernel
// stage several times slower (the model 4-8x slower than dense).
#ifdef __AVX512F__
constexpr int W = 16;
#else
constexpr int W = 8;
#endif
typedef float vec __attribute__((vector_size(W * sizeof(float))));

inline vec loadv(const float* p) {
  vec v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

inline void storev(float* p, vec v) { __builtin_memcpy(p, &v, sizeof(v)); }

// The GEMM of one tile reads every bucket where it lives: a singleton bucket's region in the padded
// input and its filter rows in the weight; a merged bucket's mean region and summed filter rows in
// per-thread scratch. Regions share the padded input's row stride, so pixel q of bucket b reads
// regs[b][base[q] + koff[j]] for kernel offset j, and filts[b] points at (kh*kw, O) filter rows.
// Measured slower and not kept: preparing 4 tiles, then running their GEMMs by blocks of 64 output channels
// for weights over 1 MB (so a block of filter rows is read once per 4 tiles; ResNet34 reference at its
// scaled `high`: 1.30 vs 1.23 of dense at batch 32, 1.18 vs 1.16 at batch 4);
// packing each pixel block's values into a panel first (1.1-1.9x);
// summing a merged bucket's filter rows inside the micro-kernel instead of once per tile (width-32
// ResNet34, batch 32: merge 16.6 -> 10.0 ms but GEMM 103 -> 127 ms of thread time).

// Filter rows are kept in panels of kPanel output channels: panel p of a channel's (or merged bucket's) rows is
// kk * kPanel floats at p * ps + slot * kk * kPanel (ps: the panel stride, C * kk * kPanel), so the micro-kernel
// reads one bucket's rows for its output channels as one contiguous run. Measured against rows of all O output
// channels per kernel offset (the loads then stride by O floats), fmnist-resnet34 at `high`, every HASTE layer
// on its own input, interleaved: the kernel's time summed over layers 0.943 of that at batch 1 and 0.969 at
// batch 8 (layer4, 256 channels: 0.74 / 0.88; layer1, 32 channels: 1.02 / 1.03).
// Measured and not kept: zeroing the padded borders and copying the input in one parallel pass over padded
// rows instead of two (each row writing every channel's plane): 1.039 of the two passes at batch 1, 1.077 at 8.
constexpr int64_t kPanel = 16;

// The filter value of output channel oc, kernel offset j, in the rows starting at f (panel layout).
inline const float* panel_at(const float* f, int64_t ps, int64_t kk, int64_t oc) {
  return f + (oc / kPanel) * ps + oc % kPanel;
}

// The output's affine epilogue: y = acc * scale + shift per output channel (scale null: y = acc + shift; shift null:
// 0). shift is the conv's bias, or with a folded BatchNorm its scale and shift (haste.fold).
struct Epilogue {
  const float* scale;
  const float* shift;
};

// out[q][oc..oc+W*NV) = epilogue(sum_b sum_j regs[b][base[q] + koff[j]] * filts[b][j][oc..oc+W*NV)), PB pixels q.
template <int PB, int NV>
inline void micro(int64_t ng, int64_t kk, int64_t ps, int64_t oc, const float* const* regs, const float* const* filts,
                  const int* base, const int* koff, float* const* out, Epilogue ep) {
  vec acc[NV][PB];
  for (int v = 0; v < NV; ++v)
    for (int q = 0; q < PB; ++q) acc[v][q] = vec{};
  int64_t voff[NV];
  for (int v = 0; v < NV; ++v) voff[v] = ((oc + W * v) / kPanel) * ps + (oc + W * v) % kPanel;
  for (int64_t b = 0; b < ng; ++b) {
    const float* ap[PB];
    for (int q = 0; q < PB; ++q) ap[q] = regs[b] + base[q];
    const float* f = filts[b];
    for (int64_t j = 0; j < kk; ++j) {
      vec fv[NV];
      for (int v = 0; v < NV; ++v) fv[v] = loadv(f + voff[v] + j * kPanel);
      const int oj = koff[j];
      for (int q = 0; q < PB; ++q) {
        const float av = ap[q][oj];
        for (int v = 0; v < NV; ++v) acc[v][q] += av * fv[v];
      }
    }
  }
  for (int v = 0; v < NV; ++v) {
    const vec bv = ep.shift ? loadv(ep.shift + oc + W * v) : vec{};
    if (ep.scale) {
      const vec sv = loadv(ep.scale + oc + W * v);
      for (int q = 0; q < PB; ++q) storev(out[q] + oc + W * v, acc[v][q] * sv + bv);
    } else {
      for (int q = 0; q < PB; ++q) storev(out[q] + oc + W * v, acc[v][q] + bv);
    }
  }
}

// The micro-kernel instantiated for the pixel count pb (1..8) of this block.
template <int NV, typename... Args>
inline void by_pixels(int64_t pb, Args... args) {
  switch (pb) {
    case 8: micro<8, NV>(args...); break;
    case 7: micro<7, NV>(args...); break;
    case 6: micro<6, NV>(args...); break;
    case 5: micro<5, NV>(args...); break;
    case 4: micro<4, NV>(args...); break;
    case 3: micro<3, NV>(args...); break;
    case 2: micro<2, NV>(args...); break;
    default: micro<1, NV>(args...); break;
  }
}

// Output channels [oc, oc + W * NV) for all np pixels, in blocks of up to PB pixels.
template <int NV, int PB>
inline void gemm_block(int64_t np, int64_t ng, int64_t kk, int64_t ps, int64_t oc, const float* const* regs,
                       const float* const* filts, const int* base, const int* koff, float* const* out,
                       Epilogue ep) {
  for (int64_t p0 = 0; p0 < np; p0 += PB)
    by_pixels<NV>(std::min<int64_t>(PB, np - p0), ng, kk, ps, oc, regs, filts, base + p0, koff, out + p0, ep);
}

// out[q][oc0..oc1) = epilogue(sum_b sum_j regs[b][base[q] + koff[j]] * filts[b][j][oc0..oc1), in place:
// with AVX-512, 64 output channels x 6 pixels per micro-kernel call where possible (24 accumulators, 4
// filter registers: the fewest loads per multiply-add), then 32 x 8, then 16 x 8; with AVX2, 16 x 6; then scalar.
void gemm_buckets(int64_t np, int64_t ng, int64_t kk, int64_t o, int64_t ps, int64_t oc0, int64_t oc1,
                  const float* const* regs, const float* const* filts, const int* base, const int* koff,
                  float* const* out, Epilogue ep) {
  const int64_t o16 = std::min(oc1, o / 16 * 16);
  int64_t oc = oc0;
#ifdef __AVX512F__  // 32 registers
  for (; oc + 64 <= o16; oc += 64) gemm_block<4, 6>(np, ng, kk, ps, oc, regs, filts, base, koff, out, ep);
  for (; oc + 32 <= o16; oc += 32) gemm_block<2, 8>(np, ng, kk, ps, oc, regs, filts, base, koff, out, ep);
  for (; oc + 16 <= o16; oc += 16) gemm_block<1, 8>(np, ng, kk, ps, oc, regs, filts, base, koff, out, ep);
#else  // 16 registers: 16 output channels x 6 pixels = 12 accumulators, 2 filter registers and a broadcast
  for (; oc + 16 <= o16; oc += 16) gemm_block<2, 6>(np, ng, kk, ps, oc, regs, filts, base, koff, out, ep);
#endif
  for (int64_t q = 0; q < np; ++q)  // output channels beyond a multiple of 16
    for (int64_t c = oc; c < oc1; ++c) {
      float acc = 0.f;
      for (int64_t b = 0; b < ng; ++b)
        for (int64_t j = 0; j < kk; ++j) acc += regs[b][base[q] + koff[j]] * panel_at(filts[b], ps, kk, c)[j * kPanel];
      out[q][c] = (ep.scale ? acc * ep.scale[c] : acc) + (ep.shift ? ep.shift[c] : 0.f);
    }
}

// One thread's share of the tiles: the next unclaimed tile and the end (own cache line: claimed by fetch_add).
struct alignas(64) Claim {
  std::atomic<int64_t> next{0};
  int64_t end = 0;
};

template <typename T>
void grow(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(n);
}

// A vector of n <= W floats from p, zero beyond n (the last channels of a pixel when C is not a multiple of W).
inline vec load_part(const float* p, int n) {
  vec v{};
  __builtin_memcpy(&v, p, n * sizeof(float));
  return v;
}

// Ternary planes (entries -1, 0, +1: the paper's hashing by additions only): the projection of the channels
// [c0, c0 + W*NCB) of a tile's region on plane l is the sum of the pixels where the plane is +1 minus those
// where it is -1, list[begin[l] .. begin[l] + npos[l]) and then up to begin[l + 1]; pix[i] points at region pixel
// i's channels (zeros outside the image). NCB channel vectors accumulate side by side; tail: lanes of the last
// vector that hold channels. The scaled merge's channel sums (plane L) add every pixel of the region.
template <int NCB>
inline void project_ternary_block(const float* const* pix, const int* list, const int* begin, const int* npos,
                                  int64_t L, bool sums, int64_t d, int64_t c0, int tail, float* proj, int64_t cp) {
  auto load = [&](const float* q, int a) {
    return (a == NCB - 1 && tail < W) ? load_part(q + a * W, tail) : loadv(q + a * W);
  };
  for (int64_t l = 0; l < L + (sums ? 1 : 0); ++l) {
    vec acc[NCB];
    for (int a = 0; a < NCB; ++a) acc[a] = vec{};
    if (l == L) {  // the channel sums
      for (int64_t i = 0; i < d; ++i)
        for (int a = 0; a < NCB; ++a) acc[a] += load(pix[i] + c0, a);
    } else {
      const int* it = list + begin[l];
      const int* mid = it + npos[l];
      const int* end = list + begin[l + 1];
      for (; it < mid; ++it)
        for (int a = 0; a < NCB; ++a) acc[a] += load(pix[*it] + c0, a);
      for (; it < end; ++it)
        for (int a = 0; a < NCB; ++a) acc[a] -= load(pix[*it] + c0, a);
    }
    for (int a = 0; a < NCB; ++a) storev(proj + l * cp + c0 + a * W, acc[a]);
  }
}

inline void project_ternary(const float* const* pix, const int* list, const int* begin, const int* npos, int64_t L,
                            bool sums, int64_t d, int64_t c, float* proj, int64_t cp) {
  int64_t c0 = 0;
  for (; c0 + 4 * W <= c; c0 += 4 * W)
    project_ternary_block<4>(pix, list, begin, npos, L, sums, d, c0, W, proj, cp);
  for (; c0 + W <= c; c0 += W) project_ternary_block<1>(pix, list, begin, npos, L, sums, d, c0, W, proj, cp);
  if (c0 < c)
    project_ternary_block<1>(pix, list, begin, npos, L, sums, d, c0, static_cast<int>(c - c0), proj, cp);
}

// Projections of the channels [c0, c0 + W*NCB) of a tile's region on planes [l0, l0 + NL): for every valid
// region pixel k (float offset voff[k] in the channels-last input, region index vidx[k]) NCB channel vectors
// times NL broadcast plane entries rt[vidx[k] * lt + l], NCB*NL independent accumulators (at most 12: with
// the two operands, within AVX2's 16 registers). tail: lanes of the last channel vector that hold channels
// (W: all), the rest read as zeros. proj: (lt, cp) rows of channels.
template <int NCB, int NL>
inline void project_block(const float* X, const int64_t* voff, const int* vidx, int64_t npx, const float* rt,
                          int64_t lt, int64_t l0, int64_t c0, int tail, float* proj, int64_t cp) {
  vec acc[NCB][NL];
  for (int a = 0; a < NCB; ++a)
    for (int l = 0; l < NL; ++l) acc[a][l] = vec{};
  for (int64_t k = 0; k < npx; ++k) {
    const float* px = X + voff[k] + c0;
    vec xv[NCB];
    for (int a = 0; a < NCB; ++a) xv[a] = (a == NCB - 1 && tail < W) ? load_part(px + a * W, tail) : loadv(px + a * W);
    const float* r = rt + vidx[k] * lt + l0;
    for (int l = 0; l < NL; ++l) {
      const float rv = r[l];
      for (int a = 0; a < NCB; ++a) acc[a][l] += xv[a] * rv;
    }
  }
  for (int l = 0; l < NL; ++l)
    for (int a = 0; a < NCB; ++a) storev(proj + (l0 + l) * cp + c0 + a * W, acc[a][l]);
}

template <int NCB>
inline void project_planes(int nl, const float* X, const int64_t* voff, const int* vidx, int64_t npx, const float* rt,
                           int64_t lt, int64_t l0, int64_t c0, int tail, float* proj, int64_t cp) {
  switch (nl) {
    case 1: return project_block<NCB, 1>(X, voff, vidx, npx, rt, lt, l0, c0, tail, proj, cp);
    case 2: return project_block<NCB, 2>(X, voff, vidx, npx, rt, lt, l0, c0, tail, proj, cp);
    case 3: return project_block<NCB, 3>(X, voff, vidx, npx, rt, lt, l0, c0, tail, proj, cp);
    case 4: return project_block<NCB, 4>(X, voff, vidx, npx, rt, lt, l0, c0, tail, proj, cp);
    case 5: return project_block<NCB, 5>(X, voff, vidx, npx, rt, lt, l0, c0, tail, proj, cp);
    default: return project_block<NCB, 6>(X, voff, vidx, npx, rt, lt, l0, c0, tail, proj, cp);
  }
}

// Projections of all c channels of a tile's region on all lt planes (the scaled merge's last "plane" is all ones:
// the channel sums), two channel vectors and up to 6 planes at a time (12 accumulators, 8 loads per 12
// multiply-adds), the planes in as few equal chunks as that allows.
inline void project_region(const float* X, const int64_t* voff, const int* vidx, int64_t npx, const float* rt,
                           int64_t lt, int64_t c, float* proj, int64_t cp) {
  const int64_t chunks = (lt + 5) / 6;
  for (int64_t ch = 0; ch < chunks; ++ch) {
    const int64_t l0 = lt * ch / chunks, nl = lt * (ch + 1) / chunks - l0;
    int64_t c0 = 0;
    for (; c0 + 2 * W <= c; c0 += 2 * W) project_planes<2>(nl, X, voff, vidx, npx, rt, lt, l0, c0, W, proj, cp);
    if (c0 + W < c)
      project_planes<2>(nl, X, voff, vidx, npx, rt, lt, l0, c0, static_cast<int>(c - c0 - W), proj, cp);
    else if (c0 < c)
      project_planes<1>(nl, X, voff, vidx, npx, rt, lt, l0, c0, static_cast<int>(c - c0), proj, cp);
  }
}

// f[e] = sum over the members i of beta[i] * WT[member_i * fo + e] for e in [e0, e1) (beta[0] is not read:
// the first member is unweighted; beta[i] = 1 gives a plain sum, x * 1 being exact), 4 vectors at a time
// in 4 independent registers.
void sum_span(float* f, const float* WT, int64_t fo, int64_t e0, int64_t e1, const int* members, int size,
              const float* beta) {
  int64_t e = e0;
  for (; e + 4 * W <= e1; e += 4 * W) {
    const float* w0 = WT + members[0] * fo + e;
    vec a0 = loadv(w0), a1 = loadv(w0 + W), a2 = loadv(w0 + 2 * W), a3 = loadv(w0 + 3 * W);
    for (int i = 1; i < size; ++i) {
      const float* wi = WT + members[i] * fo + e;
      const float bi = beta[i];
      a0 += bi * loadv(wi);
      a1 += bi * loadv(wi + W);
      a2 += bi * loadv(wi + 2 * W);
      a3 += bi * loadv(wi + 3 * W);
    }
    storev(f + e, a0);
    storev(f + e + W, a1);
    storev(f + e + 2 * W, a2);
    storev(f + e + 3 * W, a3);
  }
  for (; e + W <= e1; e += W) {
    vec a0 = loadv(WT + members[0] * fo + e);
    for (int i = 1; i < size; ++i) a0 += beta[i] * loadv(WT + members[i] * fo + e);
    storev(f + e, a0);
  }
  for (; e < e1; ++e) {
    float a0 = WT[members[0] * fo + e];
    for (int i = 1; i < size; ++i) a0 += beta[i] * WT[members[i] * fo + e];
    f[e] = a0;
  }
}

// The merged filter rows of one bucket (slot f, panel layout) for output channels [oc0, oc1): one span of
// kk * kPanel floats per panel the channels touch.
void sum_rows(float* f, const float* WT, int64_t ps, int64_t kk, int64_t oc0, int64_t oc1, const int* members,
              int size, const float* beta) {
  const int64_t rows = kk * kPanel;
  for (int64_t p = oc0 / kPanel; p * kPanel < oc1; ++p)
    sum_span(f + p * ps, WT + p * ps, rows, 0, rows, members, size, beta);
}

// The region's pixels planar: dst[ch * dp + i] = pix[i][ch] for every channel ch < c and region pixel i < dp, where
// pix[i] points at pixel i's c channel values (channels-last) or at zeros (outside the image). 8 x 8 blocks are
// transposed in registers; channels beyond a multiple of 8 one by one.
inline void transpose_region(const float* const* pix, int64_t dp, int64_t c, float* dst) {
  const int64_t c8 = c / 8 * 8;
  for (int64_t i0 = 0; i0 < dp; i0 += 8) {
    const float* const* p = pix + i0;
    for (int64_t c0 = 0; c0 < c8; c0 += 8) {
#if defined(__AVX__)
      __m256 r0 = _mm256_loadu_ps(p[0] + c0), r1 = _mm256_loadu_ps(p[1] + c0), r2 = _mm256_loadu_ps(p[2] + c0),
             r3 = _mm256_loadu_ps(p[3] + c0), r4 = _mm256_loadu_ps(p[4] + c0), r5 = _mm256_loadu_ps(p[5] + c0),
             r6 = _mm256_loadu_ps(p[6] + c0), r7 = _mm256_loadu_ps(p[7] + c0);
      const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3),
                   t3 = _mm256_unpackhi_ps(r2, r3), t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
                   t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
      const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE),
                   u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE),
                   u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE),
                   u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
      float* q = dst + c0 * dp + i0;
      _mm256_storeu_ps(q, _mm256_permute2f128_ps(u0, u4, 0x20));
      _mm256_storeu_ps(q + dp, _mm256_permute2f128_ps(u1, u5, 0x20));
      _mm256_storeu_ps(q + 2 * dp, _mm256_permute2f128_ps(u2, u6, 0x20));
      _mm256_storeu_ps(q + 3 * dp, _mm256_permute2f128_ps(u3, u7, 0x20));
      _mm256_storeu_ps(q + 4 * dp, _mm256_permute2f128_ps(u0, u4, 0x31));
      _mm256_storeu_ps(q + 5 * dp, _mm256_permute2f128_ps(u1, u5, 0x31));
      _mm256_storeu_ps(q + 6 * dp, _mm256_permute2f128_ps(u2, u6, 0x31));
      _mm256_storeu_ps(q + 7 * dp, _mm256_permute2f128_ps(u3, u7, 0x31));
#else
      for (int64_t r = 0; r < 8; ++r)
        for (int64_t k = 0; k < 8; ++k) dst[(c0 + k) * dp + i0 + r] = p[r][c0 + k];
#endif
    }
    for (int64_t r = 0; r < 8; ++r)
      for (int64_t k = c8; k < c; ++k) dst[k * dp + i0 + r] = p[r][k];
  }
}

struct Scratch {
  std::vector<float> proj, regions, filters, beta, zeros;
  std::vector<int64_t> codes, stamp, voff, keys;
  std::vector<int> order, bucket, count, first, base, off, table, merged_ids, vidx;
  std::vector<const float*> regs, filts, pixels;
  std::vector<float*> dst;
  int64_t tick = 0;
};

// Integer lanes as wide as vec: a float comparison of two vecs gives -1 (true) or 0 per lane.
typedef int32_t ivec __attribute__((vector_size(W * sizeof(int32_t))));

constexpr int64_t kTableBits = 14;  // bucketing by a table indexed by the code up to 14 hyperplanes, hashed beyond
constexpr float kWithinTolerance = 1e-5f;  // haste.lsh.WITHIN_TOLERANCE

}  // namespace

// What the kernel derives from the hyperplanes (L, d) (float, contiguous) and the merge: on every call of
// haste_conv2d_cpu, once for a kept Call.
struct Planes {
  int64_t L = 0, d = 0, lt = 0;  // lt: projections per channel: the L planes, and for the scaled merge the sums
  bool scaled = false, ternary = true;
  // within-channel centring (scaled): <x - mean(x), R_l> = <x, R_l> - sum(x) / d * rowsum_l, positive above
  // kWithinTolerance * |sum(x)| * max|R| (haste.lsh.hash_codes_within)
  std::vector<float> rowsum;
  float rmax = 0.f;
  // ternary planes: per plane the region pixels where it is +1, then those where it is -1
  std::vector<int> list, begin, npos;
  // other planes (Gaussian): transposed to (d, lt), the entries of one region pixel side by side (plane L all ones)
  std::vector<float> rt;

  Planes(const torch::Tensor& planes, bool scaled_merge) : scaled(scaled_merge) {
    TORCH_CHECK(planes.dim() == 2 && planes.scalar_type() == torch::kFloat && planes.is_contiguous(),
                "planes: (L, d) float contiguous");
    L = planes.size(0);
    d = planes.size(1);
    lt = L + (scaled ? 1 : 0);
    TORCH_CHECK(L >= 1 && L <= 62, "1..62 hyperplanes");
    const float* R = planes.data_ptr<float>();
    rowsum.assign(L, 0.f);
    if (scaled)
      for (int64_t l = 0; l < L; ++l) {
        float acc = 0.f;
        for (int64_t i = 0; i < d; ++i) {
          acc += R[l * d + i];
          rmax = std::max(rmax, std::abs(R[l * d + i]));
        }
        rowsum[l] = acc;
      }
    for (int64_t i = 0; i < L * d && ternary; ++i) ternary = R[i] == 0.f || R[i] == 1.f || R[i] == -1.f;
    begin.assign(L + 1, 0);
    npos.assign(L, 0);
    if (ternary) {
      list.reserve(L * d);
      for (int64_t l = 0; l < L; ++l) {
        begin[l] = static_cast<int>(list.size());
        for (int64_t i = 0; i < d; ++i)
          if (R[l * d + i] == 1.f) list.push_back(static_cast<int>(i));
        npos[l] = static_cast<int>(list.size()) - begin[l];
        for (int64_t i = 0; i < d; ++i)
          if (R[l * d + i] == -1.f) list.push_back(static_cast<int>(i));
      }
      begin[L] = static_cast<int>(list.size());
    } else {
      rt.resize(d * lt);
      for (int64_t i = 0; i < d; ++i) {
        for (int64_t l = 0; l < L; ++l) rt[i * lt + l] = R[l * d + i];
        if (scaled) rt[i * lt + L] = 1.f;
      }
    }
  }
};

// x: (N, C, H, W) float, channels-last (read in place) or another layout (made channels-last first). wt:
// (ceil(O / 16), C, kh*kw, 16) float contiguous: the weight in panels of 16 output channels, zero beyond O
// (haste.engine.weight_layout); o: output channels. planes: (L, rh*rw) float contiguous. bias: (O,) or empty.
// scale: (O,) or empty: with it, y = conv * scale + bias (a BatchNorm folded into the output: bias is then the
// conv's bias times scale plus the BatchNorm's shift; haste.fold).
// scaled: the "scaled" merge (hash the channels centred within themselves, weight each member's filter rows by
// its least-squares scale against the bucket mean; haste/functional.py) instead of the paper's (centred across
// channels, plain sums).
// Returns (y (N, O, Hout, Wout), groups (N*Th*Tw,) int32, sums (N, 2) float64: per image the sum over
// tiles of buckets x valid output pixels and the sum of buckets; groups and sums undefined without want_sums).
// With ``flat``, the sums go there instead (2N doubles, image by image) and no groups or sums tensor is made: two
// tensors and their Python objects cost about 6 us a call at batch 1, 3% of a layer (the serving path).
std::vector<torch::Tensor> haste_conv2d(torch::Tensor x, const torch::Tensor& wt, const torch::Tensor& bias,
                                        const Planes& P, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t pad_l,
                                        int64_t pad_r, int64_t pad_t, int64_t pad_b, int64_t patch, int64_t o,
                                        const torch::Tensor& scale, bool want_sums,
                                        std::vector<double>* flat = nullptr) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == torch::kFloat, "x: float NCHW");
  STAGE_START
  x = x.contiguous(at::MemoryFormat::ChannelsLast);  // no copy when it is channels-last already
  TORCH_CHECK(wt.is_contiguous(), "wt must be contiguous");
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t kk = kh * kw, L = P.L, lt = P.lt;
  const bool scaled = P.scaled, ternary = P.ternary;
  const int64_t hout = (h + pad_t + pad_b - kh) / sh + 1, wout = (w + pad_l + pad_r - kw) / sw + 1;
  TORCH_CHECK(hout >= 1 && wout >= 1, "input smaller than the kernel");
  TORCH_CHECK(wt.dim() == 4 && wt.size(0) == (o + kPanel - 1) / kPanel && wt.size(1) == c && wt.size(2) == kk &&
                  wt.size(3) == kPanel,
              "wt must be (ceil(O/16), C, kh*kw, 16)");
  const int64_t ps = c * kk * kPanel;  // panel stride
  const int64_t rh = (patch - 1) * sh + kh, rw = (patch - 1) * sw + kw, d = rh * rw;
  TORCH_CHECK(P.d == d, "planes must have region_h * region_w columns");
  TORCH_CHECK(c >= 1 && patch >= 1, "empty input or patch");
  const int64_t th = (hout + patch - 1) / patch, tw = (wout + patch - 1) / patch, tiles = th * tw;
  // output channels-last (N, Hout, Wout, O) memory, returned as a logical NCHW tensor (measured: writing NCHW
  // through a per-tile block for NCHW inputs made the width-32 ResNet34 5-9% slower at batch 1, equal at 32)
  auto y = torch::empty({n, o, hout, wout}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  torch::Tensor groups;       // buckets per tile: for the sums
  std::vector<int> counts;    // the same, with ``flat``
  if (want_sums && flat) counts.resize(n * tiles);
  else if (want_sums) groups = torch::empty({n * tiles}, x.options().dtype(torch::kInt));
  const float* X = x.data_ptr<float>();
  const float* WT = wt.data_ptr<float>();
  TORCH_CHECK((bias.numel() == 0 || bias.numel() == o) && (scale.numel() == 0 || scale.numel() == o) &&
                  bias.is_contiguous() && scale.is_contiguous(),
              "bias and scale: (O,) contiguous or empty");
  const Epilogue ep{scale.numel() ? scale.data_ptr<float>() : nullptr, bias.numel() ? bias.data_ptr<float>() : nullptr};
  float* Y = y.data_ptr<float>();
  int* G = !want_sums ? nullptr : flat ? counts.data() : groups.data_ptr<int>();
  const int64_t cp = (c + W - 1) / W * W;  // channels rounded up to whole vectors
  const std::vector<float>& rowsum = P.rowsum;
  const float rmax = P.rmax;
  const std::vector<int>& list = P.list;
  const std::vector<int>& begin = P.begin;
  const std::vector<int>& npos = P.npos;
  const std::vector<float>& rt = P.rt;
  const bool use_table = L <= kTableBits;
  // beyond kTableBits: an open-addressing table of at least 2c slots keyed by the code (measured: sorting the codes
  // made L=16 0.97 of dense at batch 1 on fmnist-resnet34 against 0.86 at L=14)
  int slot_bits = 6;
  while ((int64_t{1} << slot_bits) < 2 * c) ++slot_bits;
  const uint64_t slot_mask = (uint64_t{1} << slot_bits) - 1;
  const uint64_t keep = (uint64_t{1} << L) - 1;  // L <= 62
  const int64_t fo = kk * kPanel;  // floats of one channel's (or bucket's) rows in one panel
  // floats per row of a tile buffer: the region's d pixels rounded up to whole vectors (and to 8 for the transposes)
  const int64_t dp = (d + 15) / 16 * 16;

  // Per-thread buffers kept across calls: they only grow, and are never zero-filled in bulk.
  auto scratch = [&]() -> Scratch& {
    thread_local Scratch s;
    grow(s.proj, lt * cp + L);  // and the mean merge's plane means
    grow(s.codes, c);
    grow(s.order, c);
    grow(s.bucket, c);
    grow(s.count, c + 1);
    grow(s.first, c + 1);
    grow(s.regs, c);
    grow(s.filts, c);
    grow(s.regions, (c + c / 2) * dp);
    grow(s.pixels, dp);
    if (static_cast<int64_t>(s.zeros.size()) < cp) s.zeros.assign(cp, 0.f);
    grow(s.filters, wt.size(0) * ps);
    grow(s.beta, c);
    grow(s.merged_ids, c);
    grow(s.dst, patch * patch);
    grow(s.base, patch * patch);
    grow(s.off, kk);
    grow(s.voff, d);
    grow(s.vidx, d);
    if (use_table) {
      grow(s.table, int64_t{1} << kTableBits);
      grow(s.stamp, int64_t{1} << kTableBits);
    } else {
      grow(s.table, int64_t{1} << slot_bits);
      grow(s.stamp, int64_t{1} << slot_bits);
      grow(s.keys, int64_t{1} << slot_bits);
    }
    return s;
  };
  // With fewer tiles than threads (small maps at small batches) the tiles run one after another and
  // each tile's GEMM is split over the threads by blocks of 32 output channels.
  const bool split_gemm = n * tiles < at::get_num_threads() && o > 32;
  auto tile = [&](int64_t t, Scratch& s) {
    STAGE_START
    const int64_t img = t / tiles, ty = (t % tiles) / tw, tx = t % tw;
    const int64_t oy0 = ty * patch, ox0 = tx * patch;
    const int64_t vh = std::min(patch, hout - oy0), vw = std::min(patch, wout - ox0);
    // 1. the region's pixels inside the image (the others are zero padding): their offsets in the input and
    // their index in the region
    const int64_t iy0 = oy0 * sh - pad_t, ix0 = ox0 * sw - pad_l;
    const int64_t ry0 = std::max<int64_t>(0, -iy0), ry1 = std::min(rh, h - iy0);
    const int64_t rx0 = std::max<int64_t>(0, -ix0), rx1 = std::min(rw, w - ix0);
    int64_t npx = 0;
    for (int64_t ry = ry0; ry < ry1; ++ry)
      for (int64_t rx = rx0; rx < rx1; ++rx) {
        s.voff[npx] = ((img * h + iy0 + ry) * w + ix0 + rx) * c;
        s.vidx[npx++] = static_cast<int>(ry * rw + rx);
      }
    const int64_t* voff = s.voff.data();
    const int* vidx = s.vidx.data();
    STAGE(kRegion)
    // 2. projections of every channel, centred across channels (or within each channel); codes from the signs,
    // plane by plane for a vector of channels at a time
    // every region pixel's channels (zeros outside the image and beyond d, up to dp)
    const float** pp = s.pixels.data();
    {
      const float* zeros = s.zeros.data();
      for (int64_t i = 0; i < dp; ++i) pp[i] = zeros;
      for (int64_t k = 0; k < npx; ++k) pp[vidx[k]] = X + voff[k];
    }
    float* proj = s.proj.data();
    if (ternary)
      project_ternary(pp, list.data(), begin.data(), npos.data(), L, scaled, d, c, proj, cp);
    else
      project_region(X, voff, vidx, npx, rt.data(), lt, c, proj, cp);
    if (scaled) {
      for (int64_t c0 = 0; c0 < cp; c0 += W) {
        const vec total = loadv(proj + L * cp + c0);
        const vec mean = total / static_cast<float>(d);
        vec tol;
        for (int l = 0; l < W; ++l) tol[l] = kWithinTolerance * std::abs(total[l]) * rmax;
        ivec lo{}, hi{};
        for (int64_t l = 0; l < L; ++l) {
          const ivec bit = (loadv(proj + l * cp + c0) - mean * rowsum[l]) > tol;
          if (l < 32) lo |= bit & static_cast<int32_t>(uint32_t{1} << l);
          else hi |= bit & static_cast<int32_t>(uint32_t{1} << (l - 32));
        }
        for (int64_t k = 0; k < W && c0 + k < c; ++k)
          s.codes[c0 + k] = static_cast<int64_t>(
              (static_cast<uint64_t>(static_cast<uint32_t>(hi[k])) << 32 | static_cast<uint32_t>(lo[k])) & keep);
      }
    } else {
      // the mean over channels of every plane's projections (the padding lanes hold zeros), as torch.mean: sum / C
      float* mv = proj + lt * cp;  // grown below: lt * cp + L floats
      for (int64_t l = 0; l < L; ++l) {
        vec acc{};
        for (int64_t c0 = 0; c0 < cp; c0 += W) acc += loadv(proj + l * cp + c0);
        float sum = 0.f;
        for (int k = 0; k < W; ++k) sum += acc[k];
        mv[l] = sum / static_cast<float>(c);
      }
      for (int64_t c0 = 0; c0 < cp; c0 += W) {
        ivec lo{}, hi{};
        for (int64_t l = 0; l < L; ++l) {
          const ivec bit = (loadv(proj + l * cp + c0) - mv[l]) > vec{};
          if (l < 32) lo |= bit & static_cast<int32_t>(uint32_t{1} << l);
          else hi |= bit & static_cast<int32_t>(uint32_t{1} << (l - 32));
        }
        for (int64_t k = 0; k < W && c0 + k < c; ++k)
          s.codes[c0 + k] = static_cast<int64_t>(
              (static_cast<uint64_t>(static_cast<uint32_t>(hi[k])) << 32 | static_cast<uint32_t>(lo[k])) & keep);
      }
    }
    STAGE(kHash)
    // 3. buckets: equal codes share a bucket
    int ng = 0;
    if (use_table) {
      const int64_t tick = ++s.tick;
      for (int64_t ch = 0; ch < c; ++ch) {
        const int64_t code = s.codes[ch];
        if (s.stamp[code] != tick) {
          s.stamp[code] = tick;
          s.table[code] = ng++;
        }
        s.bucket[ch] = s.table[code];
      }
    } else {  // the same, the code hashed into a table of at least 2c slots (linear probing)
      const int64_t tick = ++s.tick;
      for (int64_t ch = 0; ch < c; ++ch) {
        const int64_t code = s.codes[ch];
        uint64_t h = (static_cast<uint64_t>(code) * 0x9E3779B97F4A7C15ull) >> (64 - slot_bits);
        while (s.stamp[h] == tick && s.keys[h] != code) h = (h + 1) & slot_mask;
        if (s.stamp[h] != tick) {
          s.stamp[h] = tick;
          s.keys[h] = code;
          s.table[h] = ng++;
        }
        s.bucket[ch] = s.table[h];
      }
    }
    if (G) G[t] = ng;
    // members of every bucket, contiguous in s.order: bucket b owns order[first[b] .. first[b+1])
    std::fill(s.count.begin(), s.count.begin() + ng + 1, 0);
    for (int64_t ch = 0; ch < c; ++ch) s.count[s.bucket[ch] + 1] += 1;
    s.first[0] = 0;
    for (int b = 0; b < ng; ++b) s.first[b + 1] = s.first[b] + s.count[b + 1];
    for (int b = 0; b < ng; ++b) s.count[b] = s.first[b];
    for (int64_t ch = 0; ch < c; ++ch) s.order[s.count[s.bucket[ch]]++] = static_cast<int>(ch);
    STAGE(kBucket)
    // 4. the tile buffer: the region planar, one row of dp floats per channel (the input's values, zero where
    // the region leaves the image and beyond d), then one row per merged bucket (the mean of its members); a
    // singleton is read in its channel's row. A merged bucket's members' filter weights beta (1, or the scaled
    // merge's ratios) go to their positions in s.beta, and the weighted sum of their filter rows is made here
    // (or in step 6 by each thread for its output channels when the GEMM is split); a singleton's filter rows
    // are read where they are, in the weight.
    float* A = s.regions.data();
    transpose_region(pp, dp, c, A);
    STAGE(kIm2col)  // the tile buffer's channel rows (with the im2col tables of step 5)
    int merged_buckets = 0;
    for (int b = 0; b < ng; ++b) {
      int* members = s.order.data() + s.first[b];
      const int size = s.first[b + 1] - s.first[b];
      if (size == 1) {
        s.regs[b] = A + members[0] * dp;
        s.filts[b] = WT + members[0] * fo;
        continue;
      }
      float* f = s.filters.data() + merged_buckets * fo;
      float* m = A + (c + merged_buckets) * dp;
      s.merged_ids[merged_buckets++] = b;
      s.regs[b] = m;
      s.filts[b] = f;
      const float inv = 1.f / static_cast<float>(size);
      for (int64_t i = 0; i < dp; i += W) {
        vec sum = loadv(A + members[0] * dp + i);
        for (int k = 1; k < size; ++k) sum += loadv(A + members[k] * dp + i);
        storev(m + i, sum * inv);
      }
      // scaled: member i's least-squares scale a_i = <x_i, m> / <m, m>; the member with the largest scale
      // (the pivot) is moved first, the mean region is multiplied by its a_p and the other members' filter
      // rows are weighted by a_i / a_p, so that the product equals m * sum_i a_i w_i
      float* beta = s.beta.data() + s.first[b];
      std::fill(beta, beta + size, 1.f);
      if (scaled) {
        auto dot_m = [&](const float* a) {
          vec acc{};
          for (int64_t i = 0; i < dp; i += W) acc += loadv(a + i) * loadv(m + i);
          float sum = 0.f;
          for (int l = 0; l < W; ++l) sum += acc[l];
          return sum;
        };
        const float mm = dot_m(m);
        if (mm > 0.f) {
          int pivot = 0;
          for (int k = 0; k < size; ++k) {
            beta[k] = dot_m(A + members[k] * dp) / mm;
            if (beta[k] > beta[pivot]) pivot = k;
          }
          std::swap(members[0], members[pivot]);
          std::swap(beta[0], beta[pivot]);
          const float ap = beta[0];
          for (int k = 1; k < size; ++k) beta[k] /= ap;  // beta[0] (the pivot's) is not read
          for (int64_t i = 0; i < dp; i += W) storev(m + i, loadv(m + i) * ap);
        }  // else a flat bucket (mean region all zero): a plain sum
      }
      if (!split_gemm) sum_rows(f, WT, ps, kk, 0, o, members, size, beta);  // else by each thread's channels
    }
    STAGE(kMerge)
    // 5. implicit im2col tables: pixel q of bucket b reads regs[b][base[q] + koff[ky * kw + kx]]
    const int64_t pixels = vh * vw;
    for (int64_t py = 0; py < vh; ++py)
      for (int64_t px = 0; px < vw; ++px) s.base[py * vw + px] = static_cast<int>(py * sh * rw + px * sw);
    for (int64_t ky = 0; ky < kh; ++ky)
      for (int64_t kx = 0; kx < kw; ++kx) s.off[ky * kw + kx] = static_cast<int>(ky * rw + kx);
    STAGE(kIm2col)
    // 6. y[pixel][0..O) = epilogue(merged channels (pixels, depth) @ merged filters (depth, O)), in place
    for (int64_t py = 0; py < vh; ++py)
      for (int64_t px = 0; px < vw; ++px)
        s.dst[py * vw + px] = Y + ((img * hout + oy0 + py) * wout + ox0 + px) * o;
    // with the GEMM split over threads (few tiles), each thread first sums the merged buckets' filter rows
    // of its own output channels [oc0, oc1). Measured and not kept: the same for every tile, by blocks of 64
    // output channels, so that a block of merged rows is read back from cache (width-32 ResNet34 at `high`:
    // 1.30 vs 1.27 of dense at batch 32, 1.25 vs 1.21 at batch 8: the strided 64-float row segments cost more
    // than the cache misses they save)
    auto gemm = [&](int64_t oc0, int64_t oc1) {
      STAGE_START  // this block's own timer (the blocks run on several threads)
      if (split_gemm)
        for (int k = 0; k < merged_buckets; ++k) {
          const int b = s.merged_ids[k];
          sum_rows(s.filters.data() + k * fo, WT, ps, kk, oc0, oc1, s.order.data() + s.first[b],
                   s.first[b + 1] - s.first[b], s.beta.data() + s.first[b]);
        }
      STAGE(kFilters)
      gemm_buckets(pixels, ng, kk, o, ps, oc0, oc1, s.regs.data(), s.filts.data(), s.base.data(), s.off.data(),
                   s.dst.data(), ep);
      STAGE(kGemm)
    };
    if (split_gemm)
      at::parallel_for(0, (o + 31) / 32, 1, [&](int64_t b0, int64_t b1) { gemm(b0 * 32, std::min(o, b1 * 32)); });
    else
      gemm(0, o);
  };
  STAGE(kPrepare)
  if (split_gemm) {
    Scratch& s = scratch();
    for (int64_t t = 0; t < n * tiles; ++t) tile(t, s);
  } else {
    // Each thread runs its own contiguous share of the tiles (its images stay in its cache), claiming them one
    // at a time; a thread done with its share takes the remaining tiles of the others' (a tile's cost varies
    // with its bucket count, so a static split alone leaves one thread waiting for the other).
    const int64_t total = n * tiles;
    const int64_t shares = std::min<int64_t>(at::get_num_threads(), total);
    std::vector<Claim> claims(shares);
    for (int64_t i = 0; i < shares; ++i) {
      claims[i].next.store(total * i / shares, std::memory_order_relaxed);
      claims[i].end = total * (i + 1) / shares;
    }
    at::parallel_for(0, shares, 1, [&](int64_t b0, int64_t b1) {
      Scratch& s = scratch();
      for (int64_t k = 0; k < shares; ++k) {
        Claim& cl = claims[(b0 + k) % shares];
        for (int64_t t = cl.next.fetch_add(1, std::memory_order_relaxed); t < cl.end;
             t = cl.next.fetch_add(1, std::memory_order_relaxed))
          tile(t, s);
      }
    });
  }
  STAGE(kLoop)
  // per image: sum over tiles of buckets x valid output pixels, and of buckets (FLOPs accounting)
  torch::Tensor sums;
  if (want_sums && flat) flat->resize(2 * n);
  else if (want_sums) sums = torch::empty({n, 2}, x.options().dtype(torch::kDouble));
  double* S = !want_sums ? nullptr : flat ? flat->data() : sums.data_ptr<double>();
  for (int64_t img = 0; img < n && want_sums; ++img) {
    double gv = 0, g = 0;
    for (int64_t ty = 0; ty < th; ++ty)
      for (int64_t tx = 0; tx < tw; ++tx) {
        const double gt = G[(img * th + ty) * tw + tx];
        gv += gt * static_cast<double>(std::min(patch, hout - ty * patch) * std::min(patch, wout - tx * patch));
        g += gt;
      }
    S[2 * img] = gv;
    S[2 * img + 1] = g;
  }
  STAGE(kFinish)
  return {y, groups, sums};
}

// The kernel with the planes given as a tensor (derived on every call): the engine's ``cpu_conv2d``.
std::vector<torch::Tensor> haste_conv2d_cpu(torch::Tensor x, torch::Tensor wt, torch::Tensor bias,
                                            torch::Tensor planes, int64_t kh, int64_t kw, int64_t sh,
                                            int64_t sw, int64_t pad_l, int64_t pad_r, int64_t pad_t,
                                            int64_t pad_b, int64_t patch, bool scaled, int64_t o,
                                            torch::Tensor scale) {
  STAGE_START
  const Planes P(planes, scaled);
  STAGE(kPrepare)
  return haste_conv2d(x, wt, bias, P, kh, kw, sh, sw, pad_l, pad_r, pad_t, pad_b, patch, o, scale, true);
}

// One HASTE layer's call on the CPU kernel, kept by the layer for inputs of one shape at one level (the serving
// path): the kernel's operands, and what must not have changed since they were made, checked on every call in C++
// (in Python these checks cost more than the rest of the layer's Python: ~20 us per call at batch 1, the kernel
// having pushed the Python objects they read out of the caches):
// - entries: (dict, key, object) triples: dict[key] must still be that object (a module's "weight" parameter,
//   a BatchNorm's buffers, its "training" flag);
// - guards: tensors whose version counter and data pointer must be unchanged (edits in place, ``.data = ...``);
// - the input: a float32 CPU tensor of 4 dimensions, and no gradient needed (grad mode off, or neither the input
//   nor the weight requiring one).
// run(x, sums) returns None when a check fails (the layer then takes its general path and makes a new call),
// else the output; with sums=True (output, per-image sums as a list of (sum of buckets x valid output pixels,
// sum of buckets) pairs: haste.flops.tile_sums' rows); with sums a list (a profile's record of the forward's layer
// calls), the output, after appending (counted, the sums, images) to it: a profiled forward then runs no Python per
// layer for its FLOPs (haste.profile's count cost ~6 us per layer at batch 1, its objects out of the caches).
class Call {
 public:
  Call(torch::Tensor wt, torch::Tensor bias, torch::Tensor planes, std::vector<int64_t> geometry, bool scaled,
       int64_t o, torch::Tensor scale, std::vector<torch::Tensor> guards, py::list entries, py::object counted)
      : wt_(std::move(wt)), bias_(std::move(bias)), planes_(std::move(planes), scaled), scale_(std::move(scale)),
        geometry_(std::move(geometry)), o_(o), guards_(std::move(guards)), counted_(std::move(counted)) {
    TORCH_CHECK(geometry_.size() == 9, "geometry: kh, kw, sh, sw, pad_l, pad_r, pad_t, pad_b, patch");
    TORCH_CHECK(!guards_.empty(), "guards: the weight first");
    for (const auto& g : guards_) {
      versions_.push_back(g._version());
      pointers_.push_back(g.data_ptr());
    }
    for (const auto& e : entries) {
      auto t = e.cast<py::tuple>();
      TORCH_CHECK(t.size() == 3 && PyDict_Check(t[0].ptr()), "entries: (dict, key, object) triples");
      entries_.emplace_back(t[0].cast<py::object>(), t[1].cast<py::object>(), t[2].cast<py::object>());
    }
  }

  py::object run(const torch::Tensor& x, const py::object& sums) const {
    const bool sink = PyList_Check(sums.ptr());
    const bool want = sink || PyObject_IsTrue(sums.ptr()) == 1;
    if (!x.defined() || !x.device().is_cpu() || x.scalar_type() != torch::kFloat || x.dim() != 4) return py::none();
    if (at::GradMode::is_enabled() && (x.requires_grad() || guards_[0].requires_grad())) return py::none();
    for (const auto& [dict, key, expected] : entries_) {
      PyObject* now = PyDict_GetItemWithError(dict.ptr(), key.ptr());  // borrowed
      if (now != expected.ptr()) {
        PyErr_Clear();
        return py::none();
      }
    }
    for (size_t i = 0; i < guards_.size(); ++i)
      if (guards_[i]._version() != versions_[i] || guards_[i].data_ptr() != pointers_[i]) return py::none();
    std::vector<torch::Tensor> out;
    std::vector<double> flat;
    {
      py::gil_scoped_release nogil;
      const auto& g = geometry_;
      out = haste_conv2d(x, wt_, bias_, planes_, g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], o_, scale_, want,
                         want ? &flat : nullptr);
    }
    if (!want) return py::cast(out[0]);
    const size_t n = flat.size() / 2;
    py::list pairs(n);  // per image (sum of buckets x valid output pixels, sum of buckets)
    for (size_t i = 0; i < n; ++i) pairs[i] = py::make_tuple(flat[2 * i], flat[2 * i + 1]);
    if (!sink) return py::make_tuple(out[0], pairs);
    py::tuple entry = py::make_tuple(counted_, pairs, n);
    if (PyList_Append(sums.ptr(), entry.ptr()) != 0) throw py::error_already_set();
    return py::cast(out[0]);
  }

 private:
  torch::Tensor wt_, bias_;
  Planes planes_;
  torch::Tensor scale_;
  std::vector<int64_t> geometry_;
  int64_t o_;
  std::vector<torch::Tensor> guards_;
  std::vector<int64_t> versions_;
  std::vector<void*> pointers_;
  std::vector<std::tuple<py::object, py::object, py::object>> entries_;
  py::object counted_;  // what run appends to a sink list with the sums (haste.profile.Counted)
};

// The kernel as a torch operator, torch.ops.haste.conv2d (torch.ops.haste_profile.conv2d in the profiling build:
// a namespace is registered once per process): what torch.jit.trace records for a HASTE layer at a level other than
// off, so that a traced model (frozen, saved, loaded in C++) runs the kernel. haste_conv2d_cpu's operands, the
// geometry as one list (kh, kw, sh, sw, pad_l, pad_r, pad_t, pad_b, patch); returns the channels-last output.
std::vector<torch::Tensor> conv2d_call(const torch::Tensor& x, const torch::Tensor& wt, const torch::Tensor& bias,
                                       const torch::Tensor& planes, const std::vector<int64_t>& geometry, bool scaled,
                                       int64_t o, const torch::Tensor& scale, bool want_sums) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kFloat && x.dim() == 4,
              "haste conv2d: the input must be a float32 (N, C, H, W) CPU tensor; got ", x.scalar_type(), " ",
              x.sizes(), " on ", x.device());
  TORCH_CHECK(geometry.size() == 9, "haste conv2d: geometry is kh, kw, sh, sw, pad_l, pad_r, pad_t, pad_b, patch");
  const auto& g = geometry;
  const Planes P(planes, scaled);
  std::optional<py::gil_scoped_release> nogil;  // other Python threads run meanwhile (TorchScript may hold no GIL)
  if (PyGILState_Check()) nogil.emplace();
  return haste_conv2d(x, wt, bias, P, g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], o, scale, want_sums);
}

torch::Tensor conv2d_op(torch::Tensor x, torch::Tensor wt, torch::Tensor bias, torch::Tensor planes,
                        std::vector<int64_t> geometry, bool scaled, int64_t o, torch::Tensor scale) {
  return conv2d_call(x, wt, bias, planes, geometry, scaled, o, scale, false)[0];
}

// The same with the per-image sums (N, 2) float64: (sum of buckets x valid output pixels, sum of buckets) per image,
// haste.flops.tile_sums' rows, from which haste.trace counts a traced forward's multiply-adds.
std::tuple<torch::Tensor, torch::Tensor> conv2d_sums_op(torch::Tensor x, torch::Tensor wt, torch::Tensor bias,
                                                        torch::Tensor planes, std::vector<int64_t> geometry,
                                                        bool scaled, int64_t o, torch::Tensor scale) {
  auto out = conv2d_call(x, wt, bias, planes, geometry, scaled, o, scale, true);
  return {out[0], out[2]};
}

// Stage totals in seconds since the last reset (all zero unless built with -DHASTE_PROFILE).
std::vector<double> stage_seconds(bool reset) {
  std::vector<double> out;
  for (auto& v : stage_ns) out.push_back((reset ? v.exchange(0) : v.load()) * 1e-9);
  return out;
}

#ifndef HASTE_OPS
#define HASTE_OPS haste
#endif
#define HASTE_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)  // expands HASTE_OPS first

HASTE_LIBRARY(HASTE_OPS, m) {
  m.def("conv2d(Tensor x, Tensor wt, Tensor bias, Tensor planes, int[] geometry, bool scaled, int out_channels, "
        "Tensor scale) -> Tensor",
        &conv2d_op);
  m.def("conv2d_sums(Tensor x, Tensor wt, Tensor bias, Tensor planes, int[] geometry, bool scaled, int out_channels, "
        "Tensor scale) -> (Tensor, Tensor)",
        &conv2d_sums_op);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // the GIL is released while the kernel runs, as ATen ops do: other Python threads (a server's event
  // loop decoding the next requests) keep running during inference
  m.def("haste_conv2d_cpu", &haste_conv2d_cpu, "Fused HASTE convolution (CPU)",
        py::call_guard<py::gil_scoped_release>());
  // module_local: the profiling build (another module in the same process) has its own Call
  py::class_<Call>(m, "Call", py::module_local(),
                   "One HASTE layer's kept CPU call: run(x, sums) -> None (a check failed), y or (y, sums)")
      .def(py::init<torch::Tensor, torch::Tensor, torch::Tensor, std::vector<int64_t>, bool, int64_t, torch::Tensor,
                    std::vector<torch::Tensor>, py::list, py::object>(),
           py::arg("wt"), py::arg("bias"), py::arg("planes"), py::arg("geometry"), py::arg("scaled"), py::arg("o"),
           py::arg("scale"), py::arg("guards"), py::arg("entries"), py::arg("counted") = py::none())
      .def("run", &Call::run, py::arg("x"), py::arg("sums") = false);
  m.def("stage_seconds", &stage_seconds, "per-stage seconds: region, hash, bucket, merge, im2col, filters, gemm, prepare, finish");
}
