//! `lsh(buckets, rounds, chunk, seed)`: Reformer-style locality-sensitive hashing (Kitaev et
//! al. 2020), with queries and keys hashed separately by one rotation per round as SMYRF
//! (Daras et al. 2020) does; exact softmax over the union of the keys it selects.
//!
//! Per round `r`, a seeded Gaussian rotation `R_r` (`[d, buckets / 2]`, shared by every head)
//! hashes a vector `x` to `argmax([x R_r, -x R_r])` (angular LSH: nearby directions share a
//! bucket). The valid keys are sorted by (bucket, position) and cut into chunks of `chunk`;
//! each query joins the chunk where its own bucket begins among the sorted keys and attends
//! that chunk and the one before it (Reformer's look-back to the neighbouring chunk; placing
//! queries by bucket rather than by rank keeps one query, or a few, against a long KV
//! locality-sensitive). A query also
//! always attends its own position (so a causal query is never left without a key). The
//! rounds are combined exactly: each (query, key) score is lowered by the log of the number of
//! rounds that chose the pair, so the sum over rounds of the chunk softmaxes is the softmax
//! over the *union* of the chosen keys (Reformer's duplicate correction), accumulated with an
//! online softmax in `f32`. Its own check is the f64 oracle under that union.
//!
//! Cost O(rounds n (chunk (d + d_v) + d buckets / 2)) plus the sorts; memory O(rounds n) per
//! busy head for the orders and O(n d_v) for the running state.

use std::fmt;

use ndarray::{Array2, ArrayView2, ArrayViewMut2, s};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

use crate::attention::{Attention, Call, Cost, Fidelity, Options, Out};
use crate::error::Result;
use crate::kernels::gemm::{gemm, gemm_flops};
use crate::modifier::Feature;
use crate::parallel::for_each_head_with;
use crate::shape::Shape;
use crate::spec::{ParamInfo, Params, VariantInfo};
use crate::variants::shared::{allowed_keys, head};

/// `lsh(buckets=64,rounds=2,chunk=64,seed=0)`.
pub const INFO: VariantInfo = VariantInfo {
    name: "lsh",
    summary: "Reformer/SMYRF LSH: Q and K hashed by one random rotation per round; a query attends the sorted keys' chunk where its bucket begins and the one before; exact softmax over the union",
    time: "O(rounds n (chunk + buckets) d)",
    memory: "O(rounds n + n d_v) per busy head",
    params: &[
        ParamInfo {
            name: "buckets",
            default: "64",
            help: "hash buckets per round (even, at least 2)",
        },
        ParamInfo {
            name: "rounds",
            default: "2",
            help: "hashing rounds (at least 1); their chosen keys are united",
        },
        ParamInfo {
            name: "chunk",
            default: "64",
            help: "keys per chunk of the sorted order",
        },
        ParamInfo {
            name: "seed",
            default: "0",
            help: "seed of the rotations",
        },
    ],
    presets: &[],
    preview: "",
    build,
};

/// Reformer-style LSH attention. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lsh {
    /// Buckets per round.
    pub buckets: usize,
    /// Hashing rounds.
    pub rounds: usize,
    /// Keys per chunk.
    pub chunk: usize,
    /// Seed of the rotations.
    pub seed: u64,
}

fn build(p: &Params) -> Result<Box<dyn Attention>> {
    let buckets = p.positive("buckets")?;
    if buckets < 2 || buckets % 2 != 0 || buckets > 1 << 16 {
        return Err(p.invalid(
            "buckets",
            &format!("must be even, from 2 to 65536, got {buckets}"),
        ));
    }
    let rounds = p.positive("rounds")?;
    if rounds > 64 {
        return Err(p.invalid("rounds", &format!("at most 64, got {rounds}")));
    }
    let chunk = p.positive("chunk")?;
    if chunk > 8192 {
        return Err(p.invalid("chunk", &format!("at most 8192, got {chunk}")));
    }
    Ok(Box::new(Lsh {
        buckets,
        rounds,
        chunk,
        seed: p.parse("seed", "a non-negative integer")?,
    }))
}

impl fmt::Display for Lsh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        INFO.write_spec(
            f,
            &[
                Some(&self.buckets),
                Some(&self.rounds),
                Some(&self.chunk),
                Some(&self.seed),
            ],
        )
    }
}

/// One head's hashing: per round, the key chunk of every query and of every valid key, the
/// valid keys in sorted order, and the queries of each chunk.
struct Hashed {
    /// `[round][query]`: the key chunk where its bucket starts in the sorted keys.
    q_chunk: Vec<Vec<u32>>,
    /// `[round][key]`: its chunk of the sorted keys.
    k_chunk: Vec<Vec<u32>>,
    /// `[round]`: the valid keys sorted by (bucket, position).
    k_order: Vec<Vec<u32>>,
    /// `[round][chunk]`: the queries placed in that chunk, in order.
    q_groups: Vec<Vec<Vec<u32>>>,
}

impl Lsh {
    /// The rotations, one per round: `[d, buckets / 2]`.
    fn rotations(&self, d: usize) -> Vec<Array2<f32>> {
        (0..self.rounds)
            .map(|r| {
                let mut rng = StdRng::seed_from_u64(self.seed.wrapping_add(r as u64 * 0x9E37));
                Array2::from_shape_simple_fn((d, self.buckets / 2), || {
                    let x: f64 = StandardNormal.sample(&mut rng);
                    x as f32
                })
            })
            .collect()
    }

    /// The chunks of `key_len` valid keys (at least 1).
    fn chunks(&self, key_len: usize) -> usize {
        key_len.div_ceil(self.chunk).max(1)
    }

    /// The bucket of every row of `x` under `rotation`.
    fn buckets_of(&self, x: ArrayView2<f32>, rotation: &Array2<f32>) -> Vec<u32> {
        let mut proj = Array2::zeros((x.nrows(), rotation.ncols()));
        gemm(1.0, &x, &rotation.view(), 0.0, &mut proj.view_mut());
        proj.outer_iter()
            .map(|row| {
                // argmax over [row, -row]: the first of the largest.
                let (mut best, mut at) = (f32::NEG_INFINITY, 0u32);
                for (c, &v) in row.iter().enumerate() {
                    if v > best {
                        (best, at) = (v, c as u32);
                    }
                }
                for (c, &v) in row.iter().enumerate() {
                    if -v > best {
                        (best, at) = (-v, (row.len() + c) as u32);
                    }
                }
                at
            })
            .collect()
    }

    /// Hashes (b, h): the keys past the batch element's key length are left out, and each
    /// query joins the chunk where its bucket begins among the sorted keys (so a query meets
    /// the keys of its own and the preceding buckets whatever the number of queries).
    fn hash(&self, call: &Call<'_>, b: usize, h: usize, rotations: &[Array2<f32>]) -> Hashed {
        let key_len = call.key_len(b);
        let (q, k, _) = head(call, b, h);
        let k = k.slice_move(s![..key_len, ..]);
        let chunks = self.chunks(key_len);
        let mut out = Hashed {
            q_chunk: Vec::new(),
            k_chunk: Vec::new(),
            k_order: Vec::new(),
            q_groups: Vec::new(),
        };
        for rot in rotations {
            let kb = self.buckets_of(k, rot);
            let mut order: Vec<u32> = (0..key_len as u32).collect();
            order.sort_by_key(|&j| (kb[j as usize], j));
            let mut k_chunk = vec![0u32; key_len];
            for (rank, &j) in order.iter().enumerate() {
                k_chunk[j as usize] = (rank / self.chunk) as u32;
            }
            let sorted_buckets: Vec<u32> = order.iter().map(|&j| kb[j as usize]).collect();
            let mut groups = vec![Vec::new(); chunks];
            let q_chunk: Vec<u32> = self
                .buckets_of(q, rot)
                .into_iter()
                .enumerate()
                .map(|(i, bucket)| {
                    let at = sorted_buckets.partition_point(|&x| x < bucket);
                    let c = (at / self.chunk).min(chunks - 1);
                    groups[c].push(i as u32);
                    c as u32
                })
                .collect();
            out.q_chunk.push(q_chunk);
            out.k_chunk.push(k_chunk);
            out.k_order.push(order);
            out.q_groups.push(groups);
        }
        out
    }

    /// The keys of key chunks `c - 1` and `c` of round `r`, in sorted order.
    fn chunk_keys<'h>(&self, hashed: &'h Hashed, r: usize, c: usize) -> &'h [u32] {
        let order = &hashed.k_order[r];
        let lo = (c.saturating_sub(1) * self.chunk).min(order.len());
        let hi = ((c + 1) * self.chunk).min(order.len());
        &order[lo..hi]
    }

    /// The number of rounds that chose the pair (query `i`, key `j`).
    fn count(hashed: &Hashed, i: usize, j: usize) -> u32 {
        (0..hashed.q_chunk.len())
            .filter(|&r| {
                let (qc, kc) = (hashed.q_chunk[r][i], hashed.k_chunk[r][j]);
                kc == qc || kc + 1 == qc
            })
            .count() as u32
    }

    /// The own key of query `i`, if it is a valid key.
    fn own_key(call: &Call<'_>, b: usize, i: usize) -> Option<usize> {
        let p = call.shape().geometry().pos(i);
        (p >= 0 && (p as usize) < call.key_len(b)).then_some(p as usize)
    }

    fn head_forward(
        &self,
        call: &Call<'_>,
        (b, h): (usize, usize),
        rotations: &[Array2<f32>],
        ws: &mut Scratch,
        mut out: ArrayViewMut2<f32>,
    ) {
        let shape = call.shape();
        let (n_q, d, dv) = (shape.n_q(), shape.head_dim(), shape.v_dim());
        let (q, k, v) = head(call, b, h);
        let scale = call.scale();
        let hashed = self.hash(call, b, h, rotations);
        let chunks = self.chunks(call.key_len(b));
        // Running maxima and sums per query; `out` is the accumulator.
        ws.m.clear();
        ws.m.resize(n_q, f32::NEG_INFINITY);
        ws.l.clear();
        ws.l.resize(n_q, 0.0);
        out.fill(0.0);
        for r in 0..self.rounds {
            for c in 0..chunks {
                let qs = &hashed.q_groups[r][c];
                let ks = self.chunk_keys(&hashed, r, c);
                if qs.is_empty() || ks.is_empty() {
                    continue;
                }
                let (qn, kn) = (qs.len(), ks.len());
                let qg = gather(q, qs, &mut ws.qg, d);
                let kg = gather(k, ks, &mut ws.kg, d);
                ws.s.resize(qn * kn, 0.0);
                let mut sc = ArrayViewMut2::from_shape((qn, kn), &mut ws.s[..qn * kn])
                    .expect("sized above");
                gemm(scale, &qg, &kg.t(), 0.0, &mut sc);
                for (a, &i) in qs.iter().enumerate() {
                    let i = i as usize;
                    let allowed = allowed_keys(call, b, i);
                    let mut row = sc.row_mut(a);
                    for (t, &j) in ks.iter().enumerate() {
                        let j = j as usize;
                        row[t] = if j < allowed {
                            row[t] - (Self::count(&hashed, i, j) as f32).ln()
                        } else {
                            f32::NEG_INFINITY
                        };
                    }
                }
                let vg = gather(v, ks, &mut ws.vg, dv);
                for (a, &i) in qs.iter().enumerate() {
                    let i = i as usize;
                    let row = sc.row(a);
                    let row = row.as_slice().expect("a standard-layout view");
                    online_update(&mut ws.m[i], &mut ws.l[i], out.row_mut(i), row, &vg);
                }
            }
        }
        // Its own position, where no round chose it.
        for i in 0..n_q {
            if let Some(j) = Self::own_key(call, b, i)
                && Self::count(&hashed, i, j) == 0
            {
                let s = scale * q.row(i).dot(&k.row(j));
                let vj = v.slice(s![j..j + 1, ..]);
                online_update(&mut ws.m[i], &mut ws.l[i], out.row_mut(i), &[s], &vj);
            }
        }
        for (mut row, &l) in out.outer_iter_mut().zip(&ws.l) {
            let inv = if l > 0.0 { 1.0 / l } else { 0.0 };
            row.mapv_inplace(|x| x * inv);
        }
    }
}

/// The rows `idx` of `x` (`[n, width]`), gathered into `buf`: `[idx.len(), width]`.
fn gather<'b>(x: ArrayView2<f32>, idx: &[u32], buf: &'b mut Vec<f32>, width: usize) -> ArrayView2<'b, f32> {
    buf.clear();
    for &i in idx {
        buf.extend(x.row(i as usize).iter());
    }
    ArrayView2::from_shape((idx.len(), width), &buf[..]).expect("gathered rows")
}

/// One online-softmax step of a query row: scores `s` (masked ones `-inf`) against the value
/// rows `v` (`[s.len(), d_v]`), into its running maximum `m`, sum `l` and accumulator `acc`.
fn online_update(m: &mut f32, l: &mut f32, mut acc: ndarray::ArrayViewMut1<f32>, s: &[f32], v: &ArrayView2<f32>) {
    let top = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if top == f32::NEG_INFINITY {
        return;
    }
    let m_new = m.max(top);
    let rescale = (*m - m_new).exp();
    if rescale != 1.0 {
        acc.mapv_inplace(|x| x * rescale);
        *l *= rescale;
    }
    *m = m_new;
    for (t, &x) in s.iter().enumerate() {
        if x == f32::NEG_INFINITY {
            continue;
        }
        let p = (x - m_new).exp();
        *l += p;
        acc.zip_mut_with(&v.row(t), |a, &y| *a += p * y);
    }
}

/// One worker's scratch.
#[derive(Default)]
struct Scratch {
    m: Vec<f32>,
    l: Vec<f32>,
    qg: Vec<f32>,
    kg: Vec<f32>,
    vg: Vec<f32>,
    s: Vec<f32>,
}

impl Attention for Lsh {
    fn name(&self) -> &'static str {
        INFO.name
    }

    fn fidelity(&self) -> Fidelity {
        Fidelity::Selected
    }

    fn supports(&self, feature: Feature) -> bool {
        feature == Feature::KeyPadding
    }

    /// The expected cost: the query groups' sizes depend on the data, so each query is
    /// counted against two full chunks of keys per round.
    fn cost(&self, s: &Shape, _opts: &Options, threads: usize) -> Cost {
        let (n_q, n_kv, d, dv) = (s.n_q(), s.n_kv(), s.head_dim(), s.v_dim());
        let chunks = self.chunks(n_kv);
        let half = self.buckets / 2;
        let keys = (2 * self.chunk).min(n_kv);
        let per_head = self.rounds as f64
            * (gemm_flops(n_q + n_kv, d, half) + gemm_flops(n_q, d + dv, keys));
        let heads = s.batch() * s.heads();
        let busy = heads.min(threads) as u64;
        let per_group = n_q.div_ceil(chunks);
        // Per round the chunks of queries and keys, the key order and the query groups; the
        // hash projections of the longer side; the running state; a group's gathers and
        // scores.
        let words = 2 * self.rounds * (n_q + n_kv)
            + n_q.max(n_kv) * (half + 1)
            + 2 * n_q
            + per_group * d
            + keys * (d + dv)
            + per_group * keys;
        Cost {
            flops: per_head * heads as f64,
            workspace_bytes: busy * words as u64 * 4 + (self.rounds * d * half) as u64 * 4,
        }
    }

    fn forward(&self, call: &Call<'_>, out: Out<'_>) -> Result<()> {
        let rotations = self.rotations(call.shape().head_dim());
        for_each_head_with(out.into_view(), Scratch::default, |ws, b, h, head_out| {
            self.head_forward(call, (b, h), &rotations, ws, head_out)
        });
        Ok(())
    }

    fn chosen(&self, call: &Call<'_>, b: usize, h: usize, rows: &[usize]) -> Option<Vec<Vec<u32>>> {
        let rotations = self.rotations(call.shape().head_dim());
        let hashed = self.hash(call, b, h, &rotations);
        let keys = rows
            .iter()
            .map(|&i| {
                let allowed = allowed_keys(call, b, i);
                let mut keys: Vec<u32> = (0..self.rounds)
                    .flat_map(|r| {
                        let c = hashed.q_chunk[r][i] as usize;
                        self.chunk_keys(&hashed, r, c).iter().copied()
                    })
                    .filter(|&j| (j as usize) < allowed)
                    .collect();
                keys.extend(Self::own_key(call, b, i).map(|j| j as u32));
                keys
            })
            .collect();
        Some(keys)
    }

    fn with_seed(&self, seed: u64) -> Option<Box<dyn Attention>> {
        Some(Box::new(Lsh { seed, ..*self }))
    }
}
