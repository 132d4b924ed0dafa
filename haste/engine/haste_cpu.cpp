// Fused HASTE convolution for CPU: one pass per (image, tile), parallel over tiles.
//
// For every P x P output tile: take the (P-1)*S+k input region of every channel (read in place for
// interior tiles, copied with zeros for tiles at the border), project it on the first L hyperplanes
// (a sparse weighted sum over the non-zero entries: additions only for ternary planes), centre the
// projections across channels, turn signs into integer codes, sort the codes into buckets, average
// the inputs and sum the filter rows of every bucket, and multiply the merged channels with the
// merged filters for the tile's valid output pixels only, in a register-blocked micro-kernel that
// reads the merged regions in place (implicit im2col). The codes and buckets are those of the
// reference implementation (haste/functional.py).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <numeric>
#include <vector>

namespace {

// Stage timers (nanoseconds summed over threads), compiled in only with -DHASTE_PROFILE.
enum Stage { kRegion, kHash, kBucket, kMerge, kIm2col, kGemm, kWrite, kStages };
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

typedef float v16 __attribute__((vector_size(64)));  // AVX-512: one register; AVX2: two

inline v16 load16(const float* p) {
  v16 v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}

inline void store16(float* p, v16 v) { __builtin_memcpy(p, &v, sizeof(v)); }

// out[q][oc..oc+16) = sum_j a[base[q] + off[j]] * f[j][oc..oc+16) for PB pixels q.
template <int PB>
inline void micro(int64_t k, int64_t o, int64_t oc, const float* a, const int* base, const int* off,
                  const float* f, float* out) {
  v16 acc[PB];
  const float* ap[PB];
  for (int q = 0; q < PB; ++q) {
    acc[q] = v16{};
    ap[q] = a + base[q];
  }
  for (int64_t j = 0; j < k; ++j) {
    const v16 fv = load16(f + j * o + oc);
    const int oj = off[j];
    for (int q = 0; q < PB; ++q) acc[q] += ap[q][oj] * fv;
  }
  for (int q = 0; q < PB; ++q) store16(out + q * o + oc, acc[q]);
}

// out (np, o) = A (np, k) @ f (k, o) with A[q][j] = a[base[q] + off[j]] (implicit im2col).
void gemm_implicit(int64_t np, int64_t k, int64_t o, const float* a, const int* base, const int* off,
                   const float* f, float* out) {
  const int64_t o16 = o / 16 * 16;
  for (int64_t p0 = 0; p0 < np; p0 += 8) {
    const int64_t pb = std::min<int64_t>(8, np - p0);
    const int* bp = base + p0;
    float* op = out + p0 * o;
    for (int64_t oc = 0; oc < o16; oc += 16) {
      switch (pb) {
        case 8: micro<8>(k, o, oc, a, bp, off, f, op); break;
        case 7: micro<7>(k, o, oc, a, bp, off, f, op); break;
        case 6: micro<6>(k, o, oc, a, bp, off, f, op); break;
        case 5: micro<5>(k, o, oc, a, bp, off, f, op); break;
        case 4: micro<4>(k, o, oc, a, bp, off, f, op); break;
        case 3: micro<3>(k, o, oc, a, bp, off, f, op); break;
        case 2: micro<2>(k, o, oc, a, bp, off, f, op); break;
        default: micro<1>(k, o, oc, a, bp, off, f, op); break;
      }
    }
    for (int64_t q = 0; q < pb; ++q)  // output channels beyond a multiple of 16
      for (int64_t oc = o16; oc < o; ++oc) {
        float acc = 0.f;
        for (int64_t j = 0; j < k; ++j) acc += a[bp[q] + off[j]] * f[j * o + oc];
        op[q * o + oc] = acc;
      }
  }
}

template <typename T>
void grow(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(n);
}

struct Scratch {
  std::vector<float> region, proj, merged, filters, out;
  std::vector<int64_t> codes;
  std::vector<int> order, bucket, count, base, off;
  std::vector<const float*> ptr;
};

// Projections of one channel region on L <= 16*NV planes at once: proj[0..16*NV) in NV registers,
// one broadcast multiply-add per region pixel. rt is the planes transposed: (rh*rw, 16*NV), zero-padded.
template <int NV>
inline void project(const float* r, int64_t rs, int64_t rh, int64_t rw, const float* rt, float* proj) {
  v16 acc[NV];
  for (int v = 0; v < NV; ++v) acc[v] = v16{};
  for (int64_t ry = 0; ry < rh; ++ry)
    for (int64_t rx = 0; rx < rw; ++rx) {
      const float val = r[ry * rs + rx];
      const float* row = rt + (ry * rw + rx) * 16 * NV;
      for (int v = 0; v < NV; ++v) acc[v] += val * load16(row + 16 * v);
    }
  for (int v = 0; v < NV; ++v) store16(proj + 16 * v, acc[v]);
}

}  // namespace

// x: (N, C, H, W) float contiguous. wt: (C, kh*kw, O) float contiguous (weight permuted).
// planes: (L, rh*rw) float contiguous. bias: (O,) or empty.
// Returns (y (N, O, Hout, Wout), groups (N*Th*Tw,) int32).
std::vector<torch::Tensor> haste_conv2d_cpu(torch::Tensor x, torch::Tensor wt, torch::Tensor bias,
                                            torch::Tensor planes, int64_t kh, int64_t kw, int64_t sh,
                                            int64_t sw, int64_t pad_l, int64_t pad_r, int64_t pad_t,
                                            int64_t pad_b, int64_t patch) {
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous() && x.scalar_type() == torch::kFloat, "x: contiguous float NCHW");
  TORCH_CHECK(wt.is_contiguous() && planes.is_contiguous(), "wt and planes must be contiguous");
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t kk = kh * kw, o = wt.size(2), L = planes.size(0);
  const int64_t hout = (h + pad_t + pad_b - kh) / sh + 1, wout = (w + pad_l + pad_r - kw) / sw + 1;
  TORCH_CHECK(hout >= 1 && wout >= 1, "input smaller than the kernel");
  TORCH_CHECK(wt.size(0) == c && wt.size(1) == kk, "wt must be (C, kh*kw, O)");
  const int64_t rh = (patch - 1) * sh + kh, rw = (patch - 1) * sw + kw, d = rh * rw;
  TORCH_CHECK(planes.size(1) == d, "planes must have region_h * region_w columns");
  TORCH_CHECK(L >= 1 && L <= 62, "1..62 hyperplanes");
  TORCH_CHECK(c >= 1 && patch >= 1, "empty input or patch");
  const int64_t th = (hout + patch - 1) / patch, tw = (wout + patch - 1) / patch, tiles = th * tw;
  auto y = torch::empty({n, o, hout, wout}, x.options());
  auto groups = torch::empty({n * tiles}, x.options().dtype(torch::kInt));
  const float* X = x.data_ptr<float>();
  const float* WT = wt.data_ptr<float>();
  const float* B = bias.numel() ? bias.data_ptr<float>() : nullptr;
  float* Y = y.data_ptr<float>();
  int* G = groups.data_ptr<int>();
  // planes transposed to (d, 16*nv), zero-padded beyond L
  const int nv = static_cast<int>((L + 15) / 16);
  std::vector<float> rt(d * 16 * nv, 0.f);
  const float* R = planes.data_ptr<float>();
  for (int64_t l = 0; l < L; ++l)
    for (int64_t i = 0; i < d; ++i) rt[i * 16 * nv + l] = R[l * d + i];

  at::parallel_for(0, n * tiles, 1, [&](int64_t begin, int64_t end) {
    // Per-thread buffers kept across calls: they only grow, and are never zero-filled in bulk.
    thread_local Scratch s;
    grow(s.region, c * d);
    grow(s.proj, c * 16 * nv);
    grow(s.codes, c);
    grow(s.order, c);
    grow(s.bucket, c);
    grow(s.count, c);
    grow(s.ptr, c);
    grow(s.merged, c * d);
    grow(s.filters, c * kk * o);
    grow(s.out, patch * patch * o);
    grow(s.base, patch * patch);
    grow(s.off, c * kk);
    float mean[64];
    static_assert(sizeof(v16) == 64, "v16 is 16 floats");
    for (int64_t t = begin; t < end; ++t) {
      STAGE_START
      const int64_t img = t / tiles, ty = (t % tiles) / tw, tx = t % tw;
      const int64_t oy0 = ty * patch, ox0 = tx * patch;
      const int64_t vh = std::min(patch, hout - oy0), vw = std::min(patch, wout - ox0);
      const int64_t iy0 = oy0 * sh - pad_t, ix0 = ox0 * sw - pad_l;
      // 1. region of every channel: in place when inside the image, else a zero-padded copy
      const float* xi = X + img * c * h * w;
      const bool inside = iy0 >= 0 && ix0 >= 0 && iy0 + rh <= h && ix0 + rw <= w;
      const int64_t rs = inside ? w : rw;
      for (int64_t ch = 0; ch < c; ++ch) {
        const float* xc = xi + ch * h * w;
        if (inside) {
          s.ptr[ch] = xc + iy0 * w + ix0;
          continue;
        }
        float* r = s.region.data() + ch * d;
        s.ptr[ch] = r;
        for (int64_t ry = 0; ry < rh; ++ry) {
          const int64_t iy = iy0 + ry;
          float* row = r + ry * rw;
          const int64_t lo = std::max<int64_t>(0, -ix0), hi = std::min<int64_t>(rw, w - ix0);
          if (iy < 0 || iy >= h || lo >= hi) {
            std::fill(row, row + rw, 0.f);
            continue;
          }
          std::fill(row, row + lo, 0.f);
          std::memcpy(row + lo, xc + iy * w + ix0 + lo, (hi - lo) * sizeof(float));
          std::fill(row + hi, row + rw, 0.f);
        }
      }
      STAGE(kRegion)
      // 2. projections of every channel, centred across channels; codes from the signs
      float* proj = s.proj.data();
      for (int64_t ch = 0; ch < c; ++ch) {
        switch (nv) {
          case 1: project<1>(s.ptr[ch], rs, rh, rw, rt.data(), proj + 16 * ch); break;
          case 2: project<2>(s.ptr[ch], rs, rh, rw, rt.data(), proj + 32 * ch); break;
          case 3: project<3>(s.ptr[ch], rs, rh, rw, rt.data(), proj + 48 * ch); break;
          default: project<4>(s.ptr[ch], rs, rh, rw, rt.data(), proj + 64 * ch); break;
        }
      }
      std::fill(mean, mean + 16 * nv, 0.f);
      for (int64_t ch = 0; ch < c; ++ch)
        for (int64_t l = 0; l < L; ++l) mean[l] += s.proj[ch * 16 * nv + l];
      for (int64_t l = 0; l < L; ++l) mean[l] /= static_cast<float>(c);
      for (int64_t ch = 0; ch < c; ++ch) {
        const float* pc = s.proj.data() + ch * 16 * nv;
        int64_t code = 0;
        for (int64_t l = 0; l < L; ++l)
          if (pc[l] - mean[l] > 0.f) code |= (int64_t{1} << l);
        s.codes[ch] = code;
      }
      STAGE(kHash)
      // 3. buckets numbered in increasing code order (as the reference)
      std::iota(s.order.begin(), s.order.begin() + c, 0);
      std::stable_sort(s.order.begin(), s.order.begin() + c,
                       [&](int a, int b) { return s.codes[a] < s.codes[b]; });
      int g = -1;
      for (int64_t i = 0; i < c; ++i) {
        const int ch = s.order[i];
        if (i == 0 || s.codes[ch] != s.codes[s.order[i - 1]]) ++g;
        s.bucket[ch] = g;
      }
      const int ng = g + 1;
      G[t] = ng;
      STAGE(kBucket)
      // 4. merged inputs (mean, layout (g, rh, rw)) and merged filter rows (sum, layout (g*kk, O))
      std::fill(s.count.begin(), s.count.begin() + ng, 0);
      for (int64_t ch = 0; ch < c; ++ch) {
        const int b = s.bucket[ch];
        float* m = s.merged.data() + b * d;
        const float* r = s.ptr[ch];
        float* f = s.filters.data() + b * kk * o;
        const float* wc = WT + ch * kk * o;
        if (s.count[b]++ == 0) {  // first member: copy
          for (int64_t ry = 0; ry < rh; ++ry) std::memcpy(m + ry * rw, r + ry * rs, rw * sizeof(float));
          std::memcpy(f, wc, kk * o * sizeof(float));
        } else {
          for (int64_t ry = 0; ry < rh; ++ry)
            for (int64_t rx = 0; rx < rw; ++rx) m[ry * rw + rx] += r[ry * rs + rx];
          for (int64_t i = 0; i < kk * o; ++i) f[i] += wc[i];
        }
      }
      for (int b = 0; b < ng; ++b) {
        if (s.count[b] == 1) continue;
        const float inv = 1.f / static_cast<float>(s.count[b]);
        float* m = s.merged.data() + b * d;
        for (int64_t i = 0; i < d; ++i) m[i] *= inv;
      }
      STAGE(kMerge)
      // 5. implicit im2col tables: pixel q reads merged[base[q] + off[j]] for depth j = (g, ky, kx)
      const int64_t pixels = vh * vw, depth = ng * kk;
      for (int64_t py = 0; py < vh; ++py)
        for (int64_t px = 0; px < vw; ++px) s.base[py * vw + px] = static_cast<int>(py * sh * rw + px * sw);
      for (int b = 0; b < ng; ++b)
        for (int64_t ky = 0; ky < kh; ++ky)
          for (int64_t kx = 0; kx < kw; ++kx) s.off[(b * kh + ky) * kw + kx] = static_cast<int>(b * d + ky * rw + kx);
      STAGE(kIm2col)
      // 6. out (pixels, O) = merged channels (pixels, depth) @ merged filters (depth, O)
      gemm_implicit(pixels, depth, o, s.merged.data(), s.base.data(), s.off.data(), s.filters.data(), s.out.data());
      STAGE(kGemm)
      // 7. write the tile with the bias, one output channel at a time (contiguous rows)
      float* yi = Y + img * o * hout * wout;
      for (int64_t oc = 0; oc < o; ++oc) {
        const float bv = B ? B[oc] : 0.f;
        float* yo = yi + oc * hout * wout + oy0 * wout + ox0;
        for (int64_t py = 0; py < vh; ++py)
          for (int64_t px = 0; px < vw; ++px) yo[py * wout + px] = s.out[(py * vw + px) * o + oc] + bv;
      }
      STAGE(kWrite)
    }
  });
  return {y, groups};
}

// Stage totals in seconds since the last reset (all zero unless built with -DHASTE_PROFILE).
std::vector<double> stage_seconds(bool reset) {
  std::vector<double> out;
  for (auto& v : stage_ns) out.push_back((reset ? v.exchange(0) : v.load()) * 1e-9);
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("haste_conv2d_cpu", &haste_conv2d_cpu, "Fused HASTE convolution (CPU)");
  m.def("stage_seconds", &stage_seconds, "per-stage seconds: region, hash, bucket, merge, im2col, gemm, write");
}
