//! The hot loops of the coordinator's ingest: decoding, sums of squares and weighted
//! folds over long vectors. Each is written plainly so that it vectorises, and built a
//! second time for AVX2 + FMA, chosen at run time: the f32 -> f64 widening makes these
//! loops compute-bound on baseline x86-64.

/// f32 updates fused into one pass over an accumulator block.
pub(crate) const FUSE: usize = 4;

/// Accumulator elements per cache block: 1 MiB of f64, which stays in L2 while the
/// batch's updates stream past it (measured fastest of 2K, 16K and 128K elements).
pub(crate) const BLOCK: usize = 131072;

/// Lanes of independent partial sums: a single running sum is one long dependency
/// chain (about four cycles an element); eight let the loop vectorise.
const LANES: usize = 8;

/// Values decoded at a time before their squares are summed: small enough to stay in
/// L1, so the wire bytes are read once.
const DECODE_CHUNK: usize = 1024;

/// True when the AVX2 + FMA builds may run (checked once, cached by std).
#[cfg(target_arch = "x86_64")]
#[inline]
fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// A value an update carries on the wire: little-endian, `BYTES` bytes.
pub trait WireFloat: Copy + Default + Into<f64> + Send + Sync {
    const BYTES: usize;
    /// Decodes one value from exactly `BYTES` bytes.
    fn from_le(bytes: &[u8]) -> Self;
    /// A spare buffer of `len` values to decode into, if one is kept.
    fn spare(_len: usize) -> Option<Vec<Self>> {
        None
    }
}

impl WireFloat for f32 {
    const BYTES: usize = 4;
    #[inline(always)]
    fn from_le(b: &[u8]) -> Self {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
    fn spare(len: usize) -> Option<Vec<Self>> {
        crate::buffers::take_f32(len)
    }
}

impl WireFloat for f64 {
    const BYTES: usize = 8;
    #[inline(always)]
    fn from_le(b: &[u8]) -> Self {
        f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }
}

/// Sum of squares in f64, over `LANES` partial sums; NaN or infinite if any value is.
pub(crate) fn sum_of_squares<T: Copy + Into<f64>>(values: &[T]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn fast<T: Copy + Into<f64>>(values: &[T]) -> f64 {
            sum_of_squares_lanes(values)
        }
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { fast(values) };
    }
    sum_of_squares_lanes(values)
}

#[inline(always)]
fn sum_of_squares_lanes<T: Copy + Into<f64>>(values: &[T]) -> f64 {
    let mut lanes = [0.0f64; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (lane, &v) in lanes.iter_mut().zip(c) {
            let v: f64 = v.into();
            *lane += v * v;
        }
    }
    let tail: f64 = rest.iter().map(|&v| v.into() * v.into()).sum();
    lanes.iter().sum::<f64>() + tail
}

/// Decodes `out.len()` values from `bytes` into `out` and returns their sum of
/// squares: each L1-sized chunk is decoded, then summed while it is still in cache.
pub(crate) fn decode_sum_of_squares<T: WireFloat>(out: &mut [T], bytes: &[u8]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn fast<T: WireFloat>(out: &mut [T], bytes: &[u8]) -> f64 {
            decode_sum_of_squares_chunks(out, bytes)
        }
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { fast(out, bytes) };
    }
    decode_sum_of_squares_chunks(out, bytes)
}

#[inline(always)]
fn decode_sum_of_squares_chunks<T: WireFloat>(out: &mut [T], bytes: &[u8]) -> f64 {
    let mut total = 0.0;
    for (o, b) in out
        .chunks_mut(DECODE_CHUNK)
        .zip(bytes.chunks(DECODE_CHUNK * T::BYTES))
    {
        for (v, raw) in o.iter_mut().zip(b.chunks_exact(T::BYTES)) {
            *v = T::from_le(raw);
        }
        total += sum_of_squares_lanes(o);
    }
    total
}

/// `acc += w * x`.
pub(crate) fn axpy_dispatch<T: Copy + Into<f64>>(acc: &mut [f64], x: &[T], w: f64) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn fast<T: Copy + Into<f64>>(acc: &mut [f64], x: &[T], w: f64) {
            axpy(acc, x, w)
        }
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { fast(acc, x, w) };
    }
    axpy(acc, x, w)
}

#[inline(always)]
fn axpy<T: Copy + Into<f64>>(acc: &mut [f64], x: &[T], w: f64) {
    for (a, &v) in acc.iter_mut().zip(x) {
        *a += w * v.into();
    }
}

/// `acc += sum_k w_k * x_k` over a group of `FUSE` f32 updates.
pub(crate) fn axpy_fused_dispatch(acc: &mut [f64], group: &[(&[f32], f64)]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn fast(acc: &mut [f64], group: &[(&[f32], f64)]) {
            axpy_fused(acc, group)
        }
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { fast(acc, group) };
    }
    axpy_fused(acc, group)
}

/// `acc += sum_k w_k * x_k` over `FUSE` updates in one pass. The additions happen in
/// the same order as `FUSE` separate [`axpy`] calls, so the result is bit-identical.
#[inline(always)]
fn axpy_fused(acc: &mut [f64], group: &[(&[f32], f64)]) {
    let n = acc.len();
    let [(x0, w0), (x1, w1), (x2, w2), (x3, w3)]: [(&[f32], f64); FUSE] = match group.try_into() {
        Ok(g) => g,
        Err(_) => return group.iter().for_each(|&(x, w)| axpy(acc, x, w)),
    };
    let (x0, x1, x2, x3) = (&x0[..n], &x1[..n], &x2[..n], &x3[..n]);
    for i in 0..n {
        let mut s = acc[i];
        s += w0 * x0[i] as f64;
        s += w1 * x1[i] as f64;
        s += w2 * x2[i] as f64;
        s += w3 * x3[i] as f64;
        acc[i] = s;
    }
}

/// `dst = start + sum_k w_k * x_k` over `K` updates still in their little-endian f32
/// wire bytes, where `start` is `src` (or `dst` itself when None); returns each
/// update's sum of squares. One pass: the bytes are read once, for the fold and for
/// the check. The additions are in the order of `K` separate [`axpy`] calls on the
/// decoded values, so the result is bit-identical to decoding and then folding.
pub(crate) fn fold_wire_dispatch<const K: usize>(
    dst: &mut [f64],
    src: Option<&[f64]>,
    xs: [&[u8]; K],
    ws: [f64; K],
) -> [f64; K] {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { fold_wire_avx2(dst, src, xs, ws) };
    }
    fold_wire(dst, src, xs, ws)
}

/// [`fold_wire`] written with AVX2 intrinsics: the compiler's own vectorisation of
/// the fused loop rebuilt each vector from single floats and ran at half the speed.
/// Products and sums are rounded separately (no FMA), as in [`axpy`], so the sum is
/// the same bit for bit; only the squares use FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fold_wire_avx2<const K: usize>(
    dst: &mut [f64],
    src: Option<&[f64]>,
    xs: [&[u8]; K],
    ws: [f64; K],
) -> [f64; K] {
    use std::arch::x86_64::*;
    let n = dst.len();
    let whole = n - n % 4;
    assert!(xs.iter().all(|x| x.len() >= 4 * n) && src.is_none_or(|s| s.len() >= n));
    // Both from one raw pointer when folding in place: reads and writes alias.
    let out = dst.as_mut_ptr();
    let start = src.map_or(out.cast_const(), |s| s.as_ptr());
    let w = ws.map(|w| _mm256_set1_pd(w));
    let mut q = [_mm256_setzero_pd(); K];
    let mut i = 0;
    while i < whole {
        // SAFETY: i + 4 <= n, and every slice read holds at least n values (asserted).
        let mut s = _mm256_loadu_pd(start.add(i));
        for k in 0..K {
            let v = _mm256_cvtps_pd(_mm_loadu_ps(xs[k].as_ptr().add(4 * i).cast()));
            s = _mm256_add_pd(s, _mm256_mul_pd(w[k], v));
            q[k] = _mm256_fmadd_pd(v, v, q[k]);
        }
        _mm256_storeu_pd(out.add(i), s);
        i += 4;
    }
    let tail = fold_wire(
        &mut dst[whole..],
        src.map(|s| &s[whole..n]),
        xs.map(|x| &x[4 * whole..]),
        ws,
    );
    std::array::from_fn(|k| {
        let mut lanes = [0.0f64; 4];
        _mm256_storeu_pd(lanes.as_mut_ptr(), q[k]);
        lanes.iter().sum::<f64>() + tail[k]
    })
}

#[inline(always)]
fn fold_wire<const K: usize>(
    dst: &mut [f64],
    src: Option<&[f64]>,
    xs: [&[u8]; K],
    ws: [f64; K],
) -> [f64; K] {
    let n = dst.len();
    let whole = n - n % LANES;
    let xs = xs.map(|x| &x[..n * 4]);
    let mut q = [[0.0f64; LANES]; K];
    let (body, tail) = dst.split_at_mut(whole);
    let chunks = body.chunks_exact_mut(LANES).enumerate();
    match src {
        Some(src) => {
            for ((c, a), s) in chunks.zip(src[..whole].chunks_exact(LANES)) {
                wire_chunk(a, lanes_of(s), wire_lanes(&xs, c), &ws, &mut q);
            }
        }
        None => {
            for (c, a) in chunks {
                let start = lanes_of(a);
                wire_chunk(a, start, wire_lanes(&xs, c), &ws, &mut q);
            }
        }
    }
    for (j, a) in tail.iter_mut().enumerate() {
        let i = whole + j;
        let mut s = src.map_or(*a, |src| src[i]);
        for k in 0..K {
            let v = f32::from_le(&xs[k][4 * i..4 * i + 4]) as f64;
            s += ws[k] * v;
            q[k][0] += v * v;
        }
        *a = s;
    }
    q.map(|lanes| lanes.iter().sum())
}

/// `LANES` accumulator values (a whole chunk; the zero fallback never happens).
#[inline(always)]
fn lanes_of(s: &[f64]) -> [f64; LANES] {
    s.try_into().unwrap_or([0.0; LANES])
}

/// Chunk `c` of each update's bytes.
#[inline(always)]
fn wire_lanes<'a, const K: usize>(xs: &[&'a [u8]; K], c: usize) -> [&'a [u8]; K] {
    std::array::from_fn(|k| &xs[k][c * 4 * LANES..(c + 1) * 4 * LANES])
}

/// One chunk of `LANES` values of each update, decoded whole (one load each) and
/// folded update after update, so each element sums in the order of separate axpys.
#[inline(always)]
fn wire_chunk<const K: usize>(
    a: &mut [f64],
    start: [f64; LANES],
    bytes: [&[u8]; K],
    ws: &[f64; K],
    q: &mut [[f64; LANES]; K],
) {
    let mut s = start;
    for k in 0..K {
        let v = decode_lanes(bytes[k]);
        for l in 0..LANES {
            s[l] += ws[k] * v[l];
            q[k][l] += v[l] * v[l];
        }
    }
    a.copy_from_slice(&s);
}

/// `LANES` little-endian f32 values, widened: one unaligned load (the byte-by-byte
/// form did not vectorise inside the fused loop).
#[inline(always)]
fn decode_lanes(b: &[u8]) -> [f64; LANES] {
    let b = &b[..4 * LANES];
    // SAFETY: `b` holds exactly 4 * LANES bytes, read without an alignment
    // requirement, and every bit pattern is a valid u32.
    let raw: [u32; LANES] = unsafe { std::ptr::read_unaligned(b.as_ptr().cast()) };
    raw.map(|bits| f32::from_bits(u32::from_le(bits)) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sum_of_squares_in_lanes_matches_the_plain_sum_and_keeps_non_finite_values() {
        let v: Vec<f32> = (0..1001).map(|i| (i as f32 * 0.37).sin()).collect();
        let plain: f64 = v.iter().map(|&x| x as f64 * x as f64).sum();
        assert!((sum_of_squares(&v) - plain).abs() <= 1e-12 * plain);
        assert!(sum_of_squares(&[1.0, f64::NAN, 2.0]).is_nan());
        assert_eq!(sum_of_squares(&[3.0f64, 4.0]), 25.0);
    }

    #[test]
    fn decoding_with_the_sum_of_squares_decodes_every_value_and_sums_them() {
        for len in [
            0,
            1,
            7,
            DECODE_CHUNK,
            DECODE_CHUNK + 1,
            3 * DECODE_CHUNK + 5,
        ] {
            let v: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            let mut out = vec![0.0f32; len];
            let sum = decode_sum_of_squares(&mut out, &bytes);
            assert_eq!(out, v, "length {len}");
            let plain: f64 = v.iter().map(|&x| x as f64 * x as f64).sum();
            assert!(
                (sum - plain).abs() <= 1e-12 * plain.max(1.0),
                "length {len}"
            );
            let w: Vec<f64> = v.iter().map(|&x| x as f64).collect();
            let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
            let mut out = vec![0.0f64; len];
            decode_sum_of_squares(&mut out, &bytes);
            assert_eq!(out, w);
        }
        let bytes: Vec<u8> = [1.0f32, f32::INFINITY]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert!(decode_sum_of_squares(&mut [0.0f32; 2], &bytes).is_infinite());
    }
}
