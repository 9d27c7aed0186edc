//! A reader for NumPy `.npy` files of little-endian `float32` or `float16` in C order (format
//! versions 1.0, 2.0 and 3.0), the format of the real Q/K/V activations used as workloads
//! (activations are often stored in half precision; they are widened to `f32` exactly).
//!
//! The header is parsed as the Python dict literal it is (strings with either quote and
//! escapes, `True`/`False`, integers, tuples, trailing commas), and held to what `numpy.load`
//! accepts: exactly the keys `descr`, `fortran_order` and `shape`, a tuple of non-negative
//! integers for the shape, a header of at most [`MAX_HEADER`] bytes. Only regular files are
//! read, and the data's size is checked against the file's length before anything is
//! allocated, so a FIFO, a device or a truncated file is an error, never a hang or an
//! unbounded read. Every malformed case is an [`ErrorKind::Format`] error naming the file and
//! the problem.

use std::io::Read;
use std::path::Path;

use ndarray::{ArrayD, IxDyn};

use crate::error::{Error, ErrorKind, Result};

const MAGIC: &[u8] = b"\x93NUMPY";

/// The longest header read, in bytes: `numpy.load`'s default `max_header_size`.
pub const MAX_HEADER: usize = 10_000;

/// What a `.npy` header says: the element type and the shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Bytes per stored element: 4 (`<f4`) or 2 (`<f2`).
    pub width: usize,
    /// The array's shape (C order).
    pub shape: Vec<usize>,
    /// Where the data starts: magic, version, length field and header.
    pub data_offset: usize,
}

impl Header {
    /// Elements in the array.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of stored data the header announces.
    pub fn data_bytes(&self) -> usize {
        self.len() * self.width
    }

    /// Bytes of the array once widened to `f32`.
    pub fn f32_bytes(&self) -> u64 {
        self.len() as u64 * 4
    }
}

fn format_error(path: &Path, message: String) -> Error {
    Error::new(ErrorKind::Format {
        path: path.display().to_string(),
        message,
    })
}

/// Opens `path` if it is a regular file (symbolic links followed), with its length.
fn open_regular(path: &Path) -> Result<(std::fs::File, u64)> {
    let link = std::fs::symlink_metadata(path).map_err(|e| Error::io(path, e))?;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if link.file_type().is_symlink() && e.kind() == std::io::ErrorKind::NotFound => {
            let target = std::fs::read_link(path)
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            return Err(format_error(
                path,
                format!("a symbolic link to '{target}', which does not exist"),
            ));
        }
        Err(e) => return Err(Error::io(path, e)),
    };
    if !meta.is_file() {
        let what = if meta.is_dir() {
            "a directory"
        } else {
            "not a regular file (a FIFO, socket or device)"
        };
        return Err(format_error(path, format!("{what}; expected a .npy file")));
    }
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    Ok((file, meta.len()))
}

/// Reads the header of `path` without its data.
pub fn read_header(path: &Path) -> Result<Header> {
    let (file, len) = open_regular(path)?;
    header_of_file(path, file, len).map(|(h, _)| h)
}

fn header_of_file(path: &Path, file: std::fs::File, len: u64) -> Result<(Header, std::fs::File)> {
    let mut file = file;
    let prefix_len = (len as usize).min(12 + MAX_HEADER);
    let mut prefix = vec![0u8; prefix_len];
    file.read_exact(&mut prefix)
        .map_err(|e| Error::io(path, e))?;
    let header = parse_header(&prefix).map_err(|m| format_error(path, m))?;
    let expected = header.data_offset as u64 + header.data_bytes() as u64;
    if len != expected {
        return Err(format_error(
            path,
            size_message(&header, len - header.data_offset as u64),
        ));
    }
    // Back to the data's start: the prefix may have read into it.
    use std::io::{Seek, SeekFrom};
    file.seek(SeekFrom::Start(header.data_offset as u64))
        .map_err(|e| Error::io(path, e))?;
    Ok((header, file))
}

fn size_message(h: &Header, present: u64) -> String {
    format!(
        "data holds {present} bytes, but shape {:?} of {} needs {}{}",
        h.shape,
        if h.width == 4 { "float32" } else { "float16" },
        h.data_bytes(),
        if present < h.data_bytes() as u64 {
            " (truncated file)"
        } else {
            ""
        }
    )
}

/// Reads a `float32` or `float16` array of any rank as `f32`.
pub fn read_f32(path: &Path) -> Result<ArrayD<f32>> {
    read_f32_within(path, u64::MAX)
}

/// Like [`read_f32`], refusing (before allocating) an array whose `f32` form would need
/// more than `max_bytes`.
pub fn read_f32_within(path: &Path, max_bytes: u64) -> Result<ArrayD<f32>> {
    let (file, len) = open_regular(path)?;
    let (header, mut file) = header_of_file(path, file, len)?;
    if header.f32_bytes() > max_bytes {
        return Err(format_error(
            path,
            format!(
                "shape {:?} needs {} MB as float32, over the memory budget of {} MB",
                header.shape,
                header.f32_bytes() >> 20,
                max_bytes >> 20
            ),
        ));
    }
    let mut data = vec![0u8; header.data_bytes()];
    file.read_exact(&mut data).map_err(|e| Error::io(path, e))?;
    Ok(decode(&header, &data))
}

/// Parses the bytes of a `.npy` file; the error is a message without the path.
pub fn parse_f32(bytes: &[u8]) -> std::result::Result<ArrayD<f32>, String> {
    let header = parse_header(bytes)?;
    let data = &bytes[header.data_offset..];
    if data.len() != header.data_bytes() {
        return Err(size_message(&header, data.len() as u64));
    }
    Ok(decode(&header, data))
}

fn decode(header: &Header, data: &[u8]) -> ArrayD<f32> {
    let values: Vec<f32> = if header.width == 4 {
        data.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        data.chunks_exact(2)
            .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect()
    };
    ArrayD::from_shape_vec(IxDyn(&header.shape), values)
        .expect("the element count is the shape's product")
}

/// Reads a 1-D `.npy` of token ids (`<i4` or `<i8`); an error for another dtype or rank, a
/// truncated file, or an id that is negative or above `u32::MAX`.
pub fn read_token_ids(path: &Path) -> Result<Vec<u32>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(format_error(path, "not a regular file".into()));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let header = parse_header_of(&bytes, INTS).map_err(|m| format_error(path, m))?;
    if header.shape.len() != 1 {
        return Err(format_error(
            path,
            format!("token ids must be 1-D, got shape {:?}", header.shape),
        ));
    }
    let data = &bytes[header.data_offset..];
    if data.len() < header.data_bytes() {
        return Err(format_error(
            path,
            format!(
                "truncated: {} bytes of data announced, {} present",
                header.data_bytes(),
                data.len()
            ),
        ));
    }
    data[..header.data_bytes()]
        .chunks_exact(header.width)
        .enumerate()
        .map(|(i, c)| {
            let v = if header.width == 4 {
                i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            } else {
                i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
            };
            u32::try_from(v).map_err(|_| {
                format_error(path, format!("token id {v} at index {i} is out of range"))
            })
        })
        .collect()
}

/// Parses the magic, version and header dict at the start of `bytes` (which may stop anywhere
/// after the header).
pub fn parse_header(bytes: &[u8]) -> std::result::Result<Header, String> {
    parse_header_of(bytes, FLOATS)
}

/// The dtypes a reader accepts (`descr` and width) and how an error names them.
struct Dtypes {
    accepted: &'static [(&'static str, usize)],
    expected: &'static str,
}

/// The float dtypes [`parse_header`] accepts.
const FLOATS: Dtypes = Dtypes {
    accepted: &[("<f4", 4), ("=f4", 4), ("<f2", 2), ("=f2", 2)],
    expected: "little-endian float32 ('<f4') or float16 ('<f2')",
};

/// The integer dtypes [`read_token_ids`] accepts: 32- and 64-bit signed, little-endian.
const INTS: Dtypes = Dtypes {
    accepted: &[("<i4", 4), ("=i4", 4), ("<i8", 8), ("=i8", 8)],
    expected: "little-endian int32 ('<i4') or int64 ('<i8')",
};

/// [`parse_header`] for the dtypes in `dtypes`.
fn parse_header_of(bytes: &[u8], dtypes: Dtypes) -> std::result::Result<Header, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy file (missing the \\x93NUMPY magic)".into());
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (header_len, start) = match (major, minor) {
        (1, 0) => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        (2 | 3, 0) => {
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
    if header_len > MAX_HEADER {
        return Err(format!(
            "a header of {header_len} bytes, over numpy's limit of {MAX_HEADER}"
        ));
    }
    let end = start + header_len;
    if bytes.len() < end {
        return Err(format!(
            "truncated header: {} bytes announced, {} present",
            header_len,
            bytes.len().saturating_sub(start)
        ));
    }
    let raw = &bytes[start..end];
    // Versions 1 and 2 store the header in latin-1, version 3 in UTF-8.
    let text: String = if major == 3 {
        std::str::from_utf8(raw)
            .map_err(|_| "the header is not valid UTF-8".to_string())?
            .to_string()
    } else {
        raw.iter().map(|&b| char::from(b)).collect()
    };
    let dict = literal::parse(&text)?;
    let (width, shape) = header_fields(dict, dtypes)?;
    let header = Header {
        width,
        shape,
        data_offset: end,
    };
    header
        .shape
        .iter()
        .try_fold(width, |a, &d| a.checked_mul(d))
        .filter(|&b| b <= isize::MAX as usize)
        .ok_or_else(|| format!("shape {:?} is too large", header.shape))?;
    Ok(header)
}

/// The dtype width and shape of a parsed header dict, held to `numpy.load`'s rules.
fn header_fields(
    dict: literal::Value,
    dtypes: Dtypes,
) -> std::result::Result<(usize, Vec<usize>), String> {
    use literal::Value;
    let Value::Dict(entries) = dict else {
        return Err("the header is not a dict".into());
    };
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    for (key, value) in entries {
        let slot = match key.as_str() {
            "descr" => &mut descr,
            "fortran_order" => &mut fortran,
            "shape" => &mut shape,
            other => {
                return Err(format!(
                    "the header has an unknown key '{}'",
                    literal::shorten(other)
                ));
            }
        };
        if slot.replace(value).is_some() {
            return Err(format!("the header gives '{key}' twice"));
        }
    }
    let width = match descr.ok_or("the header has no 'descr'")? {
        Value::Str(s) => match dtypes.accepted.iter().find(|(d, _)| *d == s) {
            Some(&(_, width)) => width,
            None => {
                return Err(format!(
                    "dtype is '{}', expected {}",
                    literal::shorten(&s),
                    dtypes.expected
                ));
            }
        },
        other => {
            return Err(format!(
                "'descr' is {}, expected a dtype string",
                other.kind()
            ));
        }
    };
    match fortran.ok_or("the header has no 'fortran_order'")? {
        Value::Bool(false) => {}
        Value::Bool(true) => {
            return Err("Fortran-ordered arrays are not supported; save in C order".into());
        }
        other => {
            return Err(format!(
                "'fortran_order' is {}, expected True or False",
                other.kind()
            ));
        }
    }
    let shape = match shape.ok_or("the header has no 'shape'")? {
        Value::Tuple(items) => items
            .into_iter()
            .map(|v| match v {
                Value::Int(i) if i < 0 => Err(format!(
                    "shape has the dimension {i}; dimensions are non-negative"
                )),
                Value::Int(i) => {
                    usize::try_from(i).map_err(|_| format!("the dimension {i} is too large"))
                }
                other => Err(format!("shape holds {}, expected integers", other.kind())),
            })
            .collect::<std::result::Result<Vec<_>, _>>()?,
        other => {
            return Err(format!(
                "'shape' is {}, expected a tuple of integers",
                other.kind()
            ));
        }
    };
    Ok((width, shape))
}

pub use crate::kernels::half::f16_to_f32;

/// The bytes of a version-1.0 `.npy` file holding `data` with `shape` (for tests and tools).
pub fn encode_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    encode("<f4", shape, data.iter().flat_map(|x| x.to_le_bytes()))
}

/// The bytes of a version-1.0 `.npy` file of `f64` values (`<f8`).
pub fn encode_f64(shape: &[usize], data: &[f64]) -> Vec<u8> {
    encode("<f8", shape, data.iter().flat_map(|x| x.to_le_bytes()))
}

/// The bytes of a version-1.0 `.npy` file of `i64` values (`<i8`).
pub fn encode_i64(shape: &[usize], data: &[i64]) -> Vec<u8> {
    encode("<i8", shape, data.iter().flat_map(|x| x.to_le_bytes()))
}

fn encode(descr: &str, shape: &[usize], data: impl Iterator<Item = u8>) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Pad so that the data starts on a 64-byte boundary, ending with a newline.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend(data);
    out
}

/// A parser of the Python literals a `.npy` header may hold: dicts, tuples, lists, strings,
/// integers, `True`, `False` and `None` (what `ast.literal_eval` would accept of them, minus
/// floats, sets, bytes and arithmetic, which no header uses).
mod literal {
    /// A parsed literal.
    #[derive(Debug, Clone, PartialEq)]
    pub(super) enum Value {
        Dict(Vec<(String, Value)>),
        Tuple(Vec<Value>),
        List(Vec<Value>),
        Str(String),
        Int(i128),
        Bool(bool),
        None,
    }

    impl Value {
        pub(super) fn kind(&self) -> &'static str {
            match self {
                Value::Dict(_) => "a dict",
                Value::Tuple(_) => "a tuple",
                Value::List(_) => "a list",
                Value::Str(_) => "a string",
                Value::Int(_) => "an integer",
                Value::Bool(_) => "a boolean",
                Value::None => "None",
            }
        }
    }

    /// Nesting deeper than this is refused (a header nests two levels).
    const MAX_DEPTH: usize = 16;

    /// At most 40 characters of `s`, printable.
    pub(super) fn shorten(s: &str) -> String {
        let mut out: String = s.chars().take(40).flat_map(char::escape_default).collect();
        if s.chars().count() > 40 {
            out.push_str("...");
        }
        out
    }

    /// Parses `text` as one literal followed only by whitespace.
    pub(super) fn parse(text: &str) -> Result<Value, String> {
        let mut p = Parser {
            chars: text.chars().collect(),
            at: 0,
        };
        let value = p.value(0)?;
        p.skip_space();
        if p.at < p.chars.len() {
            return Err(p.error("unexpected text after the header's dict"));
        }
        Ok(value)
    }

    struct Parser {
        chars: Vec<char>,
        at: usize,
    }

    impl Parser {
        fn error(&self, what: &str) -> String {
            format!("malformed header: {what} at character {}", self.at)
        }

        fn peek(&self) -> Option<char> {
            self.chars.get(self.at).copied()
        }

        fn skip_space(&mut self) {
            while self
                .peek()
                .is_some_and(|c| matches!(c, ' ' | '\t' | '\n' | '\r'))
            {
                self.at += 1;
            }
        }

        fn eat(&mut self, c: char) -> bool {
            self.skip_space();
            if self.peek() == Some(c) {
                self.at += 1;
                true
            } else {
                false
            }
        }

        fn value(&mut self, depth: usize) -> Result<Value, String> {
            if depth > MAX_DEPTH {
                return Err(self.error("nesting too deep"));
            }
            self.skip_space();
            match self.peek() {
                Some('{') => {
                    self.at += 1;
                    let mut entries = Vec::new();
                    loop {
                        if self.eat('}') {
                            return Ok(Value::Dict(entries));
                        }
                        let key = match self.value(depth + 1)? {
                            Value::Str(s) => s,
                            other => {
                                return Err(format!(
                                    "malformed header: a dict key is {}, expected a string",
                                    other.kind()
                                ));
                            }
                        };
                        if !self.eat(':') {
                            return Err(self.error("expected ':'"));
                        }
                        let value = self.value(depth + 1)?;
                        entries.push((key, value));
                        if !self.eat(',') {
                            if self.eat('}') {
                                return Ok(Value::Dict(entries));
                            }
                            return Err(self.error("expected ',' or '}'"));
                        }
                    }
                }
                Some(open @ ('(' | '[')) => {
                    self.at += 1;
                    let close = if open == '(' { ')' } else { ']' };
                    let mut items = Vec::new();
                    let mut trailing_comma = false;
                    loop {
                        if self.eat(close) {
                            break;
                        }
                        items.push(self.value(depth + 1)?);
                        trailing_comma = self.eat(',');
                        if !trailing_comma {
                            if self.eat(close) {
                                break;
                            }
                            return Err(self.error(&format!("expected ',' or '{close}'")));
                        }
                    }
                    Ok(match (open, items.len(), trailing_comma) {
                        ('[', ..) => Value::List(items),
                        // `(x)` is x in Python, not a tuple.
                        (_, 1, false) => items.pop().expect("one item"),
                        _ => Value::Tuple(items),
                    })
                }
                Some(quote @ ('\'' | '"')) => {
                    self.at += 1;
                    let mut s = String::new();
                    loop {
                        match self.peek() {
                            None | Some('\n') => return Err(self.error("unterminated string")),
                            Some(c) if c == quote => {
                                self.at += 1;
                                return Ok(Value::Str(s));
                            }
                            Some('\\') => {
                                self.at += 1;
                                let c = self
                                    .peek()
                                    .ok_or_else(|| self.error("unterminated string"))?;
                                s.push(match c {
                                    'n' => '\n',
                                    't' => '\t',
                                    'r' => '\r',
                                    '0' => '\0',
                                    '\\' | '\'' | '"' => c,
                                    _ => return Err(self.error("an unsupported string escape")),
                                });
                                self.at += 1;
                            }
                            Some(c) => {
                                s.push(c);
                                self.at += 1;
                            }
                        }
                    }
                }
                Some(c) if c == '-' || c == '+' || c.is_ascii_digit() => {
                    let start = self.at;
                    self.at += 1;
                    while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                        self.at += 1;
                    }
                    let text: String = self.chars[start..self.at].iter().collect();
                    let digits = text.trim_start_matches(['-', '+']);
                    // Python refuses leading zeros (`007`) in decimal literals.
                    if digits.is_empty() || (digits.len() > 1 && digits.starts_with('0')) {
                        return Err(self.error(&format!("malformed number '{}'", shorten(&text))));
                    }
                    if self
                        .peek()
                        .is_some_and(|c| c.is_alphanumeric() || c == '.' || c == '_')
                    {
                        return Err(self.error("a number that is not a plain integer"));
                    }
                    text.parse::<i128>().map(Value::Int).map_err(|_| {
                        self.error(&format!("the integer '{}' is too large", shorten(&text)))
                    })
                }
                Some(c) if c.is_alphabetic() => {
                    let start = self.at;
                    while self.peek().is_some_and(|c| c.is_alphanumeric() || c == '_') {
                        self.at += 1;
                    }
                    let word: String = self.chars[start..self.at].iter().collect();
                    match word.as_str() {
                        "True" => Ok(Value::Bool(true)),
                        "False" => Ok(Value::Bool(false)),
                        "None" => Ok(Value::None),
                        _ => Err(format!(
                            "malformed header: '{}' is not a literal",
                            shorten(&word)
                        )),
                    }
                }
                Some(_) => Err(self.error("expected a value")),
                None => Err(self.error("the header ends early")),
            }
        }
    }
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
        assert!(err(&patch(&good, "(2, 2)", "(2, x)")).contains("'x' is not a literal"));
        let mut v9 = good.clone();
        v9[6] = 9;
        assert!(err(&v9).contains("version 9"));
    }

    /// A version-1.0 file with `header` as its header text and `data_bytes` zero bytes.
    fn with_header(header: &str, data_bytes: usize) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend(std::iter::repeat_n(0u8, data_bytes));
        out
    }

    #[test]
    fn headers_are_held_to_numpy_rules() {
        let ok = |h: &str, bytes: usize| parse_f32(&with_header(h, bytes));
        let err = |h: &str| ok(h, 16).unwrap_err();
        // What numpy writes, and what it also reads: double quotes, no trailing comma, other
        // key order, newlines and tabs, a 1-tuple, a scalar.
        for h in [
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }          \n",
            "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (2,2)}",
            "{'shape': (4,), 'fortran_order': False,\n\t'descr': '<f4'}",
        ] {
            assert_eq!(ok(h, 16).unwrap().len(), 4, "{h}");
        }
        assert_eq!(
            ok("{'descr': '<f4', 'fortran_order': False, 'shape': ()}", 4)
                .unwrap()
                .len(),
            1
        );
        // Keys are found by parsing, not by searching: a 'descr' inside a string, no braces,
        // unknown, missing or repeated keys, text after the dict.
        assert!(
            err("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), 'x': \"'descr': '<f2'\"}")
                .contains("unknown key 'x'")
        );
        assert!(
            err("'descr': '<f4', 'fortran_order': False, 'shape': (4,)")
                .contains("unexpected text")
        );
        assert!(err("('<f4', False, (4,))").contains("not a dict"));
        assert!(err("{'descr': '<f4', 'shape': (4,)}").contains("no 'fortran_order'"));
        assert!(
            err("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (4,)}")
                .contains("twice")
        );
        assert!(
            err("{'descr': '<f4', 'fortran_order': False, 'shape': (4,)} x")
                .contains("after the header's dict")
        );
        assert!(
            err("{'descr': '<f4', 'fortran_order': False, 'shape': (4,)")
                .contains("expected ',' or '}'")
        );
        // Values of the wrong kind: `(4)` is an integer in Python, not a tuple.
        assert!(
            err("{'descr': '<f4', 'fortran_order': False, 'shape': (4)}")
                .contains("'shape' is an integer")
        );
        assert!(
            err("{'descr': '<f4', 'fortran_order': False, 'shape': [4]}")
                .contains("'shape' is a list")
        );
        assert!(
            err("{'descr': '<f4', 'fortran_order': 0, 'shape': (4,)}")
                .contains("expected True or False")
        );
        assert!(
            err("{'descr': 4, 'fortran_order': False, 'shape': (4,)}")
                .contains("expected a dtype string")
        );
        assert!(
            err("{'descr': '<f4', 'fortran_order': False, 'shape': (-4,)}")
                .contains("non-negative")
        );
        assert!(
            err("{'descr': '<f4', 'fortran_order': False, 'shape': (4.0,)}")
                .contains("not a plain integer")
        );
        assert!(
            err("{'descr': '<f4', 'fortran_order': False, 'shape': (4, 'a')}")
                .contains("holds a string")
        );
        assert!(err("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999, 99999999999999999)}").contains("too large"));
        assert!(err("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), 'z': ((((((((((((((((((((1))))))))))))))))))))}").contains("too deep"));
        assert!(
            err("{'descr': '<f4\t', 'fortran_order': False, 'shape': (4,)}")
                .contains("dtype is '<f4\\t'")
        );
        assert!(
            err("{'descr': '<f4\n', 'fortran_order': False, 'shape': (4,)}")
                .contains("unterminated string")
        );
        // Versions: only 1.0, 2.0 and 3.0; headers within numpy's limit.
        let mut minor = with_header(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (4,)}",
            16,
        );
        minor[7] = 1;
        assert!(parse_f32(&minor).unwrap_err().contains("version 1.1"));
        let long = format!(
            "{{'descr': '<f4', 'fortran_order': False, 'shape': (4,)}}{}",
            " ".repeat(MAX_HEADER)
        );
        assert!(err(&long).contains("over numpy's limit"));
    }

    #[test]
    fn only_regular_files_are_read() {
        let dir = std::env::temp_dir().join(format!("attnbench-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let msg = |p: &Path| read_f32(p).unwrap_err().to_string();
        assert!(msg(&dir).contains("a directory"), "{}", msg(&dir));
        let dangling = dir.join("dangling_q.npy");
        let _ = std::fs::remove_file(&dangling);
        std::os::unix::fs::symlink(dir.join("nowhere.npy"), &dangling).unwrap();
        assert!(
            msg(&dangling).contains("which does not exist"),
            "{}",
            msg(&dangling)
        );
        // A character device is refused before a byte is read (it would never end).
        assert!(msg(Path::new("/dev/zero")).contains("not a regular file"));
        // The data's size is checked against the file's length, and against a budget.
        let good = dir.join("good.npy");
        std::fs::write(&good, encode_f32(&[2, 3], &[1.0; 6])).unwrap();
        assert_eq!(read_f32(&good).unwrap().len(), 6);
        assert_eq!(read_header(&good).unwrap().shape, vec![2, 3]);
        let e = read_f32_within(&good, 23).unwrap_err().to_string();
        assert!(e.contains("over the memory budget"), "{e}");
        let mut bytes = encode_f32(&[2, 3], &[1.0; 6]);
        bytes.pop();
        std::fs::write(&good, &bytes).unwrap();
        assert!(msg(&good).contains("truncated file"), "{}", msg(&good));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
