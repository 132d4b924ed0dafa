// Fused HASTE convolution for CPU: one pass per (image, tile), parallel over tiles.
//
// The input is zero-padded once (conv padding plus the bottom/right tile padding), so every tile
// reads its (P-1)*S+k region of every channel in place. Per tile: project every channel on the
// first L hyperplanes (all L projections of a channel in vector registers, four channels at a time),
// centre the projections across channels, turn signs into integer codes, group equal codes into
// buckets (a stamped lookup table; a sort when L is large), average the inputs and sum the filter
// rows of the buckets with more than one member (singletons are read where they are: their region
// in the padded input, their filter rows in the weight), and multiply the merged channels with the
// merged filters for the tile's valid output pixels only, in a register-blocked micro-kernel that
// reads the regions in place (implicit im2col). Codes and bucket counts equal those of the reference
// implementation (haste/functional.py); buckets are numbered in first-occurrence order.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <numeric>
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
constexpr int kMaxNV = 64 / W;  // vectors of up to 63 hyperplanes plus the scaled merge's sum lane

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

// out[q][oc..oc+W*NV) = sum_b sum_j regs[b][base[q] + koff[j]] * filts[b][j][oc..oc+W*NV), PB pixels q.
template <int PB, int NV>
inline void micro(int64_t ng, int64_t kk, int64_t ps, int64_t oc, const float* const* regs, const float* const* filts,
                  const int* base, const int* koff, float* const* out, const float* bias) {
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
    const vec bv = bias ? loadv(bias + oc + W * v) : vec{};
    for (int q = 0; q < PB; ++q) storev(out[q] + oc + W * v, acc[v][q] + bv);
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
                       const float* bias) {
  for (int64_t p0 = 0; p0 < np; p0 += PB)
    by_pixels<NV>(std::min<int64_t>(PB, np - p0), ng, kk, ps, oc, regs, filts, base + p0, koff, out + p0, bias);
}

// out[q][oc0..oc1) = bias + sum_b sum_j regs[b][base[q] + koff[j]] * filts[b][j][oc0..oc1), in place:
// with AVX-512, 64 output channels x 6 pixels per micro-kernel call where possible (24 accumulators, 4
// filter registers: the fewest loads per multiply-add), then 32 x 8, then 16 x 8; with AVX2, 16 x 6; then scalar.
void gemm_buckets(int64_t np, int64_t ng, int64_t kk, int64_t o, int64_t ps, int64_t oc0, int64_t oc1,
                  const float* const* regs, const float* const* filts, const int* base, const int* koff,
                  float* const* out, const float* bias) {
  const int64_t o16 = std::min(oc1, o / 16 * 16);
  int64_t oc = oc0;
#ifdef __AVX512F__  // 32 registers
  for (; oc + 64 <= o16; oc += 64) gemm_block<4, 6>(np, ng, kk, ps, oc, regs, filts, base, koff, out, bias);
  for (; oc + 32 <= o16; oc += 32) gemm_block<2, 8>(np, ng, kk, ps, oc, regs, filts, base, koff, out, bias);
  for (; oc + 16 <= o16; oc += 16) gemm_block<1, 8>(np, ng, kk, ps, oc, regs, filts, base, koff, out, bias);
#else  // 16 registers: 16 output channels x 6 pixels = 12 accumulators, 2 filter registers and a broadcast
  for (; oc + 16 <= o16; oc += 16) gemm_block<2, 6>(np, ng, kk, ps, oc, regs, filts, base, koff, out, bias);
#endif
  for (int64_t q = 0; q < np; ++q)  // output channels beyond a multiple of 16
    for (int64_t c = oc; c < oc1; ++c) {
      float acc = bias ? bias[c] : 0.f;
      for (int64_t b = 0; b < ng; ++b)
        for (int64_t j = 0; j < kk; ++j) acc += regs[b][base[q] + koff[j]] * panel_at(filts[b], ps, kk, c)[j * kPanel];
      out[q][c] = acc;
    }
}

// Bit l set where lane l of v is > 0.
inline uint64_t sign_bits(vec v) {
#if defined(__AVX512F__)
  __m512 r;
  __builtin_memcpy(&r, &v, sizeof(r));
  return static_cast<uint64_t>(_mm512_cmp_ps_mask(r, _mm512_setzero_ps(), _CMP_GT_OQ));
#elif defined(__AVX__)
  __m256 r;
  __builtin_memcpy(&r, &v, sizeof(r));
  return static_cast<uint64_t>(_mm256_movemask_ps(_mm256_cmp_ps(r, _mm256_setzero_ps(), _CMP_GT_OQ)));
#else
  uint64_t bits = 0;
  for (int l = 0; l < W; ++l) bits |= static_cast<uint64_t>(v[l] > 0.f) << l;
  return bits;
#endif
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

// Projections of NC channel regions on L <= W*NV planes: NC*NV independent accumulators, one
// broadcast multiply-add per region pixel and register. rt: planes transposed (rh*rw, W*NV).
template <int NC, int NV>
inline void project(const float* const* r, int64_t rs, int64_t rh, int64_t rw, const float* rt, float* proj) {
  vec acc[NC][NV];
  for (int a = 0; a < NC; ++a)
    for (int v = 0; v < NV; ++v) acc[a][v] = vec{};
  for (int64_t ry = 0; ry < rh; ++ry)
    for (int64_t rx = 0; rx < rw; ++rx) {
      const float* row = rt + (ry * rw + rx) * W * NV;
      vec pl[NV];
      for (int v = 0; v < NV; ++v) pl[v] = loadv(row + W * v);
      for (int a = 0; a < NC; ++a) {
        const float val = r[a][ry * rs + rx];
        for (int v = 0; v < NV; ++v) acc[a][v] += val * pl[v];
      }
    }
  for (int a = 0; a < NC; ++a)
    for (int v = 0; v < NV; ++v) storev(proj + (a * NV + v) * W, acc[a][v]);
}

template <int NV>
void project_all(const float* const* ptr, int64_t c, int64_t rs, int64_t rh, int64_t rw, const float* rt,
                 float* proj) {
  // 8 or more independent multiply-add chains hide the FMA latency, within the registers: NC channels x NV
  // plane vectors accumulate (AVX-512: 8 x 1, else 4 x NV; AVX2: 8 x 1, 4 x 2, 4 x 3, 2 x 4..6, 1 x 7..8)
  constexpr int NC = NV == 1 ? 8 : (W == 16 || NV <= 3) ? 4 : NV <= 6 ? 2 : 1;
  int64_t ch = 0;
  for (; ch + NC <= c; ch += NC) project<NC, NV>(ptr + ch, rs, rh, rw, rt, proj + ch * W * NV);
  for (; ch < c; ++ch) project<1, NV>(ptr + ch, rs, rh, rw, rt, proj + ch * W * NV);
}

// project_all instantiated for the nv plane vectors of this call (1..kMaxNV).
inline void by_planes(int nv, const float* const* ptr, int64_t c, int64_t rs, int64_t rh, int64_t rw, const float* rt,
                      float* proj) {
  switch (nv) {
    case 1: return project_all<1>(ptr, c, rs, rh, rw, rt, proj);
    case 2: return project_all<2>(ptr, c, rs, rh, rw, rt, proj);
    case 3: return project_all<3>(ptr, c, rs, rh, rw, rt, proj);
    case 4: return project_all<4>(ptr, c, rs, rh, rw, rt, proj);
#if !defined(__AVX512F__)
    case 5: return project_all<5>(ptr, c, rs, rh, rw, rt, proj);
    case 6: return project_all<6>(ptr, c, rs, rh, rw, rt, proj);
    case 7: return project_all<7>(ptr, c, rs, rh, rw, rt, proj);
    case 8: return project_all<8>(ptr, c, rs, rh, rw, rt, proj);
#endif
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

struct Scratch {
  std::vector<float> proj, merged, filters, beta;
  std::vector<int64_t> codes, stamp;
  std::vector<int> order, bucket, count, first, base, off, table, merged_ids;
  std::vector<const float*> ptr, regs, filts;
  std::vector<float*> dst;
  int64_t tick = 0;
};

constexpr int64_t kTableBits = 14;  // lookup-table bucketing up to 14 hyperplanes, sorting beyond
constexpr float kWithinTolerance = 1e-5f;  // haste.lsh.WITHIN_TOLERANCE

}  // namespace

// x: (N, C, H, W) float contiguous or channels-last. wt: (ceil(O / 16), C, kh*kw, 16) float contiguous: the
// weight in panels of 16 output channels, zero beyond O (haste.engine.weight_layout); o: output channels.
// planes: (L, rh*rw) float contiguous. bias: (O,) or empty. scaled: the "scaled" merge (hash the channels
// centred within themselves, weight each member's filter rows by its least-squares scale against the
// bucket mean; haste/functional.py) instead of the paper's (centred across channels, plain sums).
// Returns (y (N, O, Hout, Wout), groups (N*Th*Tw,) int32, sums (N, 2) float64: per image the sum over
// tiles of buckets x valid output pixels and the sum of buckets).
std::vector<torch::Tensor> haste_conv2d_cpu(torch::Tensor x, torch::Tensor wt, torch::Tensor bias,
                                            torch::Tensor planes, int64_t kh, int64_t kw, int64_t sh,
                                            int64_t sw, int64_t pad_l, int64_t pad_r, int64_t pad_t,
                                            int64_t pad_b, int64_t patch, bool scaled, int64_t o) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == torch::kFloat, "x: float NCHW");
  const bool nhwc = !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  if (!nhwc) x = x.contiguous();
  TORCH_CHECK(wt.is_contiguous() && planes.is_contiguous(), "wt and planes must be contiguous");
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t kk = kh * kw, L = planes.size(0);
  const int64_t hout = (h + pad_t + pad_b - kh) / sh + 1, wout = (w + pad_l + pad_r - kw) / sw + 1;
  TORCH_CHECK(hout >= 1 && wout >= 1, "input smaller than the kernel");
  TORCH_CHECK(wt.dim() == 4 && wt.size(0) == (o + kPanel - 1) / kPanel && wt.size(1) == c && wt.size(2) == kk &&
                  wt.size(3) == kPanel,
              "wt must be (ceil(O/16), C, kh*kw, 16)");
  const int64_t ps = c * kk * kPanel;  // panel stride
  const int64_t rh = (patch - 1) * sh + kh, rw = (patch - 1) * sw + kw, d = rh * rw;
  TORCH_CHECK(planes.size(1) == d, "planes must have region_h * region_w columns");
  TORCH_CHECK(L >= 1 && L <= 62, "1..62 hyperplanes");
  TORCH_CHECK(c >= 1 && patch >= 1, "empty input or patch");
  const int64_t th = (hout + patch - 1) / patch, tw = (wout + patch - 1) / patch, tiles = th * tw;
  STAGE_START
  // 0. pad once: rows/cols the tiles need, zeros outside the image; slack for full-vector over-reads
  const int64_t hp = (th * patch - 1) * sh + kh, wp = (tw * patch - 1) * sw + kw;
  const int64_t rwp = (rw + W - 1) / W * W;  // a region row read as whole vectors
  // uninitialised: the image area is copied below, only the border is zeroed
  // kept per calling thread and only grown: no page faults from a fresh allocation every call
  thread_local std::vector<float> xp_buf;
  grow(xp_buf, n * c * hp * wp + rwp);
  float* xpd = xp_buf.data();
  std::fill(xpd + n * c * hp * wp, xpd + n * c * hp * wp + rwp, 0.f);
  const float* X = x.data_ptr<float>();  // after the layout check below
  const int64_t x0 = std::max<int64_t>(0, -pad_l), x1 = std::min(w, wp - pad_l);
  const int64_t y0 = std::max<int64_t>(0, -pad_t), y1 = std::min(h, hp - pad_t);
  at::parallel_for(0, n * c, 16, [&](int64_t b0, int64_t b1) {  // zero the border of every plane
    for (int64_t p = b0; p < b1; ++p) {
      float* plane = xpd + p * hp * wp;
      for (int64_t yy = 0; yy < hp; ++yy) {
        float* row = plane + yy * wp;
        const int64_t iy = yy - pad_t;
        if (iy < y0 || iy >= y1 || x1 <= x0) {
          std::fill(row, row + wp, 0.f);
          continue;
        }
        std::fill(row, row + x0 + pad_l, 0.f);
        std::fill(row + x1 + pad_l, row + wp, 0.f);
      }
    }
  });
  if (nhwc) {  // channels-last input (the output of a previous HASTE layer): transpose while padding
    at::parallel_for(0, n * h, 4, [&](int64_t b0, int64_t b1) {
      for (int64_t p = b0; p < b1; ++p) {
        const int64_t img = p / h, iy = p % h;
        if (iy < y0 || iy >= y1) continue;
        // one input row (w * c floats) stays in L1 while every channel plane's row is written in order
        const float* row = X + (img * h + iy) * w * c;
        for (int64_t ch = 0; ch < c; ++ch) {
          float* dst = xpd + ((img * c + ch) * hp + iy + pad_t) * wp + pad_l;
          for (int64_t ix = x0; ix < x1; ++ix) dst[ix] = row[ix * c + ch];
        }
      }
    });
  } else {
    at::parallel_for(0, n * c, 16, [&](int64_t b0, int64_t b1) {
      for (int64_t p = b0; p < b1; ++p)
        for (int64_t iy = y0; iy < y1; ++iy)
          if (x1 > x0)
            std::memcpy(xpd + (p * hp + iy + pad_t) * wp + x0 + pad_l, X + (p * h + iy) * w + x0,
                        (x1 - x0) * sizeof(float));
    });
  }
  // output channels-last (N, Hout, Wout, O) memory, returned as a logical NCHW tensor (measured: writing NCHW
  // through a per-tile block for NCHW inputs made the width-32 ResNet34 5-9% slower at batch 1, equal at 32)
  auto y = torch::empty({n, hout, wout, o}, x.options());
  auto groups = torch::empty({n * tiles}, x.options().dtype(torch::kInt));
  const float* WT = wt.data_ptr<float>();
  const float* B = bias.numel() ? bias.data_ptr<float>() : nullptr;
  float* Y = y.data_ptr<float>();
  int* G = groups.data_ptr<int>();
  // planes transposed to (d, W*nv), zero-padded beyond L; scaled: lane L is all ones (the channel sum)
  const int nv = static_cast<int>((L + (scaled ? 1 : 0) + W - 1) / W);
  TORCH_CHECK(nv <= kMaxNV, "at most 63 hyperplanes (62 with merge='scaled')");
  std::vector<float> rt(d * W * nv, 0.f);
  const float* R = planes.data_ptr<float>();
  for (int64_t l = 0; l < L; ++l)
    for (int64_t i = 0; i < d; ++i) rt[i * W * nv + l] = R[l * d + i];
  // within-channel centring: <x - mean(x), R_l> = <x, R_l> - sum(x) / d * rowsum_l, positive above
  // kWithinTolerance * |sum(x)| * max|R| (haste.lsh.hash_codes_within)
  std::vector<float> rowsum(W * nv, 0.f);
  float rmax = 0.f;
  if (scaled) {
    for (int64_t i = 0; i < d; ++i) rt[i * W * nv + L] = 1.f;
    for (int64_t l = 0; l < L; ++l) {
      float acc = 0.f;
      for (int64_t i = 0; i < d; ++i) {
        acc += R[l * d + i];
        rmax = std::max(rmax, std::abs(R[l * d + i]));
      }
      rowsum[l] = acc;
    }
  }
  const bool use_table = L <= kTableBits;
  vec lanes{};  // 1 in the first rw lanes: a region row read as one vector (the scaled merge's dot products)
  for (int l = 0; l < W && l < rw; ++l) lanes[l] = 1.f;
  const int64_t fo = kk * kPanel;  // floats of one channel's (or bucket's) rows in one panel

  // Per-thread buffers kept across calls: they only grow, and are never zero-filled in bulk.
  auto scratch = [&]() -> Scratch& {
    thread_local Scratch s;
    grow(s.proj, c * W * nv);
    grow(s.codes, c);
    grow(s.order, c);
    grow(s.bucket, c);
    grow(s.count, c + 1);
    grow(s.first, c + 1);
    grow(s.ptr, c);
    grow(s.regs, c);
    grow(s.filts, c);
    grow(s.merged, c * rh * wp + rwp);
    grow(s.filters, wt.size(0) * ps);
    grow(s.beta, c);
    grow(s.merged_ids, c);
    grow(s.dst, patch * patch);
    grow(s.base, patch * patch);
    grow(s.off, kk);
    if (use_table) {
      grow(s.table, int64_t{1} << kTableBits);
      grow(s.stamp, int64_t{1} << kTableBits);
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
    // 1. regions, in place in the padded input (row stride wp)
    const float* xi = xpd + img * c * hp * wp + (oy0 * sh) * wp + ox0 * sw;
    for (int64_t ch = 0; ch < c; ++ch) s.ptr[ch] = xi + ch * hp * wp;
    STAGE(kRegion)
    // 2. projections of every channel, centred across channels; codes from the signs
    float* proj = s.proj.data();
    by_planes(nv, s.ptr.data(), c, wp, rh, rw, rt.data(), proj);
    const uint64_t keep = L == 64 ? ~uint64_t{0} : (uint64_t{1} << L) - 1;
    if (scaled) {  // centred within each channel: subtract sum / d * rowsum, compare with the tolerance
      vec rs[kMaxNV];
      for (int v = 0; v < nv; ++v) rs[v] = loadv(rowsum.data() + W * v);
      for (int64_t ch = 0; ch < c; ++ch) {
        const float total = proj[ch * nv * W + L];
        const float mean = total / static_cast<float>(d), tol = kWithinTolerance * std::abs(total) * rmax;
        uint64_t code = 0;
        for (int v = 0; v < nv; ++v) {
          const vec centred = loadv(proj + (ch * nv + v) * W) - mean * rs[v];
          code |= sign_bits(centred - tol) << (W * v);
        }
        s.codes[ch] = static_cast<int64_t>(code & keep);
      }
    } else {
      // mean over channels (vector adds), then one compare per W planes gives the sign bits
      vec mv[kMaxNV] = {};
      for (int64_t ch = 0; ch < c; ++ch)
        for (int v = 0; v < nv; ++v) mv[v] += loadv(proj + (ch * nv + v) * W);
      for (int v = 0; v < nv; ++v) mv[v] = mv[v] / static_cast<float>(c);  // as torch.mean: sum / C
      for (int64_t ch = 0; ch < c; ++ch) {
        uint64_t code = 0;
        for (int v = 0; v < nv; ++v) code |= sign_bits(loadv(proj + (ch * nv + v) * W) - mv[v]) << (W * v);
        s.codes[ch] = static_cast<int64_t>(code & keep);
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
    } else {
      std::iota(s.order.begin(), s.order.begin() + c, 0);
      std::stable_sort(s.order.begin(), s.order.begin() + c,
                       [&](int a, int b) { return s.codes[a] < s.codes[b]; });
      int g = -1;
      for (int64_t i = 0; i < c; ++i) {
        const int ch = s.order[i];
        if (i == 0 || s.codes[ch] != s.codes[s.order[i - 1]]) ++g;
        s.bucket[ch] = g;
      }
      ng = g + 1;
    }
    G[t] = ng;
    // members of every bucket, contiguous in s.order: bucket b owns order[first[b] .. first[b+1])
    std::fill(s.count.begin(), s.count.begin() + ng + 1, 0);
    for (int64_t ch = 0; ch < c; ++ch) s.count[s.bucket[ch] + 1] += 1;
    s.first[0] = 0;
    for (int b = 0; b < ng; ++b) s.first[b + 1] = s.first[b] + s.count[b + 1];
    for (int b = 0; b < ng; ++b) s.count[b] = s.first[b];
    for (int64_t ch = 0; ch < c; ++ch) s.order[s.count[s.bucket[ch]]++] = static_cast<int>(ch);
    STAGE(kBucket)
    // 4. per bucket: singletons are read in place; a merged bucket gets the mean of its members' regions in
    // scratch (whole-vector rows, members outer), its members' filter weights beta (1, or the scaled merge's
    // ratios) at their positions in s.beta, and the weighted sum of their filter rows (here, or in step 6 by
    // each thread for its output channels when the GEMM is split).
    int merged_buckets = 0;
    for (int b = 0; b < ng; ++b) {
      int* members = s.order.data() + s.first[b];
      const int size = s.first[b + 1] - s.first[b];
      if (size == 1) {
        s.regs[b] = s.ptr[members[0]];
        s.filts[b] = WT + members[0] * fo;
        continue;
      }
      float* m = s.merged.data() + merged_buckets * rh * wp;
      float* f = s.filters.data() + merged_buckets * fo;
      s.merged_ids[merged_buckets++] = b;
      s.regs[b] = m;
      s.filts[b] = f;
      // the spans a region covers at row stride wp: rows of rwp floats, or one flat span when
      // whole-vector rows would overlap (narrow maps)
      const bool rows = wp >= rwp;
      const int64_t nrow = rows ? rh : 1, span = rows ? rwp : ((rh - 1) * wp + rw + W - 1) / W * W;
      const float* r0 = s.ptr[members[0]];
      for (int64_t ry = 0; ry < nrow; ++ry)
        for (int64_t cx = 0; cx < span; cx += W) storev(m + ry * wp + cx, loadv(r0 + ry * wp + cx));
      for (int i = 1; i < size; ++i) {
        const float* r = s.ptr[members[i]];
        for (int64_t ry = 0; ry < nrow; ++ry)
          for (int64_t cx = 0; cx < span; cx += W)
            storev(m + ry * wp + cx, loadv(m + ry * wp + cx) + loadv(r + ry * wp + cx));
      }
      const float inv = 1.f / static_cast<float>(size);
      for (int64_t ry = 0; ry < nrow; ++ry)
        for (int64_t cx = 0; cx < span; cx += W) storev(m + ry * wp + cx, loadv(m + ry * wp + cx) * inv);
      // scaled: member i's least-squares scale a_i = <x_i, m> / <m, m>; the member with the largest scale
      // (the pivot) is moved first, the mean region is multiplied by its a_p and the other members' filter
      // rows are weighted by a_i / a_p, so that the product equals m * sum_i a_i w_i
      float* beta = s.beta.data() + s.first[b];
      std::fill(beta, beta + size, 1.f);
      if (scaled) {
        // <a, m> over the region: whole-vector rows masked to the region's rw columns where the rows are
        // one vector wide, else element by element
        const bool vector_rows = rows && rwp == W;
        auto dot_m = [&](const float* a) {
          if (vector_rows) {
            vec acc{};
            for (int64_t ry = 0; ry < rh; ++ry) acc += loadv(a + ry * wp) * loadv(m + ry * wp) * lanes;
            float sum = 0.f;
            for (int l = 0; l < W; ++l) sum += acc[l];
            return sum;
          }
          float sum = 0.f;
          for (int64_t ry = 0; ry < rh; ++ry)
            for (int64_t rx = 0; rx < rw; ++rx) sum += a[ry * wp + rx] * m[ry * wp + rx];
          return sum;
        };
        const float mm = dot_m(m);
        if (mm > 0.f) {
          int pivot = 0;
          for (int i = 0; i < size; ++i) {
            beta[i] = dot_m(s.ptr[members[i]]) / mm;
            if (beta[i] > beta[pivot]) pivot = i;
          }
          std::swap(members[0], members[pivot]);
          std::swap(beta[0], beta[pivot]);
          const float ap = beta[0];
          for (int i = 1; i < size; ++i) beta[i] /= ap;  // beta[0] (the pivot's) is not read
          for (int64_t ry = 0; ry < nrow; ++ry)
            for (int64_t cx = 0; cx < span; cx += W) storev(m + ry * wp + cx, loadv(m + ry * wp + cx) * ap);
        }  // else a flat bucket (mean region all zero): a plain sum
      }
      if (!split_gemm) sum_rows(f, WT, ps, kk, 0, o, members, size, beta);  // else by each thread's channels
    }
    STAGE(kMerge)
    // 5. implicit im2col tables: pixel q of bucket b reads regs[b][base[q] + koff[ky * kw + kx]]
    const int64_t pixels = vh * vw;
    for (int64_t py = 0; py < vh; ++py)
      for (int64_t px = 0; px < vw; ++px) s.base[py * vw + px] = static_cast<int>(py * sh * wp + px * sw);
    for (int64_t ky = 0; ky < kh; ++ky)
      for (int64_t kx = 0; kx < kw; ++kx) s.off[ky * kw + kx] = static_cast<int>(ky * wp + kx);
    STAGE(kIm2col)
    // 6. y[pixel][0..O) = bias + merged channels (pixels, depth) @ merged filters (depth, O), in place
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
                   s.dst.data(), B);
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
        Claim& c = claims[(b0 + k) % shares];
        for (int64_t t = c.next.fetch_add(1, std::memory_order_relaxed); t < c.end;
             t = c.next.fetch_add(1, std::memory_order_relaxed))
          tile(t, s);
      }
    });
  }
  STAGE(kLoop)
  // per image: sum over tiles of buckets x valid output pixels, and of buckets (FLOPs accounting)
  auto sums = torch::empty({n, 2}, x.options().dtype(torch::kDouble));
  double* S = sums.data_ptr<double>();
  for (int64_t img = 0; img < n; ++img) {
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
  auto out = y.permute({0, 3, 1, 2});
  STAGE(kFinish)
  return {out, groups, sums};
}

// Stage totals in seconds since the last reset (all zero unless built with -DHASTE_PROFILE).
std::vector<double> stage_seconds(bool reset) {
  std::vector<double> out;
  for (auto& v : stage_ns) out.push_back((reset ? v.exchange(0) : v.load()) * 1e-9);
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // the GIL is released while the kernel runs, as ATen ops do: other Python threads (a server's event
  // loop decoding the next requests) keep running during inference
  m.def("haste_conv2d_cpu", &haste_conv2d_cpu, "Fused HASTE convolution (CPU)",
        py::call_guard<py::gil_scoped_release>());
  m.def("stage_seconds", &stage_seconds, "per-stage seconds: region, hash, bucket, merge, im2col, filters, gemm, prepare, finish");
}
