//! Q4_K and Q6_K tiles' prompt products with AMX (Intel Xeon from Sapphire Rapids on), whose
//! tile registers hold 16 rows of 64 bytes and whose `tdpbssd` multiplies 16 activation rows by
//! 64 values of 16 weight rows at once, the work of 256 `vpdpbusd`s of the AVX-512 kernel.
//!
//! A tile product sums over all its 64 values, but a group's products must be scaled (Q4_K: a
//! 6-bit scale per 32 values; Q6_K: a signed 8-bit one per 16) before they are summed, and a
//! value times its scale (up to 15 × 63, or 32 × 128) does not fit in a byte. So each column of
//! tiles is unpacked, block by block, into the values times their scales, split into their low
//! bits and the rest (`2^bits * high + low`), and the two halves are multiplied apart, each over
//! a whole super-block: `2^bits * high + low` is then exactly the integer sum of every group's
//! products times its scale that the AVX-512 kernel computes, and what follows (Q4_K's
//! minimums, the conversion to floats) is that kernel's own code. The results are the same bits,
//! so the answers are the same and a cached prefix stays valid whichever path computed it.
//!
//! Rust has no stable AMX intrinsics, so the tile instructions are written as assembly.

use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::Cell;
use std::sync::OnceLock;

use super::{
    q4k_block_sum, q4k_group_scales, q6k_block_sum, ActSuperBlock, Q4kSumFactors, Q4kTile, Q6kTile,
    Tiled, Q4K, Q6K, TILE,
};

/// Activation rows one pass over a column of tiles computes: a tile's most rows.
pub(super) const ACT_ROWS: usize = 16;

/// Fewest activation rows worth AMX's passes: each unpacks a column's blocks once for all rows,
/// which fewer rows do not repay. Three interleaved rounds of `tqa bench --prefill
/// 16,32,48,64,80` on the 1.5B model, AVX-512 / AMX, medians: 140.5 / 99.7, 176.7 / 168.8,
/// 189.3 / 206.2, 193.4 / 249.4, 203.8 / 251.6 tok/s.
pub(super) const MIN_ROWS: usize = 48;

/// Values in a Q4_K group, the depth of one tile product.
const GROUP: usize = 32;

/// Whether this CPU has AMX's integer tiles and Linux lets this process use them. Linux hands a
/// process the tiles' 8 KB of register state only when asked (`arch_prctl`), once.
pub(super) fn run_here() -> bool {
    static PERMITTED: OnceLock<bool> = OnceLock::new();
    *PERMITTED.get_or_init(|| has_int8_tiles() && linux_permits_tiles())
}

fn has_int8_tiles() -> bool {
    const AMX_TILE: u32 = 1 << 24;
    const AMX_INT8: u32 = 1 << 25;
    let features = __cpuid_count(7, 0);
    features.edx & (AMX_TILE | AMX_INT8) == AMX_TILE | AMX_INT8
}

#[cfg(target_os = "linux")]
fn linux_permits_tiles() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a request for a process-wide permission; it touches no memory of ours.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn linux_permits_tiles() -> bool {
    false
}

/// Sets this thread's tile registers' shapes (palette 1), once: all 8 hold 16 rows of 64 bytes
/// (64 activations of 16 rows; 16 steps of 4 values of 16 weight rows; 16 × 16 products). Setting
/// them takes thousands of cycles, a quarter of the products' time when it was done for every
/// pass; the shapes stay set for the thread's life (Linux saves and restores them with it).
///
/// # Safety
/// [`run_here`] holds.
unsafe fn configure_this_thread() {
    thread_local! {
        static CONFIGURED: Cell<bool> = const { Cell::new(false) };
    }
    if CONFIGURED.get() {
        return;
    }
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);
    let mut config = TileConfig([0; 64]);
    config.0[0] = 1;
    for tmm in 0..8 {
        config.0[16 + 2 * tmm..18 + 2 * tmm].copy_from_slice(&64u16.to_le_bytes());
        config.0[48 + tmm] = ACT_ROWS as u8;
    }
    asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly));
    CONFIGURED.set(true);
}

/// A block type whose tiles AMX multiplies: each value times its scale, which does not fit in a
/// byte, is split into its low bits and the rest (`2^LOW_BITS * high + low`), and the two halves
/// are multiplied apart, each over a whole super-block. The integer sums are exactly those of the
/// AVX-512 kernel, so the block's products are turned into floats by that kernel's own code.
pub(super) trait AmxTiled: Tiled {
    /// Bits of a scaled value's low half.
    const LOW_BITS: u32;

    /// The tile's scaled values, split, into `weights`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BW.
    unsafe fn scale(tile: &Self::Tile, weights: &mut ScaledWeights);

    /// What [`Self::block_sum`] reads of a tile: read once for all activation rows, since
    /// reading it again for each row held the passes up.
    type SumFactors;

    /// The tile's [`Self::SumFactors`].
    ///
    /// # Safety
    /// The CPU has AVX-512 F.
    unsafe fn sum_factors(tile: &Self::Tile) -> Self::SumFactors;

    /// `sum` plus a super-block's part of an activation row's 16 products, given its `scaled`
    /// products (the AVX-512 kernel's own code).
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and VNNI.
    unsafe fn block_sum(
        factors: &Self::SumFactors,
        act: &ActSuperBlock,
        scaled: __m512i,
        sum: __m512,
    ) -> __m512;
}

/// A tile's super-block of weights, each value times its scale and split into two bytes (see
/// [`AmxTiled`]), in tile rows: `[quarter][step][weight row]`, where a quarter's 64 values make
/// 16 steps of 4, a byte each.
#[repr(C, align(64))]
pub(super) struct ScaledWeights {
    low: [[[u8; 4 * TILE]; 2 * GROUP / 4]; 4],
    high: [[[u8; 4 * TILE]; 2 * GROUP / 4]; 4],
}

impl ScaledWeights {
    /// Stores one tile row of scaled values, given as 16-bit lanes (`even` the row's even bytes,
    /// `odd` its odd ones), split into their low `BITS` bits and the rest (an arithmetic shift,
    /// so Q6_K's negative values keep their sign).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn put<const BITS: u32>(
        &mut self,
        quarter: usize,
        row: usize,
        even: __m512i,
        odd: __m512i,
    ) {
        let low_bits = _mm512_set1_epi16((1 << BITS) - 1);
        let even_bytes = _mm512_set1_epi16(0xff);
        let bytes = |even: __m512i, odd: __m512i| {
            _mm512_or_si512(
                _mm512_and_si512(even, even_bytes),
                _mm512_slli_epi16::<8>(odd),
            )
        };
        let low = bytes(
            _mm512_and_si512(even, low_bits),
            _mm512_and_si512(odd, low_bits),
        );
        let high = bytes(
            _mm512_srai_epi16::<BITS>(even),
            _mm512_srai_epi16::<BITS>(odd),
        );
        _mm512_store_si512(self.low[quarter][row].as_mut_ptr() as *mut _, low);
        _mm512_store_si512(self.high[quarter][row].as_mut_ptr() as *mut _, high);
    }
}

/// Each value times its group's 6-bit scale (at most 15 × 63) as `32 * high + low`. A quarter is
/// a pair of groups: its 16 steps are the low nibbles of 8 steps (group 2p) and then their high
/// nibbles (group 2p + 1).
impl AmxTiled for Q4K {
    const LOW_BITS: u32 = 5;

    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn scale(tile: &Q4kTile, weights: &mut ScaledWeights) {
        let nibble = _mm512_set1_epi8(0x0f);
        let even_bytes = _mm512_set1_epi16(0xff);
        for pair in 0..4 {
            let (scale_low, scale_high) = q4k_group_scales(tile, pair);
            // Each 16-bit lane holds its weight row's scale, the byte products' other factor.
            let in_halves = _mm512_set1_epi32(0x0001_0001);
            let scales = [scale_low, scale_high].map(|s| _mm512_mullo_epi32(s, in_halves));
            for step in 0..GROUP / 4 {
                let w = _mm512_load_si512(tile.qs[pair][step].as_ptr() as *const _);
                let values = [
                    _mm512_and_si512(w, nibble),
                    _mm512_and_si512(_mm512_srli_epi16::<4>(w), nibble),
                ];
                for (half, (values, scale)) in values.into_iter().zip(scales).enumerate() {
                    let even = _mm512_mullo_epi16(_mm512_and_si512(values, even_bytes), scale);
                    let odd = _mm512_mullo_epi16(_mm512_srli_epi16::<8>(values), scale);
                    let row = half * GROUP / 4 + step;
                    weights.put::<{ <Q4K as AmxTiled>::LOW_BITS }>(pair, row, even, odd);
                }
            }
        }
    }

    type SumFactors = Q4kSumFactors;

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn sum_factors(tile: &Q4kTile) -> Q4kSumFactors {
        Q4kSumFactors::of(tile)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn block_sum(
        factors: &Q4kSumFactors,
        act: &ActSuperBlock,
        scaled: __m512i,
        sum: __m512,
    ) -> __m512 {
        q4k_block_sum(factors, act, scaled, sum)
    }
}

/// Each value less 32, times its 16 values' signed 8-bit scale (-4096 to 3968), as
/// `64 * high + low` with `low` 0–63 and `high` -64–62, both signed bytes.
impl AmxTiled for Q6K {
    const LOW_BITS: u32 = 6;

    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn scale(tile: &Q6kTile, weights: &mut ScaledWeights) {
        let even_bytes = _mm512_set1_epi16(0xff);
        let offset = _mm512_set1_epi16(32);
        for (sixteenth, scales) in tile.scales.iter().enumerate() {
            let scale = _mm512_cvtepi8_epi32(_mm_loadu_si128(scales.as_ptr() as *const _));
            // Each 16-bit lane holds its weight row's scale, sign and all.
            let scale = _mm512_or_si512(
                _mm512_and_si512(scale, _mm512_set1_epi32(0xffff)),
                _mm512_slli_epi32::<16>(scale),
            );
            for step in 4 * sixteenth..4 * sixteenth + 4 {
                let w = _mm512_load_si512(tile.qs[step].as_ptr() as *const _);
                let centred = |values: __m512i| _mm512_sub_epi16(values, offset);
                let even = _mm512_mullo_epi16(centred(_mm512_and_si512(w, even_bytes)), scale);
                let odd = _mm512_mullo_epi16(centred(_mm512_srli_epi16::<8>(w)), scale);
                let (quarter, row) = (step / 16, step % 16);
                weights.put::<{ <Q6K as AmxTiled>::LOW_BITS }>(quarter, row, even, odd);
            }
        }
    }

    type SumFactors = __m512;

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn sum_factors(tile: &Q6kTile) -> __m512 {
        _mm512_load_ps(tile.d.as_ptr())
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn block_sum(d: &__m512, act: &ActSuperBlock, scaled: __m512i, sum: __m512) -> __m512 {
        q6k_block_sum(*d, act, scaled, sum)
    }
}

/// A tile of activation rows' products with the low and the high bytes of a super-block's scaled
/// weights: `[activation row][weight row]`.
#[repr(C, align(64))]
struct Products {
    low: [[i32; TILE]; ACT_ROWS],
    high: [[i32; TILE]; ACT_ROWS],
}

/// The activation rows (`acts[i * tiles.len()..]`, padded to whole tiles of 16), one for each
/// of `sums` (room for their sums, kept by the caller from column to column), against one
/// column of tiles, the 16 products of row `i` written to `out + i * stride`; what
/// `Tiled::column` computes, to the bit.
///
/// # Safety
/// [`run_here`] holds, the CPU has AVX-512 F, BW and VNNI, `acts` holds `sums.len()` rows
/// rounded up to a multiple of 16, and `out` has room for the products.
pub(super) unsafe fn column<K: AmxTiled>(
    tiles: &[K::Tile],
    acts: &[ActSuperBlock],
    sums: &mut [__m512],
    out: *mut f32,
    stride: usize,
) {
    let allowed = INTERRUPTED_AFTER + COUNTS_PER_TILE * sums.len().div_ceil(ACT_ROWS) as u64;
    column_within::<K>(tiles, acts, sums, out, stride, allowed);
}

/// Time stamp counts after which a block's products with every tile of activation rows are
/// taken to have been interrupted, beside [`COUNTS_PER_TILE`] for each tile (an undisturbed
/// one takes a few hundred): some virtual machines (Firecracker guests, as these machines are)
/// have been seen to lose the tile registers' contents when the thread is descheduled between
/// instructions, which would change a product without a sign, so the column is computed again
/// (see [`column_within`]). Not seen here: 380,000 runs of 2,000 products each, 4 threads on 2
/// cores, all right. Timed block by block, not product by product: reading the time stamp
/// counter around every tile product kept the tile products from overlapping the vector work
/// around them, and made them a fifth slower. `tqa bench --prefill 256,512` computed 7,733
/// columns again.
const INTERRUPTED_AFTER: u64 = 16_384;
const COUNTS_PER_TILE: u64 = 2_048;

/// Passes with AMX a column takes before it is computed with AVX-512 instead: a second pass
/// nearly always goes undisturbed, and AVX-512's pass is slower (a fallback at the first
/// interruption made prompts 2–3% slower), but a machine interrupted more often than a pass
/// takes must not keep trying.
const AMX_ATTEMPTS: usize = 3;

/// [`column`], where a block's products that took `allowed` time stamp counts or more are taken
/// to have been interrupted: the column is then computed again, with AMX [`AMX_ATTEMPTS`] times
/// in all, then with AVX-512, whose registers a thread switch cannot lose.
///
/// # Safety
/// As for [`column`].
pub(super) unsafe fn column_within<K: AmxTiled>(
    tiles: &[K::Tile],
    acts: &[ActSuperBlock],
    sums: &mut [__m512],
    out: *mut f32,
    stride: usize,
    allowed: u64,
) {
    for _ in 0..AMX_ATTEMPTS {
        if amx_pass::<K>(tiles, acts, sums, out, stride, allowed) {
            return;
        }
    }
    super::avx512_column::<K>(tiles, acts, sums.len(), out, stride);
}

/// One pass of [`column_within`] with AMX: whether it went undisturbed (and wrote the products).
///
/// # Safety
/// As for [`column`].
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn amx_pass<K: AmxTiled>(
    tiles: &[K::Tile],
    acts: &[ActSuperBlock],
    sums: &mut [__m512],
    out: *mut f32,
    stride: usize,
    allowed: u64,
) -> bool {
    let kb = tiles.len();
    let m = sums.len();
    debug_assert!(acts.len() >= m.next_multiple_of(ACT_ROWS) * kb);
    configure_this_thread();
    let act_stride = kb * std::mem::size_of::<ActSuperBlock>();
    let mut weights: ScaledWeights = std::mem::zeroed();
    let mut products: Products = std::mem::zeroed();
    // `2^LOW_BITS * high + low` is the scaled values' products.
    let low_bits = _mm_cvtsi32_si128(K::LOW_BITS as i32);
    sums.fill(_mm512_setzero_ps());
    for (b, tile) in tiles.iter().enumerate() {
        let start = _rdtsc();
        super::prefetch_ahead(tile);
        K::scale(tile, &mut weights);
        let factors = K::sum_factors(tile);
        for (chunk, sums) in sums.chunks_mut(ACT_ROWS).enumerate() {
            let first = chunk * ACT_ROWS;
            let act = |i: usize| &acts[(first + i) * kb + b];
            tile_products(act(0).q.as_ptr(), act_stride, &weights, &mut products);
            for (i, sum) in sums.iter_mut().enumerate() {
                let low = _mm512_load_si512(products.low[i].as_ptr() as *const _);
                let high = _mm512_load_si512(products.high[i].as_ptr() as *const _);
                let scaled = _mm512_add_epi32(_mm512_sll_epi32(high, low_bits), low);
                *sum = K::block_sum(&factors, act(i), scaled, *sum);
            }
        }
        if _rdtsc().wrapping_sub(start) >= allowed {
            return false;
        }
    }
    for (i, sum) in sums.iter().enumerate() {
        _mm512_storeu_ps(out.add(i * stride), *sum);
    }
    true
}

/// The products of 16 activation rows' super-block (the first at `acts`, the next `act_stride`
/// bytes on) with `weights`, into `products`.
///
/// # Safety
/// The tiles are configured (`configure_this_thread`); the 16 rows are readable.
#[inline]
unsafe fn tile_products(
    acts: *const i8,
    act_stride: usize,
    weights: &ScaledWeights,
    products: &mut Products,
) {
    // Pair p's activations are bytes 64p.. of each row, its scaled weights bytes 1024p.. (16 rows
    // of 64) of `low` and `high`. The pairs alternate between two sets of registers, so that one
    // pair's loads can overlap the other's products.
    const _: () = assert!(4 * TILE * 2 * GROUP / 4 == 1024 && 2 * GROUP == 64);
    asm!(
        "tilezero tmm6",
        "tilezero tmm7",
        "tileloadd tmm0, [{acts} + {act_stride}*1]",
        "tileloadd tmm2, [{low} + {row}*1]",
        "tileloadd tmm3, [{high} + {row}*1]",
        "tdpbssd tmm6, tmm0, tmm2",
        "tdpbssd tmm7, tmm0, tmm3",
        "tileloadd tmm1, [{acts} + {act_stride}*1 + 64]",
        "tileloadd tmm4, [{low} + {row}*1 + 1024]",
        "tileloadd tmm5, [{high} + {row}*1 + 1024]",
        "tdpbssd tmm6, tmm1, tmm4",
        "tdpbssd tmm7, tmm1, tmm5",
        "tileloadd tmm0, [{acts} + {act_stride}*1 + 128]",
        "tileloadd tmm2, [{low} + {row}*1 + 2048]",
        "tileloadd tmm3, [{high} + {row}*1 + 2048]",
        "tdpbssd tmm6, tmm0, tmm2",
        "tdpbssd tmm7, tmm0, tmm3",
        "tileloadd tmm1, [{acts} + {act_stride}*1 + 192]",
        "tileloadd tmm4, [{low} + {row}*1 + 3072]",
        "tileloadd tmm5, [{high} + {row}*1 + 3072]",
        "tdpbssd tmm6, tmm1, tmm4",
        "tdpbssd tmm7, tmm1, tmm5",
        "tilestored [{out_low} + {row}*1], tmm6",
        "tilestored [{out_high} + {row}*1], tmm7",
        acts = in(reg) acts,
        act_stride = in(reg) act_stride,
        low = in(reg) weights.low.as_ptr(),
        high = in(reg) weights.high.as_ptr(),
        row = in(reg) 4 * TILE,
        out_low = in(reg) products.low.as_mut_ptr(),
        out_high = in(reg) products.high.as_mut_ptr(),
        options(nostack),
    );
}
