//! Decoders over a KV cache: all of it ([`Cached::dense`], for exact attention), or the
//! first `s` keys plus a ring buffer of the last `w + 1` ([`Cached::streaming`], for a
//! sliding window and attention sinks).
//!
//! Each (sequence, KV head) has its own [`KvCache`]: keys in blocks of
//! [`KV_BLOCK`], key-major, values in rows, as `f32`, `f16` or `bf16`. A step appends the new
//! key and value, then scans the slots its queries may attend with
//! [`dispatch::kv_scan`], which reads every key and value once for the whole query group.
//! When there are more slots than one thread should scan, the ranges are cut into pieces run
//! in parallel and merged exactly (the split-KV of the tiled engine).
//!
//! A ring buffer holds `ceil((w + 1) / 16) * 16` slots; position `p >= s` lives in slot
//! `(p - s) % ring`, and a step at position `p` scans the slots of positions
//! `max(s, p - w)..=p`, at most two ranges. Softmax is order-free, so the ring's rotation does
//! not matter.

use std::ops::Range;

use ndarray::{ArrayView1, ArrayView3, ArrayView4, ArrayViewMut3};
use rayon::prelude::*;

use super::{DecodeOptions, Decoder, KvStore, check_prefill, check_step};
use crate::error::Result;
use crate::kernels::dispatch::{self, Isa, KV_BLOCK, KvData, KvPartial};
use crate::kernels::half::{f32_to_bf16, f32_to_f16};
use crate::shape::Shape;

/// Slots below which a step scans on the calling thread (a rayon round trip costs more).
const SERIAL_SLOTS: usize = 4096;

/// The smallest piece of a parallel scan, in slots.
const MIN_PIECE: usize = 2048;

/// The largest piece, in slots. A scan accumulates in f32, whose rounding error grows as the
/// square root of the keys summed (measured on Gaussian inputs: 6e-7 relative at 1K keys,
/// 1.3e-5 over pieces of 256K at a 1M context); pieces meet in f64 ([`GroupSum`]), so capping
/// them bounds the error at any context.
pub(crate) const MAX_PIECE: usize = 4096;

/// A query group's state summed over pieces in f64: the exact merge of [`KvPartial`]s, with
/// no rounding between pieces.
pub(crate) struct GroupSum {
    dv: usize,
    m: Vec<f64>,
    l: Vec<f64>,
    acc: Vec<f64>,
}

impl GroupSum {
    pub(crate) fn new(g: usize, dv: usize) -> Self {
        Self {
            dv,
            m: vec![f64::NEG_INFINITY; g],
            l: vec![0.0; g],
            acc: vec![0.0; g * dv],
        }
    }

    pub(crate) fn add(&mut self, p: &KvPartial) {
        for i in 0..self.m.len() {
            let pm = f64::from(p.m[i]);
            if pm == f64::NEG_INFINITY {
                continue;
            }
            let m = self.m[i].max(pm);
            // exp(-inf) = 0 rescales an empty sum away.
            let (a, b) = ((self.m[i] - m).exp(), (pm - m).exp());
            self.l[i] = self.l[i] * a + f64::from(p.l[i]) * b;
            let rows = i * self.dv..(i + 1) * self.dv;
            for (x, &y) in self.acc[rows.clone()].iter_mut().zip(&p.acc[rows]) {
                *x = *x * a + f64::from(y) * b;
            }
            self.m[i] = m;
        }
    }

    /// Query `i`'s normalized output (zero when it saw no key).
    pub(crate) fn write(&self, i: usize, out: &mut [f32]) {
        let inv = if self.l[i] > 0.0 {
            1.0 / self.l[i]
        } else {
            0.0
        };
        for (o, &a) in out.iter_mut().zip(&self.acc[i * self.dv..]) {
            *o = (a * inv) as f32;
        }
    }
}

#[derive(Debug, Clone)]
enum Buf {
    F32(Vec<f32>),
    Half(Vec<u16>),
}

impl Buf {
    fn new(store: KvStore, len: usize) -> Self {
        match store {
            KvStore::F32 => Buf::F32(vec![0.0; len]),
            KvStore::F16 | KvStore::Bf16 => Buf::Half(vec![0; len]),
        }
    }

    fn resize(&mut self, len: usize) {
        match self {
            Buf::F32(b) => b.resize(len, 0.0),
            Buf::Half(b) => b.resize(len, 0),
        }
    }
}

/// One KV head's cache. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct KvCache {
    store: KvStore,
    d: usize,
    dv: usize,
    slots: usize,
    k: Buf,
    v: Buf,
}

impl KvCache {
    /// A cache of at least `slots` slots (rounded up to whole blocks), zero-filled.
    pub fn new(store: KvStore, d: usize, dv: usize, slots: usize) -> Self {
        let slots = slots.max(1).next_multiple_of(KV_BLOCK);
        Self {
            store,
            d,
            dv,
            slots,
            k: Buf::new(store, slots * d),
            v: Buf::new(store, slots * dv),
        }
    }

    /// Slots held.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Grows to at least `slots` slots, keeping the contents.
    pub fn grow(&mut self, slots: usize) {
        if slots <= self.slots {
            return;
        }
        let slots = slots.next_multiple_of(KV_BLOCK);
        self.k.resize(slots * self.d);
        self.v.resize(slots * self.dv);
        self.slots = slots;
    }

    /// Bytes allocated.
    pub fn bytes(&self) -> usize {
        self.slots * (self.d + self.dv) * self.store.bytes()
    }

    /// Stores key `k` and value `v` in `slot`, rounded to the cache's format.
    pub fn set(&mut self, slot: usize, k: ArrayView1<'_, f32>, v: ArrayView1<'_, f32>) {
        assert!(slot < self.slots && k.len() == self.d && v.len() == self.dv);
        let (block, lane) = (slot / KV_BLOCK, slot % KV_BLOCK);
        let kat = |c: usize| (block * self.d + c) * KV_BLOCK + lane;
        let vat = slot * self.dv;
        match (&mut self.k, &mut self.v) {
            (Buf::F32(kb), Buf::F32(vb)) => {
                for (c, &x) in k.iter().enumerate() {
                    kb[kat(c)] = x;
                }
                for (o, &x) in vb[vat..vat + self.dv].iter_mut().zip(v.iter()) {
                    *o = x;
                }
            }
            (Buf::Half(kb), Buf::Half(vb)) => {
                let round = if self.store == KvStore::F16 {
                    f32_to_f16
                } else {
                    f32_to_bf16
                };
                for (c, &x) in k.iter().enumerate() {
                    kb[kat(c)] = round(x);
                }
                for (o, &x) in vb[vat..vat + self.dv].iter_mut().zip(v.iter()) {
                    *o = round(x);
                }
            }
            _ => unreachable!("K and V share one format"),
        }
    }

    /// The buffers as the scan reads them.
    pub fn data(&self) -> KvData<'_> {
        match (&self.k, &self.v, self.store) {
            (Buf::F32(k), Buf::F32(v), _) => KvData::F32 { k, v },
            (Buf::Half(k), Buf::Half(v), KvStore::F16) => KvData::F16 { k, v },
            (Buf::Half(k), Buf::Half(v), _) => KvData::Bf16 { k, v },
            _ => unreachable!("K and V share one format"),
        }
    }
}

/// A KV-cache decoder. See the [module docs](self).
#[derive(Debug)]
pub struct Cached {
    name: String,
    shape: Shape,
    scale: f32,
    isa: Isa,
    /// `None`: every key (dense); `Some(w)`: the sinks and the last `w + 1` positions.
    window: Option<usize>,
    sinks: usize,
    /// Slots of each main cache that a windowed decoder uses as its ring.
    ring: usize,
    /// Per (sequence, KV head): the sink keys (windowed decoders with sinks only).
    sink_caches: Vec<KvCache>,
    /// Per (sequence, KV head): every key (dense) or the ring.
    main: Vec<KvCache>,
    len: usize,
    capacity: usize,
    last_read: usize,
}

/// Which cache a scan piece reads.
#[derive(Debug, Clone, Copy)]
enum Which {
    Sinks,
    Main,
}

impl Cached {
    /// Exact attention over the whole cache, for `name` (a variant's spec, for messages).
    pub fn dense(name: &str, shape: &Shape, opts: &DecodeOptions) -> Result<Self> {
        Self::build(name, shape, opts, None, 0)
    }

    /// The first `sinks` keys plus the last `w + 1` positions (a causal sliding window of
    /// `w` keys before the query; `sinks = 0` for a plain window).
    pub fn streaming(
        name: &str,
        shape: &Shape,
        opts: &DecodeOptions,
        sinks: usize,
        w: usize,
    ) -> Result<Self> {
        Self::build(name, shape, opts, Some(w), sinks)
    }

    fn build(
        name: &str,
        shape: &Shape,
        opts: &DecodeOptions,
        window: Option<usize>,
        sinks: usize,
    ) -> Result<Self> {
        opts.check()?;
        let (d, dv) = (shape.head_dim(), shape.v_dim());
        let caches = shape.batch() * shape.kv_heads();
        let ring = window.map_or(0, |w| (w + 1).next_multiple_of(KV_BLOCK));
        let main_slots = match window {
            None => opts.capacity.max(KV_BLOCK),
            Some(_) => ring,
        };
        let sink_caches = if window.is_some() && sinks > 0 {
            (0..caches)
                .map(|_| KvCache::new(opts.kv, d, dv, sinks))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Self {
            name: name.to_string(),
            shape: *shape,
            scale: opts.scale_for(shape),
            isa: opts.isa(),
            window,
            sinks: if window.is_some() { sinks } else { 0 },
            ring,
            sink_caches,
            main: (0..caches)
                .map(|_| KvCache::new(opts.kv, d, dv, main_slots))
                .collect(),
            len: 0,
            capacity: opts.capacity,
            last_read: 0,
        })
    }

    /// The variant this decodes, as given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where position `pos` is stored, or `None` if no later query attends it.
    fn slot(&self, pos: usize, last: usize) -> Option<(Which, usize)> {
        match self.window {
            None => Some((Which::Main, pos)),
            Some(_) if pos < self.sinks => Some((Which::Sinks, pos)),
            Some(w) if pos + w >= last => Some((Which::Main, (pos - self.sinks) % self.ring)),
            Some(_) => None,
        }
    }

    /// The slot ranges the query at position `p` scans, per cache kind.
    fn ranges(&self, p: usize) -> Vec<(Which, Range<usize>)> {
        match self.window {
            None => vec![(Which::Main, 0..p + 1)],
            Some(w) => {
                let mut r = Vec::with_capacity(3);
                let s = self.sinks.min(p + 1);
                if s > 0 {
                    r.push((Which::Sinks, 0..s));
                }
                if p >= self.sinks {
                    let first = self.sinks.max(p.saturating_sub(w));
                    let count = p + 1 - first;
                    let a = (first - self.sinks) % self.ring;
                    if a + count <= self.ring {
                        r.push((Which::Main, a..a + count));
                    } else {
                        r.push((Which::Main, a..self.ring));
                        r.push((Which::Main, 0..a + count - self.ring));
                    }
                }
                r
            }
        }
    }

    fn cache(&self, which: Which, index: usize) -> &KvCache {
        match which {
            Which::Sinks => &self.sink_caches[index],
            Which::Main => &self.main[index],
        }
    }

    fn ensure_dense(&mut self, positions: usize) {
        if self.window.is_none() {
            let want = positions.max(self.capacity);
            for c in &mut self.main {
                if c.slots() < positions {
                    c.grow(want.max(2 * c.slots()));
                }
            }
        }
    }
}

impl Decoder for Cached {
    fn prefill(&mut self, k: ArrayView4<'_, f32>, v: ArrayView4<'_, f32>) -> Result<()> {
        check_prefill(&self.shape, &k, &v)?;
        let p = k.shape()[2];
        let last = self.len + p;
        self.ensure_dense(last);
        let hk = self.shape.kv_heads();
        for t in 0..p {
            let pos = self.len + t;
            // Positions no later query attends (before the final window) are not stored.
            let Some((which, slot)) = self.slot(pos, last) else {
                continue;
            };
            for b in 0..self.shape.batch() {
                for g in 0..hk {
                    let (kr, vr) = (
                        k.slice(ndarray::s![b, g, t, ..]),
                        v.slice(ndarray::s![b, g, t, ..]),
                    );
                    match which {
                        Which::Sinks => self.sink_caches[b * hk + g].set(slot, kr, vr),
                        Which::Main => self.main[b * hk + g].set(slot, kr, vr),
                    }
                }
            }
        }
        self.len = last;
        Ok(())
    }

    fn step(
        &mut self,
        q: ArrayView3<'_, f32>,
        k: ArrayView3<'_, f32>,
        v: ArrayView3<'_, f32>,
        mut out: ArrayViewMut3<'_, f32>,
    ) -> Result<()> {
        check_step(&self.shape, &q, &k, &v, &out)?;
        let pos = self.len;
        self.ensure_dense(pos + 1);
        let (bn, hk, d, dv) = (
            self.shape.batch(),
            self.shape.kv_heads(),
            self.shape.head_dim(),
            self.shape.v_dim(),
        );
        let g = self.shape.group_size();
        let (which, slot) = self.slot(pos, pos).expect("the newest key is always kept");
        for b in 0..bn {
            for h in 0..hk {
                let (kr, vr) = (
                    k.slice(ndarray::s![b, h, ..]),
                    v.slice(ndarray::s![b, h, ..]),
                );
                match which {
                    Which::Sinks => self.sink_caches[b * hk + h].set(slot, kr, vr),
                    Which::Main => self.main[b * hk + h].set(slot, kr, vr),
                }
            }
        }
        self.len = pos + 1;
        // The queries, scaled, one contiguous [g][d] block per (sequence, KV head).
        let qs: Vec<f32> = q.iter().map(|&x| x * self.scale).collect();
        let ranges = self.ranges(pos);
        let total: usize = ranges.iter().map(|(_, r)| r.len()).sum();
        self.last_read = total * bn * hk * (d + dv) * self.main[0].store.bytes();
        let threads = rayon::current_num_threads();
        let serial = total * bn * hk <= SERIAL_SLOTS || threads == 1;
        let piece = if serial {
            MAX_PIECE
        } else {
            // At least two pieces per thread over all caches, each a whole number of blocks.
            (total * bn * hk)
                .div_ceil(2 * threads)
                .clamp(MIN_PIECE, MAX_PIECE)
                .next_multiple_of(KV_BLOCK)
        };
        let mut pieces = Vec::new();
        for c in 0..bn * hk {
            for (which, r) in &ranges {
                let mut a = r.start;
                while a < r.end {
                    let e = r.end.min(a.saturating_add(piece));
                    pieces.push((c, *which, a..e));
                    a = e;
                }
            }
        }
        let isa = self.isa;
        let run = |(c, which, r): &(usize, Which, Range<usize>)| {
            let mut st = KvPartial::new(g, dv);
            let qg = &qs[c * g * d..(c + 1) * g * d];
            dispatch::kv_scan(
                isa,
                qg,
                d,
                self.cache(*which, *c).data(),
                r.clone(),
                &mut st,
            );
            (*c, st)
        };
        let parts: Vec<(usize, KvPartial)> = if serial {
            pieces.iter().map(run).collect()
        } else {
            pieces.par_iter().map(run).collect()
        };
        let mut merged: Vec<GroupSum> = (0..bn * hk).map(|_| GroupSum::new(g, dv)).collect();
        for (c, st) in &parts {
            merged[*c].add(st);
        }
        let mut row = vec![0f32; dv];
        for (c, st) in merged.iter().enumerate() {
            let (b, kvh) = (c / hk, c % hk);
            for i in 0..g {
                st.write(i, &mut row);
                out.slice_mut(ndarray::s![b, kvh * g + i, ..])
                    .iter_mut()
                    .zip(&row)
                    .for_each(|(o, &x)| *o = x);
            }
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.len
    }

    fn state_bytes(&self) -> usize {
        self.main
            .iter()
            .chain(&self.sink_caches)
            .map(KvCache::bytes)
            .sum()
    }

    fn bytes_read(&self) -> usize {
        self.last_read
    }
}
