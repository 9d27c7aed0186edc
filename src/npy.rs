//! A reader for NumPy `.npy` files of little-endian `float32` or `float16` in C order (format
//! versions 1.0, 2.0 and 3.0), the format of the real Q/K/V activations used as workloads
//! (activations are often stored in half precision; they are widened to `f32` exactly).
//!
//! Every malformed case is an [`ErrorKind::Format`] error naming the file and the problem.

use std::path::Path;

use ndarray::{ArrayD, IxDyn};

use crate::error::{Error, ErrorKind, Result};

const MAGIC: &[u8] = b"\x93NUMPY";

/// Reads a `float32` or `float16` array of any rank as `f32`.
pub fn read_f32(path: &Path) -> Result<ArrayD<f32>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_f32(&bytes).map_err(|message| {
        Error::new(ErrorKind::Format {
            path: path.display().to_string(),
            message,
        })
    })
}

/// Parses the bytes of a `.npy` file; the error is a message without the path.
pub fn parse_f32(bytes: &[u8]) -> std::result::Result<ArrayD<f32>, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy file (missing the \\x93NUMPY magic)".into());
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (header_len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err("truncated header".into());
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        _ => return Err(format!("unsupported .npy format version {major}.{minor}")),
    };
    let end = start + header_len;
    if bytes.len() < end {
        return Err(format!(
            "truncated header: {} bytes announced, {} present",
            header_len,
            bytes.len().saturating_sub(start)
        ));
    }
    let header = std::str::from_utf8(&bytes[start..end])
        .map_err(|_| "the header is not valid text".to_string())?;
    let descr = dict_value(header, "descr").ok_or("the header has no 'descr'")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let width = match descr {
        "<f4" | "=f4" => 4,
        "<f2" | "=f2" => 2,
        _ => {
            return Err(format!(
                "dtype is '{descr}', expected little-endian float32 ('<f4') or float16 ('<f2')"
            ));
        }
    };
    let fortran = dict_value(header, "fortran_order").ok_or("the header has no 'fortran_order'")?;
    if fortran.trim() != "False" {
        return Err("Fortran-ordered arrays are not supported; save in C order".into());
    }
    let shape_text = dict_value(header, "shape").ok_or("the header has no 'shape'")?;
    let shape = parse_shape(shape_text)?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .and_then(|c| c.checked_mul(width))
        .ok_or_else(|| format!("shape {shape:?} is too large"))?;
    let data = &bytes[end..];
    if data.len() != count {
        return Err(format!(
            "data holds {} bytes, but shape {shape:?} of {} needs {count}{}",
            data.len(),
            if width == 4 { "float32" } else { "float16" },
            if data.len() < count {
                " (truncated file)"
            } else {
                ""
            }
        ));
    }
    let values: Vec<f32> = if width == 4 {
        data.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        data.chunks_exact(2)
            .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect()
    };
    ArrayD::from_shape_vec(IxDyn(&shape), values).map_err(|e| e.to_string())
}

pub use crate::kernels::half::f16_to_f32;

/// The text of `key`'s value in a Python dict literal (up to the next top-level comma).
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[at + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let mut depth = 0;
    for (i, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => {
                depth -= 1;
                if depth == 0 && rest.starts_with('(') {
                    return Some(&rest[..=i]);
                }
            }
            ',' | '}' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    None
}

fn parse_shape(text: &str) -> std::result::Result<Vec<usize>, String> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| format!("malformed shape '{text}'"))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("malformed shape '{text}'"))
        })
        .collect()
}

/// The bytes of a version-1.0 `.npy` file holding `data` with `shape` (for tests and tools).
pub fn encode_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Pad so that the data starts on a 64-byte boundary, ending with a newline.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for x in data {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `bytes` with the first occurrence of `from` replaced by `to` (same length).
    fn patch(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
        let at = bytes
            .windows(from.len())
            .position(|w| w == from.as_bytes())
            .expect("pattern present");
        let mut out = bytes.to_vec();
        out[at..at + to.len()].copy_from_slice(to.as_bytes());
        out
    }

    #[test]
    fn halves_widen_exactly() {
        for (bits, value) in [
            (0x3c00u16, 1.0f32),
            (0xc000, -2.0),
            (0x7bff, 65504.0),
            (0x0400, 2f32.powi(-14)),
            (0x0001, 2f32.powi(-24)),
            (0x8001, -(2f32.powi(-24))),
            (0x3555, 0.333_251_95),
            (0x0000, 0.0),
            (0x7c00, f32::INFINITY),
            (0xfc00, f32::NEG_INFINITY),
        ] {
            assert_eq!(f16_to_f32(bits), value, "{bits:#06x}");
        }
        assert!(f16_to_f32(0x8000).is_sign_negative() && f16_to_f32(0x8000) == 0.0);
        assert!(f16_to_f32(0x7e00).is_nan());
        // Every finite half against Python's own conversion (struct format 'e'): the sum of
        // |v|, of v^2 and of bits * v over all 63488 finite halves.
        let (mut abs, mut sq, mut weighted, mut finite) = (0f64, 0f64, 0f64, 0);
        for h in 0..=u16::MAX {
            let v = f64::from(f16_to_f32(h));
            if v.is_finite() {
                abs += v.abs();
                sq += v * v;
                weighted += f64::from(h) * v;
                finite += 1;
            }
        }
        assert_eq!(finite, 63488);
        assert_eq!(abs, 201261055.875);
        assert!((sq / 6837111182676.966 - 1.0).abs() < 1e-12, "{sq}");
        assert!(
            (weighted / -3297461139455.7676 - 1.0).abs() < 1e-12,
            "{weighted}"
        );
    }

    #[test]
    fn float16_files_read_as_f32() {
        let halves: [u16; 4] = [0x3c00, 0xc000, 0x3555, 0x0001];
        let mut bytes = encode_f32(&[2, 2], &[0.0; 4]);
        // Re-encode as '<f2': the same header with the dtype swapped, two bytes a value.
        let header_end = bytes.len() - 16;
        bytes.truncate(header_end);
        let mut bytes = patch(&bytes, "<f4", "<f2");
        for h in halves {
            bytes.extend_from_slice(&h.to_le_bytes());
        }
        let a = parse_f32(&bytes).unwrap();
        assert_eq!(a.shape(), &[2, 2]);
        assert_eq!(
            a.iter().copied().collect::<Vec<_>>(),
            vec![1.0, -2.0, 0.333_251_95, 2f32.powi(-24)]
        );
        // A float16 file with a float32 byte count is truncated... or too long.
        bytes.push(0);
        assert!(parse_f32(&bytes).unwrap_err().contains("float16 needs 8"));
    }

    #[test]
    fn round_trips() {
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5).collect();
        let a = parse_f32(&encode_f32(&[2, 3, 4], &data)).unwrap();
        assert_eq!(a.shape(), &[2, 3, 4]);
        assert_eq!(a.as_slice().unwrap(), &data[..]);
        let a = parse_f32(&encode_f32(&[5], &data[..5])).unwrap();
        assert_eq!(a.shape(), &[5]);
    }

    #[test]
    fn malformed_files_say_why() {
        let good = encode_f32(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let err = |b: &[u8]| parse_f32(b).unwrap_err();
        assert!(err(b"hello world").contains("not a .npy"));
        assert!(err(&good[..good.len() - 3]).contains("truncated"));
        assert!(err(&good[..20]).contains("truncated header"));
        assert!(err(&patch(&good, "<f4", "<f8")).contains("'<f8'"));
        assert!(err(&patch(&good, "<f4", ">f2")).contains("'>f2'"));
        assert!(err(&patch(&good, "False", "True ")).contains("Fortran"));
        assert!(err(&patch(&good, "(2, 2)", "(2, x)")).contains("malformed shape"));
        let mut v9 = good.clone();
        v9[6] = 9;
        assert!(err(&v9).contains("version 9"));
    }
}
