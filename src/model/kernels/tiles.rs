//! Q4_K and Q6_K matrices rearranged, at load, into tiles of 16 weight rows for prompts on CPUs
//! with AVX-512 VNNI. One 512-bit register then holds 4 bytes of each of 16 rows, and one
//! `vpdpbusd` against 4 activation bytes broadcast gives 16 rows' products at once: where the
//! blocks are read row by row, every row's products have to be summed across a register.
//!
//! candle does the same for Q4_K with its own tiles, but only after copying the blocks out of the
//! file and then packing them one value at a time: about a second of every load of the default
//! model. A Q4_K block's 4-bit values already lie in the order a tile needs (each byte holds a
//! value of one group in its low nibble and the same value of the next group in its high one),
//! so packing here moves 4 bytes at a time, and unpacks the 6-bit scales and minimums once.
//! Q6_K's 6-bit values are split over two arrays; its tiles hold them whole, a byte each.
//!
//! The tiles hold more bytes than the blocks (Q4_K a tenth more, Q6_K a third); decoding keeps
//! reading the blocks (see `kernels`), which are fewer bytes to bring from memory for every token.
//!
//! On CPUs with AMX, prompts of many rows meet the tiles in AMX's tile registers instead
//! (`amx`), with the same results to the bit.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use half::f16;

use super::avx2::PREFETCH_AHEAD;
use super::{q4k_scales_and_mins, ActSuperBlock, SendPtr, SUPER_BLOCK};

mod amx;

/// Weight rows in a tile.
const TILE: usize = 16;

/// Activation rows one pass over a column of tiles computes. `cargo bench --bench kernels --
/// "qwen1.5b-(qkv|gate-up)/256"`: 4, 6, 8 rows 4.46, 3.44, 3.94 ms (q, k, v) and 33.0, 31.8,
/// 33.7 ms (gate, up).
const ACT_ROWS: usize = 6;

/// Most bytes of activation rows one pass over the columns of tiles reads, about half a core's L2
/// cache. `cargo bench --bench kernels -- qwen1.5b-down/256/own` with AMX: 0.5, 1, 1.5 MB 8.9,
/// 7.3, 7.7 ms (all rows at once, 2.8 MB: 12.0 ms); AVX-512's slower passes are the same either
/// way.
const CACHED_ACTS_BYTES: usize = 1 << 20;

/// Rows of a group are a multiple of both passes' rows (16 with AMX, 6 without).
const GROUP_ROWS: usize = 48;

/// A block type's tiles: one super-block (256 values) of [`TILE`] weight rows each.
pub(super) trait Tiled {
    const BLOCK_BYTES: usize;
    type Tile: Copy + Sync;

    /// The tile of the 16 blocks `block(0..16)`.
    fn of_blocks<'a>(block: impl Fn(usize) -> &'a [u8]) -> Self::Tile;

    /// `A` activation rows (`acts[i * tiles.len()..]`) against one column of tiles, the 16
    /// products of row `i` written to `out + i * stride`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and VNNI; `out` has room for them.
    unsafe fn column<const A: usize>(
        tiles: &[Self::Tile],
        acts: &[ActSuperBlock],
        out: *mut f32,
        stride: usize,
    );

    /// With AMX, where the type has it: all `m` activation rows against one column of tiles, in
    /// tiles of [`amx::ACT_ROWS`] rows (`acts` holds the last one whole).
    const AMX_COLUMN: Option<AmxColumn<Self::Tile>>;
}

/// A pass over a column of tiles with AMX (see [`Tiled::AMX_COLUMN`]): tiles, activations,
/// room for each activation row's sums (as many as there are rows), where row `i`'s 16 products
/// go and the stride between rows.
type AmxColumn<T> = unsafe fn(&[T], &[ActSuperBlock], &mut [__m512], *mut f32, usize);

pub(super) struct Q4K;
pub(super) struct Q6K;

/// A matrix (or several stacked) of one k-quant type as tiles, column of tiles after column.
pub(super) struct Tiles<K: Tiled> {
    tiles: Vec<K::Tile>,
    blocks_per_row: usize,
    rows: usize,
}

/// Whether this CPU runs the tiles' products.
pub(super) fn run_here() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

impl<K: Tiled> Tiles<K> {
    /// The tiles of `parts`, matrices of `cols` columns stacked one under another, or `None` if
    /// a part's rows do not fill whole tiles. The caller has checked that each part holds its
    /// rows' blocks.
    pub(super) fn pack(parts: &[&[u8]], cols: usize) -> Option<Self> {
        let blocks_per_row = cols / SUPER_BLOCK;
        let row_bytes = blocks_per_row * K::BLOCK_BYTES;
        if blocks_per_row == 0 || parts.iter().any(|p| p.len() % (TILE * row_bytes) != 0) {
            return None;
        }
        let rows = parts.iter().map(|p| p.len() / row_bytes).sum::<usize>();
        let mut tiles = Vec::with_capacity(rows / TILE * blocks_per_row);
        for part in parts {
            for column in part.chunks_exact(TILE * row_bytes) {
                for b in 0..blocks_per_row {
                    let block = |r: usize| {
                        let start = r * row_bytes + b * K::BLOCK_BYTES;
                        &column[start..start + K::BLOCK_BYTES]
                    };
                    tiles.push(K::of_blocks(block));
                }
            }
        }
        Some(Self {
            tiles,
            blocks_per_row,
            rows,
        })
    }

    /// Writes the products of the `m` activation rows `acts` (each `blocks_per_row` super-blocks)
    /// with every weight row into `out` (`m` × rows), the columns of tiles split between candle's
    /// CPU threads.
    pub(super) fn product(&self, acts: &[ActSuperBlock], m: usize, out: &mut [MaybeUninit<f32>]) {
        let amx_column = K::AMX_COLUMN.filter(|_| m >= amx::MIN_ROWS && amx::run_here());
        self.product_with(amx_column, acts, m, out);
    }

    /// [`Self::product`] with AMX's pass, when given, or AVX-512's. Long prompts are taken in
    /// groups of rows whose activations stay in the core's cache while every column of tiles
    /// passes over them: read again from farther away for every column, they held AMX's passes
    /// up (see [`CACHED_ACTS_BYTES`]).
    fn product_with(
        &self,
        amx_column: Option<AmxColumn<K::Tile>>,
        acts: &[ActSuperBlock],
        m: usize,
        out: &mut [MaybeUninit<f32>],
    ) {
        let kb = self.blocks_per_row;
        assert!(acts.len() >= m * kb && out.len() >= m * self.rows);
        let row_bytes = kb * std::mem::size_of::<ActSuperBlock>();
        // Groups of equal size: a last group of a few rows would pay a whole pass over the tiles.
        let groups = (m * row_bytes).div_ceil(CACHED_ACTS_BYTES).max(1);
        let group_rows = m.div_ceil(groups).next_multiple_of(GROUP_ROWS);
        for first in (0..m).step_by(group_rows) {
            let rows = group_rows.min(m - first);
            let acts = &acts[first * kb..(first + rows) * kb];
            let out = &mut out[first * self.rows..];
            match amx_column {
                Some(amx_column) => self.amx_product(amx_column, acts, rows, out),
                None => self.avx512_product(acts, rows, out),
            }
        }
    }

    /// [`Self::product`] with AVX-512's pass.
    fn avx512_product(&self, acts: &[ActSuperBlock], m: usize, out: &mut [MaybeUninit<f32>]) {
        let kb = self.blocks_per_row;
        let columns = self.rows / TILE;
        let chunks = m.div_ceil(ACT_ROWS);
        let out_ptr = SendPtr(out.as_mut_ptr().cast());
        candle_core::utils::barrier_pool().execute_chunked(columns * chunks, |range| {
            let out_ptr = &out_ptr;
            for unit in range {
                // Consecutive units share a column, so a thread's tiles stay in cache.
                let (column, chunk) = (unit / chunks, unit % chunks);
                let first = chunk * ACT_ROWS;
                let count = (m - first).min(ACT_ROWS);
                let tiles = &self.tiles[column * kb..(column + 1) * kb];
                let acts = &acts[first * kb..(first + count) * kb];
                // SAFETY: `run_here` held when the tiles were made; units write disjoint pieces of
                // `out` (their own activation rows and 16 weight rows), all inside it.
                unsafe {
                    let out = out_ptr.0.add(first * self.rows + column * TILE);
                    avx512_rows::<K>(tiles, acts, count, out, self.rows)
                }
            }
        });
    }

    /// [`Self::product`] with AMX: each column of tiles meets every activation row in one pass,
    /// which unpacks each of its blocks once for all of them.
    fn amx_product(
        &self,
        amx_column: AmxColumn<K::Tile>,
        acts: &[ActSuperBlock],
        m: usize,
        out: &mut [MaybeUninit<f32>],
    ) {
        let kb = self.blocks_per_row;
        // The passes read whole tiles of activation rows; the last is filled with zeros.
        let padded;
        let acts = if m.is_multiple_of(amx::ACT_ROWS) {
            &acts[..m * kb]
        } else {
            let padding = m.next_multiple_of(amx::ACT_ROWS) - m;
            padded = [&acts[..m * kb], &vec![ActSuperBlock::ZERO; padding * kb]].concat();
            padded.as_slice()
        };
        let out_ptr = SendPtr(out.as_mut_ptr().cast());
        candle_core::utils::barrier_pool().execute_chunked(self.rows / TILE, |range| {
            let out_ptr = &out_ptr;
            // Each row's sums until a column's last block: rows of `out` lie a whole weight
            // matrix's width apart. One for all columns: a fresh one for each was 1–3% of a
            // prompt in `malloc` and `free`.
            // SAFETY: the CPU has AVX-512 F (`run_here` held).
            let mut sums = vec![unsafe { _mm512_setzero_ps() }; m];
            for column in range {
                let tiles = &self.tiles[column * kb..(column + 1) * kb];
                // SAFETY: `run_here` and `amx::run_here` held; each column writes its own 16
                // weight rows of `out`, inside it.
                unsafe {
                    amx_column(
                        tiles,
                        acts,
                        &mut sums,
                        out_ptr.0.add(column * TILE),
                        self.rows,
                    )
                }
            }
        });
    }
}

/// `count` activation rows (1 to [`ACT_ROWS`]) against one column of tiles with AVX-512:
/// [`Tiled::column`] for that many.
///
/// # Safety
/// As for [`Tiled::column`].
unsafe fn avx512_rows<K: Tiled>(
    tiles: &[K::Tile],
    acts: &[ActSuperBlock],
    count: usize,
    out: *mut f32,
    stride: usize,
) {
    match count {
        1 => K::column::<1>(tiles, acts, out, stride),
        2 => K::column::<2>(tiles, acts, out, stride),
        3 => K::column::<3>(tiles, acts, out, stride),
        4 => K::column::<4>(tiles, acts, out, stride),
        5 => K::column::<5>(tiles, acts, out, stride),
        _ => K::column::<ACT_ROWS>(tiles, acts, out, stride),
    }
}

/// All `m` activation rows against one column of tiles with AVX-512, [`ACT_ROWS`] at a time.
///
/// # Safety
/// As for [`Tiled::column`], for `m` rows.
unsafe fn avx512_column<K: Tiled>(
    tiles: &[K::Tile],
    acts: &[ActSuperBlock],
    m: usize,
    out: *mut f32,
    stride: usize,
) {
    let kb = tiles.len();
    for first in (0..m).step_by(ACT_ROWS) {
        let count = (m - first).min(ACT_ROWS);
        let acts = &acts[first * kb..(first + count) * kb];
        avx512_rows::<K>(tiles, acts, count, out.add(first * stride), stride);
    }
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Q4kTile {
    /// `[pair p][step s][row r]`: bytes `16 + 32p + 4s ..+ 4` of row r's block, whose low nibbles
    /// are values `64p + 4s ..+ 4` (group 2p) and high nibbles values `64p + 32 + 4s ..+ 4`
    /// (group 2p + 1).
    qs: [[[[u8; 4]; TILE]; 8]; 4],
    /// `[group][row]`, 6 bits each.
    scales: [[u8; TILE]; 8],
    /// `[pair p][row]`: the minimums of groups 2p and 2p + 1 as two 16-bit halves.
    mins: [[u32; TILE]; 4],
    d: [f32; TILE],
    dmin: [f32; TILE],
}

/// Asks for the cache lines [`PREFETCH_AHEAD`] bytes after `tile` (into the outer caches), as
/// many as it spans: as far ahead as decoding fetches the blocks, since a prompt of a few rows
/// (the guesses checked while decoding) reads every tile once from memory, as decoding reads the
/// blocks. `tqa bench` prefill 2, 4, 8, 17 rows +23%, +38%, +33%, +26%. AMX's passes fetch ahead
/// too: prefill 96, 256, 512 rows, five interleaved rounds, medians 216.2, 226.9, 226.7 → 236.4,
/// 242.7, 240.9 tok/s.
#[inline]
#[target_feature(enable = "sse")]
unsafe fn prefetch_ahead<T>(tile: &T) {
    let ahead = (tile as *const T as *const u8).wrapping_add(PREFETCH_AHEAD);
    for line in (0..std::mem::size_of::<T>()).step_by(64) {
        _mm_prefetch::<_MM_HINT_T2>(ahead.wrapping_add(line) as *const i8);
    }
}

/// The 4 activation bytes at `at`, in every 32-bit lane.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn broadcast(q: &[i8; SUPER_BLOCK], at: usize) -> __m512i {
    _mm512_set1_epi32(std::ptr::read_unaligned(q.as_ptr().add(at) as *const i32))
}

fn half_at(block: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([block[at], block[at + 1]]).to_f32()
}

impl Tiled for Q4K {
    const BLOCK_BYTES: usize = 144;
    type Tile = Q4kTile;
    const AMX_COLUMN: Option<AmxColumn<Q4kTile>> = Some(amx::column::<Q4K>);

    fn of_blocks<'a>(block: impl Fn(usize) -> &'a [u8]) -> Q4kTile {
        let mut tile = Q4kTile {
            qs: [[[[0; 4]; TILE]; 8]; 4],
            scales: [[0; TILE]; 8],
            mins: [[0; TILE]; 4],
            d: [0.0; TILE],
            dmin: [0.0; TILE],
        };
        for r in 0..TILE {
            let block = block(r);
            tile.d[r] = half_at(block, 0);
            tile.dmin[r] = half_at(block, 2);
            let mut packed = [0u8; 12];
            packed.copy_from_slice(&block[4..16]);
            let (scales, mins) = q4k_scales_and_mins(&packed);
            for (group, scale) in scales.to_le_bytes().into_iter().enumerate() {
                tile.scales[group][r] = scale;
            }
            let mins = mins.to_le_bytes();
            for (pair, two) in tile.mins.iter_mut().enumerate() {
                two[r] = mins[2 * pair] as u32 | (mins[2 * pair + 1] as u32) << 16;
            }
            for (pair, steps) in tile.qs.iter_mut().enumerate() {
                for (step, rows) in steps.iter_mut().enumerate() {
                    let start = 16 + 32 * pair + 4 * step;
                    rows[r].copy_from_slice(&block[start..start + 4]);
                }
            }
        }
        tile
    }

    /// A group's byte products add up as integers, are scaled by the group's 6-bit scale as
    /// integers, and each super-block is turned into floats once, with the minimums' products
    /// (`dmin * Σ_group min · Σ activations`) subtracted.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn column<const A: usize>(
        tiles: &[Q4kTile],
        acts: &[ActSuperBlock],
        out: *mut f32,
        stride: usize,
    ) {
        let kb = tiles.len();
        let nibble = _mm512_set1_epi8(0x0f);
        let mut sums = [_mm512_setzero_ps(); A];
        for (b, tile) in tiles.iter().enumerate() {
            prefetch_ahead(tile);
            let act: [&ActSuperBlock; A] = std::array::from_fn(|i| &acts[i * kb + b]);
            let mut scaled = [_mm512_setzero_si512(); A];
            for pair in 0..4 {
                let mut low = [_mm512_setzero_si512(); A];
                let mut high = [_mm512_setzero_si512(); A];
                for step in 0..8 {
                    let w = _mm512_load_si512(tile.qs[pair][step].as_ptr() as *const _);
                    let w_low = _mm512_and_si512(w, nibble);
                    let w_high = _mm512_and_si512(_mm512_srli_epi16::<4>(w), nibble);
                    let at = 64 * pair + 4 * step;
                    for i in 0..A {
                        low[i] = _mm512_dpbusd_epi32(low[i], w_low, broadcast(&act[i].q, at));
                        high[i] =
                            _mm512_dpbusd_epi32(high[i], w_high, broadcast(&act[i].q, at + 32));
                    }
                }
                let scales = q4k_group_scales(tile, pair);
                for i in 0..A {
                    scaled[i] = add_scaled_pair(scaled[i], [low[i], high[i]], scales);
                }
            }
            let factors = Q4kSumFactors::of(tile);
            for i in 0..A {
                sums[i] = q4k_block_sum(&factors, act[i], scaled[i], sums[i]);
            }
        }
        for (i, sum) in sums.iter().enumerate() {
            _mm512_storeu_ps(out.add(i * stride), *sum);
        }
    }
}

/// The 6-bit scales of groups `2 * pair` and `2 * pair + 1` of a tile's 16 rows.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn q4k_group_scales(tile: &Q4kTile, pair: usize) -> (__m512i, __m512i) {
    let scale = |group: usize| {
        _mm512_cvtepu8_epi32(_mm_loadu_si128(tile.scales[group].as_ptr() as *const _))
    };
    (scale(2 * pair), scale(2 * pair + 1))
}

/// `scaled` plus a group pair's integer products, each times its group's scale.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn add_scaled_pair(
    scaled: __m512i,
    [low, high]: [__m512i; 2],
    (scale_low, scale_high): (__m512i, __m512i),
) -> __m512i {
    let both = _mm512_add_epi32(
        _mm512_mullo_epi32(low, scale_low),
        _mm512_mullo_epi32(high, scale_high),
    );
    _mm512_add_epi32(scaled, both)
}

/// What every activation row's block sum reads of a Q4_K tile, read once for all the rows: where
/// each row's sum read it again, those loads held AMX's passes up.
#[derive(Clone, Copy)]
pub(super) struct Q4kSumFactors {
    mins: [__m512i; 4],
    d: __m512,
    dmin: __m512,
}

impl Q4kSumFactors {
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn of(tile: &Q4kTile) -> Self {
        Self {
            mins: std::array::from_fn(|pair| {
                _mm512_load_si512(tile.mins[pair].as_ptr() as *const _)
            }),
            d: _mm512_load_ps(tile.d.as_ptr()),
            dmin: _mm512_load_ps(tile.dmin.as_ptr()),
        }
    }
}

/// `sum` plus one super-block's part of an activation row's 16 products: its `scaled` group
/// products in floats, less the minimums' products (`dmin * Σ_group min · Σ activations`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn q4k_block_sum(
    factors: &Q4kSumFactors,
    act: &ActSuperBlock,
    scaled: __m512i,
    sum: __m512,
) -> __m512 {
    let mut min_products = _mm512_setzero_si512();
    for (pair, &mins) in factors.mins.iter().enumerate() {
        let act_sums = std::ptr::read_unaligned(act.sums.as_ptr().add(2 * pair) as *const i32);
        min_products = _mm512_dpwssd_epi32(min_products, mins, _mm512_set1_epi32(act_sums));
    }
    let d_act = _mm512_set1_ps(act.d);
    let weighted = _mm512_mul_ps(_mm512_cvtepi32_ps(scaled), factors.d);
    let minimums = _mm512_mul_ps(_mm512_cvtepi32_ps(min_products), factors.dmin);
    _mm512_fmadd_ps(_mm512_sub_ps(weighted, minimums), d_act, sum)
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Q6kTile {
    /// `[step s][row r]`: row r's values `4s ..+ 4`, unsigned (0–63; the value is `q - 32`).
    qs: [[[u8; 4]; TILE]; SUPER_BLOCK / 4],
    /// `[sixteenth][row]`: the signed scale of each 16 values.
    scales: [[i8; TILE]; 16],
    d: [f32; TILE],
}

/// A Q6_K block's 256 values, unsigned, 4 to a little-endian word. The low 4 bits are nibbles
/// of the block's first 128 bytes, the high 2 bits pairs of the next 64: in each 128 values,
/// values `l`, `l + 32`, `l + 64`, `l + 96` take the low and high nibbles of low bytes `l` and
/// `l + 32`, and bit pairs 0–3 of high byte `l`.
fn q6k_values(low: &[u8; 128], high: &[u8; 64]) -> [u32; SUPER_BLOCK / 4] {
    let word = |bytes: &[u8], at: usize| {
        u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
    };
    std::array::from_fn(|step| {
        let (half, quarter, l) = (step / 32, step / 8 % 4, 4 * (step % 8));
        let low = word(low, 64 * half + l + 32 * (quarter % 2)) >> (4 * (quarter / 2));
        let high = word(high, 32 * half + l) >> (2 * quarter);
        (low & 0x0f0f_0f0f) | (high & 0x0303_0303) << 4
    })
}

impl Tiled for Q6K {
    const BLOCK_BYTES: usize = 210;
    type Tile = Q6kTile;
    const AMX_COLUMN: Option<AmxColumn<Q6kTile>> = Some(amx::column::<Q6K>);

    fn of_blocks<'a>(block: impl Fn(usize) -> &'a [u8]) -> Q6kTile {
        let mut tile = Q6kTile {
            qs: [[[0; 4]; TILE]; SUPER_BLOCK / 4],
            scales: [[0; TILE]; 16],
            d: [0.0; TILE],
        };
        for r in 0..TILE {
            let block = block(r);
            let (Ok(low), Ok(high)) = (block[..128].try_into(), block[128..192].try_into()) else {
                unreachable!("a Q6_K block holds {} bytes", Self::BLOCK_BYTES)
            };
            for (rows, values) in tile.qs.iter_mut().zip(q6k_values(low, high)) {
                rows[r] = values.to_le_bytes();
            }
            for (sixteenth, rows) in tile.scales.iter_mut().enumerate() {
                rows[r] = block[192 + sixteenth] as i8;
            }
            tile.d[r] = half_at(block, 208);
        }
        tile
    }

    /// Each 16 values' byte products start from `-32 Σ activations`, so that they add up to the
    /// products with `q - 32`, and are scaled by their 8-bit scale as integers; each super-block
    /// is turned into floats once.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn column<const A: usize>(
        tiles: &[Q6kTile],
        acts: &[ActSuperBlock],
        out: *mut f32,
        stride: usize,
    ) {
        let kb = tiles.len();
        let mut sums = [_mm512_setzero_ps(); A];
        for (b, tile) in tiles.iter().enumerate() {
            prefetch_ahead(tile);
            let act: [&ActSuperBlock; A] = std::array::from_fn(|i| &acts[i * kb + b]);
            let mut scaled = [_mm512_setzero_si512(); A];
            for sixteenth in 0..16 {
                let mut products: [__m512i; A] = std::array::from_fn(|i| {
                    _mm512_set1_epi32(-32 * act[i].half_sums[sixteenth] as i32)
                });
                for step in 4 * sixteenth..4 * sixteenth + 4 {
                    let w = _mm512_load_si512(tile.qs[step].as_ptr() as *const _);
                    for i in 0..A {
                        products[i] =
                            _mm512_dpbusd_epi32(products[i], w, broadcast(&act[i].q, 4 * step));
                    }
                }
                let scale = _mm512_cvtepi8_epi32(_mm_loadu_si128(
                    tile.scales[sixteenth].as_ptr() as *const _
                ));
                for i in 0..A {
                    scaled[i] = _mm512_add_epi32(scaled[i], _mm512_mullo_epi32(products[i], scale));
                }
            }
            let d = _mm512_load_ps(tile.d.as_ptr());
            for i in 0..A {
                sums[i] = q6k_block_sum(d, act[i], scaled[i], sums[i]);
            }
        }
        for (i, sum) in sums.iter().enumerate() {
            _mm512_storeu_ps(out.add(i * stride), *sum);
        }
    }
}

/// `sum` plus one super-block's part of an activation row's 16 products: its `scaled` products
/// in floats, given the tile's scales `d` (read once for all the rows).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn q6k_block_sum(d: __m512, act: &ActSuperBlock, scaled: __m512i, sum: __m512) -> __m512 {
    let d = _mm512_mul_ps(d, _mm512_set1_ps(act.d));
    _mm512_fmadd_ps(_mm512_cvtepi32_ps(scaled), d, sum)
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    use super::super::quantize_rows_in_super_blocks;
    use super::*;

    /// AMX's pass as it goes when every block's products seem to have been interrupted: the
    /// column is computed again and again, then with AVX-512.
    unsafe fn interrupted_column<K: amx::AmxTiled>(
        tiles: &[K::Tile],
        acts: &[ActSuperBlock],
        sums: &mut [__m512],
        out: *mut f32,
        stride: usize,
    ) {
        amx::column_within::<K>(tiles, acts, sums, out, stride, 0);
    }

    /// AMX's pass computes AVX-512's bits, for every count of activation rows a pass takes, for
    /// prompts of several passes and for prompts whose activations are taken in several groups;
    /// so does it when it finds itself interrupted.
    fn amx_computes_the_same_bits_as_avx512<K: amx::AmxTiled>(dtype: GgmlDType) {
        if !(run_here() && amx::run_here()) {
            eprintln!("skipped: this CPU has no AMX");
            return;
        }
        let (rows, cols) = (32, 1024);
        let w = Tensor::randn(0f32, 0.05, (rows, cols), &Device::Cpu).unwrap();
        let blocks = QTensor::quantize(&w, dtype)
            .unwrap()
            .data()
            .unwrap()
            .to_vec();
        let tiles = Tiles::<K>::pack(&[&blocks], cols).unwrap();
        for m in (1..=17).chain([31, 40, 900]) {
            let x = Tensor::randn(0f32, 1.0, m * cols, &Device::Cpu).unwrap();
            let acts = quantize_rows_in_super_blocks(&x.to_vec1().unwrap());
            // Filled beforehand, so that a product left unwritten shows as a difference.
            let unwritten = MaybeUninit::new(f32::NAN);
            let bits = |v: &[MaybeUninit<f32>]| {
                // SAFETY: every element was initialized (to NaN) before the products.
                v.iter()
                    .map(|x| unsafe { x.assume_init() }.to_bits())
                    .collect::<Vec<_>>()
            };
            let products = |column: Option<AmxColumn<K::Tile>>| {
                let mut out = vec![unwritten; m * rows];
                tiles.product_with(column, &acts, m, &mut out);
                bits(&out)
            };
            let without = products(None);
            for column in [K::AMX_COLUMN, Some(interrupted_column::<K>)] {
                let with_amx = products(column);
                assert!(with_amx.iter().all(|&b| !f32::from_bits(b).is_nan()));
                assert_eq!(with_amx, without, "{dtype:?}, {m} activation rows");
            }
        }
    }

    #[test]
    fn amx_computes_q4k_products_to_the_bit() {
        amx_computes_the_same_bits_as_avx512::<Q4K>(GgmlDType::Q4K);
    }

    #[test]
    fn amx_computes_q6k_products_to_the_bit() {
        amx_computes_the_same_bits_as_avx512::<Q6K>(GgmlDType::Q6K);
    }
}
