//! Attention-map data: per-head statistics ([`MapStats`], [`HeadKind`]) that make specialised
//! heads visible (heads that look at the previous token, stay within a local band, or park
//! their attention on the first token), the rows of `maps.csv` ([`MapRow`]), and their
//! markdown table. A leaf: the maps are computed and drawn by
//! [`harness::maps`](crate::harness::maps) and read back by the report.

use std::fmt::Write as _;
use std::path::Path;

use ndarray::Array2;

use crate::error::{Error, ErrorKind, Result};

/// The band of [`MapStats::local_mass`]: keys within this distance of the query.
pub const LOCAL_BAND: usize = 32;

/// Statistics of one attention map, each a mean over its query rows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MapStats {
    /// Shannon entropy of each row's weights, nats (0 = one key; ln n = uniform).
    pub entropy: f64,
    /// Weight within `+-LOCAL_BAND` positions of the query.
    pub local_mass: f64,
    /// Weight on the first token.
    pub first_mass: f64,
    /// Weight on the previous token (`j = i - 1`; rows `i >= 1`).
    pub prev_mass: f64,
}

impl MapStats {
    /// The statistics of `w` (`[n_q, n_kv]`, self-attention positions).
    pub fn of(w: &Array2<f64>) -> Self {
        let n = w.nrows().max(1) as f64;
        let mut s = Self {
            entropy: 0.0,
            local_mass: 0.0,
            first_mass: 0.0,
            prev_mass: 0.0,
        };
        for (i, row) in w.outer_iter().enumerate() {
            s.entropy -= row
                .iter()
                .filter(|&&p| p > 0.0)
                .map(|&p| p * p.ln())
                .sum::<f64>();
            let lo = i.saturating_sub(LOCAL_BAND);
            let hi = (i + LOCAL_BAND + 1).min(row.len());
            if lo < hi {
                s.local_mass += row.slice(ndarray::s![lo..hi]).sum();
            }
            s.first_mass += row[0];
            if i >= 1 && i - 1 < row.len() {
                s.prev_mass += row[i - 1];
            }
        }
        s.entropy /= n;
        s.local_mass /= n;
        s.first_mass /= n;
        s.prev_mass /= (w.nrows().saturating_sub(1)).max(1) as f64;
        s
    }

    /// What the head does, from its statistics (thresholds: more than 0.3 of the weight on
    /// the previous or the first token, more than 0.6 in the local band; heuristics for
    /// spotting heads, not a taxonomy).
    pub fn kind(&self) -> HeadKind {
        if self.prev_mass > 0.3 {
            HeadKind::PreviousToken
        } else if self.first_mass > 0.3 {
            HeadKind::FirstToken
        } else if self.local_mass > 0.6 {
            HeadKind::Local
        } else {
            HeadKind::Broad
        }
    }
}

/// The kind of an attention head ([`MapStats::kind`]), written as `previous-token`,
/// `first-token`, `local` or `broad`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeadKind {
    /// More than 0.3 of the weight on the previous token.
    PreviousToken,
    /// More than 0.3 of the weight on the first token (an attention sink).
    FirstToken,
    /// More than 0.6 of the weight within [`LOCAL_BAND`] positions.
    Local,
    /// None of the above.
    Broad,
}

impl HeadKind {
    /// Every kind, in the order [`MapStats::kind`] tests them.
    pub const ALL: [HeadKind; 4] = [
        HeadKind::PreviousToken,
        HeadKind::FirstToken,
        HeadKind::Local,
        HeadKind::Broad,
    ];
}

impl std::fmt::Display for HeadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            HeadKind::PreviousToken => "previous-token",
            HeadKind::FirstToken => "first-token",
            HeadKind::Local => "local",
            HeadKind::Broad => "broad",
        })
    }
}

/// One row of `maps.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct MapRow {
    /// The sequence (file prefix for npy workloads).
    pub sequence: String,
    /// The head.
    pub head: usize,
    /// `full` or the variant spec.
    pub variant: String,
    /// Statistics of the map (the columns entropy, local_mass, first_mass, prev_mass).
    pub stats: MapStats,
    /// Mean total-variation distance of each row from full attention's (0 = identical,
    /// 1 = disjoint); empty for full attention itself.
    pub tv_vs_full: Option<f64>,
    /// The image holding this head's panels.
    pub image: String,
}

/// The statistics table of every map, grouped by image.
pub fn maps_table(rows: &[MapRow], image_prefix: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| sequence | head | kind (full) | variant | entropy | local ±{LOCAL_BAND} | first token | previous token | TV vs full |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    let mut kind = HeadKind::Broad;
    for r in rows {
        if r.variant == "full" {
            kind = r.stats.kind();
        }
        let _ = writeln!(
            md,
            "| {} | {} | {} | `{}` | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            r.sequence,
            r.head,
            kind,
            r.variant,
            r.stats.entropy,
            r.stats.local_mass,
            r.stats.first_mass,
            r.stats.prev_mass,
            r.tv_vs_full.map_or("-".into(), |t| format!("{t:.3}"))
        );
    }
    let mut seen = Vec::new();
    for r in rows {
        if !seen.contains(&&r.image) {
            seen.push(&r.image);
            let _ = writeln!(
                md,
                "\n![{} head {}]({image_prefix}{})",
                r.sequence, r.head, r.image
            );
        }
    }
    md
}

const COLUMNS: [&str; 9] = [
    "sequence",
    "head",
    "variant",
    "entropy",
    "local_mass",
    "first_mass",
    "prev_mass",
    "tv_vs_full",
    "image",
];

/// Writes `rows` as `maps.csv` (the columns of [`MapRow`]).
pub fn write_csv(path: &Path, rows: &[MapRow]) -> Result<()> {
    let mut writer = csv::Writer::from_path(path).map_err(|e| Error::io(path, e))?;
    writer
        .write_record(COLUMNS)
        .map_err(|e| Error::io(path, e))?;
    for r in rows {
        let s = r.stats;
        writer
            .write_record([
                r.sequence.clone(),
                r.head.to_string(),
                r.variant.clone(),
                s.entropy.to_string(),
                s.local_mass.to_string(),
                s.first_mass.to_string(),
                s.prev_mass.to_string(),
                r.tv_vs_full.map_or(String::new(), |t| t.to_string()),
                r.image.clone(),
            ])
            .map_err(|e| Error::io(path, e))?;
    }
    writer.flush().map_err(|e| Error::io(path, e))
}

/// Reads a `maps.csv` written by [`write_csv`].
pub fn read_csv(path: &Path) -> Result<Vec<MapRow>> {
    let mut reader = csv::Reader::from_path(path).map_err(|e| Error::io(path, e))?;
    let header = reader.headers().map_err(|e| Error::io(path, e))?.clone();
    if header.iter().ne(COLUMNS) {
        return Err(malformed(
            path,
            format!("expected the columns {}", COLUMNS.join(",")),
        ));
    }
    let mut rows = Vec::new();
    for (line, record) in reader.records().enumerate() {
        let record = record.map_err(|e| Error::format(path, e.to_string(), e))?;
        let bad = |what: &str| malformed(path, format!("row {}: bad {what}", line + 2));
        let num = |i: usize| record[i].parse::<f64>().map_err(|_| bad(COLUMNS[i]));
        rows.push(MapRow {
            sequence: record[0].to_string(),
            head: record[1].parse().map_err(|_| bad("head"))?,
            variant: record[2].to_string(),
            stats: MapStats {
                entropy: num(3)?,
                local_mass: num(4)?,
                first_mass: num(5)?,
                prev_mass: num(6)?,
            },
            tv_vs_full: match &record[7] {
                "" => None,
                _ => Some(num(7)?),
            },
            image: record[8].to_string(),
        });
    }
    Ok(rows)
}

fn malformed(path: &Path, message: String) -> Error {
    Error::new(ErrorKind::Format {
        path: path.display().to_string(),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_of_known_maps() {
        // Previous-token head on 4 positions (row 0 looks at itself).
        let mut w = Array2::zeros((4, 4));
        w[[0, 0]] = 1.0;
        for i in 1..4 {
            w[[i, i - 1]] = 1.0;
        }
        let s = MapStats::of(&w);
        assert_eq!((s.entropy, s.prev_mass, s.local_mass), (0.0, 1.0, 1.0));
        assert_eq!(s.first_mass, 0.5);
        assert_eq!(s.kind(), HeadKind::PreviousToken);
        // Uniform: entropy ln n, first-token mass 1/n.
        let u = Array2::from_elem((100, 100), 0.01);
        let s = MapStats::of(&u);
        assert!((s.entropy - 100f64.ln()).abs() < 1e-12);
        assert!((s.first_mass - 0.01).abs() < 1e-12);
        assert_eq!(s.kind(), HeadKind::Broad);
        // Everything on the first token.
        let mut f = Array2::zeros((50, 50));
        f.column_mut(0).fill(1.0);
        assert_eq!(MapStats::of(&f).kind(), HeadKind::FirstToken);
        assert_eq!(HeadKind::FirstToken.to_string(), "first-token");
    }
}
