//! A reader of GGUF files (versions 2 and 3, little-endian), the format llama.cpp stores
//! models in: a header, typed metadata (key/value pairs), a table of tensors (name, shape,
//! element type, offset) and the aligned tensor data.
//!
//! The whole file is read into memory and every count, length and offset is checked against
//! the bytes that are there before anything is allocated from it, so a truncated or hostile
//! file is an [`ErrorKind::Format`] error naming the file and the place, never a panic, an
//! unbounded allocation or a read past the end. Tensor data is decoded to `f32` by
//! [`Gguf::tensor`] for the types in [`TensorType::decodable`] (F32, F16, BF16, Q4_0, Q4_1,
//! Q8_0); the other ggml types are recognised (so their sizes and offsets are checked) and
//! refused by name when decoded.
//!
//! Shapes are given as GGUF does, `ne[0]` first: `ne[0]` is the contiguous axis, so a weight
//! of shape `[in, out]` holds `out` rows of `in` elements.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};
use crate::kernels::half::f16_to_f32;

/// The four bytes every GGUF file starts with.
pub const MAGIC: &[u8; 4] = b"GGUF";

/// The data alignment when the file does not set `general.alignment`.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// The most elements reserved up front for a table or an array read from the file.
const RESERVE: usize = 1 << 12;

/// The most axes a ggml tensor has.
pub const MAX_DIMS: usize = 4;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `uint8`.
    U8(u8),
    /// `int8`.
    I8(i8),
    /// `uint16`.
    U16(u16),
    /// `int16`.
    I16(i16),
    /// `uint32`.
    U32(u32),
    /// `int32`.
    I32(i32),
    /// `float32`.
    F32(f32),
    /// `bool`.
    Bool(bool),
    /// A UTF-8 string.
    String(String),
    /// An array of values of one type.
    Array(Vec<Value>),
    /// `uint64`.
    U64(u64),
    /// `int64`.
    I64(i64),
    /// `float64`.
    F64(f64),
}

impl Value {
    /// The value as a non-negative integer, if it is one of any integer type.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a float or an integer.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The string, if the value is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The elements, if the value is an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The value as a bool, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
}

/// A ggml tensor element type: its id in the file, its name, and the size of its blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorType {
    /// The id stored in the file (`ggml_type`).
    pub id: u32,
    /// ggml's name for it, e.g. `Q4_1`.
    pub name: &'static str,
    /// Elements per block.
    pub block: usize,
    /// Bytes per block.
    pub block_bytes: usize,
}

/// Every ggml type whose layout this reader knows: `(id, name, elements, bytes)` per block.
const TYPES: [(u32, &str, usize, usize); 16] = [
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 36),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (24, "I8", 1, 1),
    (30, "BF16", 1, 2),
];

impl TensorType {
    /// The type with file id `id`, if this reader knows its layout.
    pub fn from_id(id: u32) -> Option<Self> {
        TYPES
            .iter()
            .find(|t| t.0 == id)
            .map(|&(id, name, block, block_bytes)| Self {
                id,
                name,
                block,
                block_bytes,
            })
    }

    /// The type called `name` (ggml's spelling, e.g. `Q8_0`).
    pub fn from_name(name: &str) -> Option<Self> {
        TYPES
            .iter()
            .find(|t| t.1 == name)
            .and_then(|t| Self::from_id(t.0))
    }

    /// Whether [`Gguf::tensor`] decodes this type.
    pub fn decodable(&self) -> bool {
        matches!(self.name, "F32" | "F16" | "BF16" | "Q4_0" | "Q4_1" | "Q8_0")
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name)
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Its shape, `ne[0]` (the contiguous axis) first.
    pub dims: Vec<usize>,
    /// Its element type.
    pub ty: TensorType,
    /// Where its data starts, from the start of the data section.
    pub offset: u64,
    /// Bytes of data.
    pub bytes: usize,
}

impl TensorInfo {
    /// The number of elements.
    pub fn len(&self) -> usize {
        self.dims.iter().product()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A parsed GGUF file: metadata, the tensor table and the data.
#[derive(Clone)]
pub struct Gguf {
    path: PathBuf,
    /// The format version (2 or 3).
    pub version: u32,
    /// The metadata, in file order.
    pub metadata: Vec<(String, Value)>,
    /// The tensor table, in file order.
    pub tensors: Vec<TensorInfo>,
    bytes: Vec<u8>,
    data_start: usize,
}

impl fmt::Debug for Gguf {
    /// The file, its version and the sizes of its tables (not the data).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gguf")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

/// A bounds-checked little-endian cursor over the file's bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn error(&self, message: String) -> Error {
        format_error(self.path, format!("at byte {}: {message}", self.pos))
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let left = self.bytes.len() - self.pos;
        if n > left {
            return Err(self.error(format!(
                "truncated: {what} needs {n} bytes, {left} left in the file"
            )));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A count that must fit in what is left of the file at `min_bytes` per item.
    fn count(&mut self, what: &str, min_bytes: usize) -> Result<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        let left = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(min_bytes.max(1) as u64) > left {
            self.pos = at;
            return Err(self.error(format!(
                "{what} is {n}, more than the {left} bytes left in the file can hold"
            )));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.count(&format!("the length of {what}"), 1)?;
        let at = self.pos;
        let s = self.take(n, what)?;
        String::from_utf8(s.to_vec()).map_err(|_| {
            self.pos = at;
            self.error(format!("{what} is not valid UTF-8"))
        })
    }

    /// A value of type id `ty`, arrays nested at most `depth` deep.
    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(key)?[0]),
            1 => Value::I8(self.array::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.error(format!("{key}: bool byte {b} is neither 0 nor 1"))),
            },
            8 => Value::String(self.string(key)?),
            9 => {
                if depth == 0 {
                    return Err(self.error(format!("{key}: arrays nested too deep")));
                }
                let inner = self.u32(key)?;
                let min = match inner {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 | 9 => 4,
                    8 | 10..=12 => 8,
                    t => return Err(self.error(format!("{key}: unknown array element type {t}"))),
                };
                let n = self.count(&format!("the length of array {key}"), min)?;
                // Reserve no more than a bounded amount up front: a count is only checked
                // against the bytes left at the element's smallest size.
                let mut items = Vec::with_capacity(n.min(RESERVE));
                for _ in 0..n {
                    items.push(self.value(inner, key, depth - 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            t => return Err(self.error(format!("{key}: unknown value type {t}"))),
        })
    }
}

fn format_error(path: &Path, message: String) -> Error {
    Error::new(ErrorKind::Format {
        path: path.display().to_string(),
        message,
    })
}

impl Gguf {
    /// Reads and parses the GGUF file at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if !meta.is_file() {
            return Err(format_error(path, "not a regular file".into()));
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::parse(path, bytes)
    }

    /// Parses a whole GGUF file held in `bytes`; `path` names it in errors.
    pub fn parse(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        let mut c = Cursor {
            bytes: &bytes,
            pos: 0,
            path,
        };
        let magic = c.take(4, "the magic")?;
        if magic != MAGIC {
            return Err(format_error(
                path,
                format!("not a GGUF file: it starts with {magic:02x?}, not \"GGUF\""),
            ));
        }
        let version = c.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(c.error(format!(
                "GGUF version {version} is not supported (versions 2 and 3 are)"
            )));
        }
        // Each tensor entry takes at least 8 (name length) + 4 + 4 + 8 bytes; each pair 8 + 4 + 1.
        let n_tensors = c.count("the tensor count", 24)?;
        let n_kv = c.count("the metadata count", 13)?;
        let mut metadata = Vec::with_capacity(n_kv.min(RESERVE));
        let mut keys = HashSet::new();
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key {i}"))?;
            let ty = c.u32(&key)?;
            let value = c.value(ty, &key, 2)?;
            if !keys.insert(key.clone()) {
                return Err(c.error(format!("metadata key {key} appears twice")));
            }
            metadata.push((key, value));
        }
        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= 1 << 31 => a,
                _ => {
                    return Err(format_error(
                        path,
                        format!(
                            "general.alignment must be a power of two of at most 2^31, got {v:?}"
                        ),
                    ));
                }
            },
        };
        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors.min(RESERVE));
        let mut names = HashSet::new();
        // llama.cpp's rule: each tensor starts where the previous one ends, aligned.
        let mut expected = 0u64;
        for i in 0..n_tensors {
            let name = c.string(&format!("the name of tensor {i}"))?;
            let n_dims = c.u32(&name)? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(c.error(format!(
                    "tensor {name} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                let d = c.u64(&name)?;
                dims.push(usize::try_from(d).unwrap_or(usize::MAX));
            }
            let id = c.u32(&name)?;
            let ty = TensorType::from_id(id).ok_or_else(|| {
                c.error(format!(
                    "tensor {name} has unknown tensor type {id}; known: {}",
                    TYPES.map(|t| t.1).join(", ")
                ))
            })?;
            let offset = c.u64(&name)?;
            let len = dims
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .filter(|&l| l <= bytes.len().saturating_mul(ty.block))
                .ok_or_else(|| {
                    c.error(format!(
                        "tensor {name} of shape {dims:?} has more elements than the file can hold"
                    ))
                })?;
            if !dims[0].is_multiple_of(ty.block) {
                return Err(c.error(format!(
                    "tensor {name}: its rows of {} elements are not whole {ty} blocks of {}",
                    dims[0], ty.block
                )));
            }
            if offset != expected {
                return Err(c.error(format!(
                    "tensor {name}: offset {offset}, expected {expected} (the end of the previous tensor, aligned to {alignment})"
                )));
            }
            if !names.insert(name.clone()) {
                return Err(c.error(format!("tensor {name} appears twice")));
            }
            let size = (len / ty.block)
                .checked_mul(ty.block_bytes)
                .ok_or_else(|| c.error(format!("tensor {name} is too large")))?;
            expected = offset
                .saturating_add(size as u64)
                .next_multiple_of(alignment);
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
                bytes: size,
            });
        }
        let data_start = (c.pos as u64).next_multiple_of(alignment);
        if data_start > bytes.len() as u64 && !tensors.is_empty() {
            return Err(format_error(
                path,
                format!(
                    "truncated: the data section starts at byte {data_start}, past the end of the file ({} bytes)",
                    bytes.len()
                ),
            ));
        }
        let data_len = (bytes.len() as u64).saturating_sub(data_start);
        for t in &tensors {
            let end = t.offset.checked_add(t.bytes as u64);
            if end.is_none_or(|e| e > data_len) {
                return Err(format_error(
                    path,
                    format!(
                        "truncated: tensor {} needs bytes {}..{} of the data section, which has {data_len}",
                        t.name,
                        t.offset,
                        t.offset as u128 + t.bytes as u128
                    ),
                ));
            }
        }
        // At most the file's length (checked above when there are tensors).
        let data_start = (data_start as usize).min(bytes.len());
        Ok(Self {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            bytes,
            data_start,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The metadata value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// An error naming this file.
    pub fn error(&self, message: impl Into<String>) -> Error {
        format_error(&self.path, message.into())
    }

    /// The integer at `key`; an error if it is missing or not a non-negative integer.
    pub fn usize(&self, key: &str) -> Result<usize> {
        let v = self
            .get(key)
            .ok_or_else(|| self.error(format!("metadata key {key} is missing")))?;
        v.as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .ok_or_else(|| self.error(format!("{key} must be a non-negative integer, got {v:?}")))
    }

    /// The number at `key`; an error if it is missing or not a number.
    pub fn f64(&self, key: &str) -> Result<f64> {
        let v = self
            .get(key)
            .ok_or_else(|| self.error(format!("metadata key {key} is missing")))?;
        v.as_f64()
            .ok_or_else(|| self.error(format!("{key} must be a number, got {v:?}")))
    }

    /// The string at `key`; an error if it is missing or not a string.
    pub fn str(&self, key: &str) -> Result<&str> {
        let v = self
            .get(key)
            .ok_or_else(|| self.error(format!("metadata key {key} is missing")))?;
        v.as_str()
            .ok_or_else(|| self.error(format!("{key} must be a string, got {v:?}")))
    }

    /// The table entry of tensor `name`.
    pub fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| self.error(format!("tensor {name} is missing")))
    }

    /// The raw bytes of tensor `name`.
    pub fn raw(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let t = self.info(name)?;
        let start = self.data_start + t.offset as usize;
        // In bounds: checked against the data section when the file was parsed.
        let raw = self
            .bytes
            .get(start..start + t.bytes)
            .ok_or_else(|| self.error(format!("tensor {name} lies outside the file")))?;
        Ok((t, raw))
    }

    /// Tensor `name` decoded to `f32` (in storage order, `ne[0]` contiguous), after checking
    /// that its shape is `dims`.
    pub fn tensor(&self, name: &str, dims: &[usize]) -> Result<Vec<f32>> {
        let (t, raw) = self.raw(name)?;
        if !t.ty.decodable() {
            return Err(self.error(format!(
                "tensor {name} is of type {}, which attnbench does not decode (it decodes {})",
                t.ty,
                TYPES
                    .iter()
                    .filter_map(|t| TensorType::from_id(t.0).filter(TensorType::decodable))
                    .map(|t| t.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if t.dims != dims {
            return Err(self.error(format!(
                "tensor {name} has shape {:?}, expected {dims:?}",
                t.dims
            )));
        }
        Ok(dequantize(t.ty, raw).expect("a decodable type"))
    }
}

/// Decodes whole blocks of type `ty` to `f32`; `None` for a type that is not
/// [decodable](TensorType::decodable). `raw.len()` must be a multiple of the block size.
pub fn dequantize(ty: TensorType, raw: &[u8]) -> Option<Vec<f32>> {
    let half = |b: &[u8]| f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
    let blocks = raw.chunks_exact(ty.block_bytes);
    let mut out = Vec::with_capacity(raw.len() / ty.block_bytes * ty.block);
    match ty.name {
        "F32" => out.extend(blocks.map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        "F16" => out.extend(blocks.map(half)),
        "BF16" => out.extend(
            blocks.map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)),
        ),
        // d (f16), then 16 bytes: element j in the low nibble of byte j, j + 16 in its high one.
        "Q4_0" | "Q4_1" => {
            let (offset_bytes, zero) = if ty.name == "Q4_0" {
                (2, 8.0)
            } else {
                (4, 0.0)
            };
            for b in blocks {
                let d = half(&b[0..2]);
                // Q4_0: x = (q - 8) d; Q4_1: x = q d + m.
                let m = if ty.name == "Q4_1" {
                    half(&b[2..4])
                } else {
                    0.0
                };
                let qs = &b[offset_bytes..offset_bytes + 16];
                let value = |q: u8| (f32::from(q) - zero) * d + m;
                out.extend(qs.iter().map(|&q| value(q & 0x0f)));
                out.extend(qs.iter().map(|&q| value(q >> 4)));
            }
        }
        // d (f16), then 32 signed bytes: x = q d.
        "Q8_0" => {
            for b in blocks {
                let d = half(&b[0..2]);
                out.extend(b[2..34].iter().map(|&q| f32::from(q as i8) * d));
            }
        }
        _ => return None,
    }
    Some(out)
}
