//! GGUF reader (llama.cpp's single-file model format, versions 2 and 3).
//!
//! rlft trains in f32, so every tensor is dequantised on load into a [`HostTensor`] in
//! PyTorch layout; quantised blocks are decoded exactly as ggml does. This file reads the
//! format only; `gguf_to_hf.rs` turns a model file into the Hugging Face checkpoint it was
//! converted from, and `tokenizer.rs` rebuilds its tokenizer.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde_json::json;

use crate::engine::model::weights::HostTensor;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// Errors from reading a GGUF file; each names the file and, where relevant, the key or
/// tensor, because a user loading a downloaded model needs to know what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{}: cannot read GGUF file: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}: not a GGUF file (starts with {found:?}, expected \"GGUF\")", path.display())]
    BadMagic { path: PathBuf, found: [u8; 4] },
    #[error("{}: unsupported GGUF version {version} (rlft reads versions 2 and 3, little-endian)", path.display())]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error("{}: file is truncated: {what} needs bytes {start}..{end} but the file has {len}", path.display())]
    Truncated {
        path: PathBuf,
        what: String,
        start: u64,
        end: u64,
        len: u64,
    },
    #[error("{}: malformed GGUF: {what}", path.display())]
    Malformed { path: PathBuf, what: String },
    #[error("{}: metadata key `{key}` is missing", path.display())]
    MissingKey { path: PathBuf, key: String },
    #[error("{}: metadata key `{key}` has type {found}, expected {expected}", path.display())]
    WrongType {
        path: PathBuf,
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("{}: no tensor named `{tensor}`", path.display())]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{}: tensor `{tensor}` has type {dtype}, which rlft cannot dequantise", path.display())]
    UnsupportedType {
        path: PathBuf,
        tensor: String,
        dtype: GgmlType,
    },
    #[error("{}: tensor `{tensor}`: {what}", path.display())]
    BadTensor {
        path: PathBuf,
        tensor: String,
        what: String,
    },
    #[error("{}: architecture `{arch}` is not supported (rlft converts llama, qwen2, qwen3, gemma, gemma2, gemma3, phi3, olmo2, granite and gpt2 GGUFs)", path.display())]
    UnsupportedArchitecture { path: PathBuf, arch: String },
}

/// A metadata value. Arrays hold any value type, including nested arrays.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// The GGUF type name, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::U8(_) => "uint8",
            Self::I8(_) => "int8",
            Self::U16(_) => "uint16",
            Self::I16(_) => "int16",
            Self::U32(_) => "uint32",
            Self::I32(_) => "int32",
            Self::U64(_) => "uint64",
            Self::I64(_) => "int64",
            Self::F32(_) => "float32",
            Self::F64(_) => "float64",
            Self::Bool(_) => "bool",
            Self::String(_) => "string",
            Self::Array(_) => "array",
        }
    }

    /// Any integer that fits in a u64 (writers disagree on u32 vs i32 vs u64 for counts).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer that fits in an i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::I8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// Floats, and integers converted to float.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }

    /// JSON form, for showing model metadata in the UI.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Self::F32(v) => json!(v),
            Self::F64(v) => json!(v),
            Self::Bool(v) => json!(v),
            Self::String(s) => json!(s),
            Self::Array(a) => serde_json::Value::Array(a.iter().map(Self::to_json).collect()),
            Self::U64(v) => json!(v),
            other => json!(other.as_i64()),
        }
    }
}

/// ggml tensor element types, with the numeric ids used in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    I8,
    I16,
    I32,
    I64,
    F64,
    BF16,
    /// A type rlft does not know (IQ* quants and newer); kept so the error can name it.
    Other(u32),
}

impl GgmlType {
    pub fn from_id(id: u32) -> Self {
        match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            9 => Self::Q8_1,
            10 => Self::Q2K,
            11 => Self::Q3K,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            15 => Self::Q8K,
            24 => Self::I8,
            25 => Self::I16,
            26 => Self::I32,
            27 => Self::I64,
            28 => Self::F64,
            30 => Self::BF16,
            other => Self::Other(other),
        }
    }

    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::Q8_1 => 9,
            Self::Q2K => 10,
            Self::Q3K => 11,
            Self::Q4K => 12,
            Self::Q5K => 13,
            Self::Q6K => 14,
            Self::Q8K => 15,
            Self::I8 => 24,
            Self::I16 => 25,
            Self::I32 => 26,
            Self::I64 => 27,
            Self::F64 => 28,
            Self::BF16 => 30,
            Self::Other(id) => id,
        }
    }

    /// (elements per block, bytes per block), or None for types whose layout rlft does not
    /// know.
    pub fn block_layout(self) -> Option<(usize, usize)> {
        Some(match self {
            Self::F32 | Self::I32 => (1, 4),
            Self::F16 | Self::BF16 | Self::I16 => (1, 2),
            Self::I8 => (1, 1),
            Self::I64 | Self::F64 => (1, 8),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::Q8_1 => (32, 36),
            Self::Q2K => (256, 84),
            Self::Q3K => (256, 110),
            Self::Q4K => (256, 144),
            Self::Q5K => (256, 176),
            Self::Q6K => (256, 210),
            Self::Q8K => (256, 292),
            Self::Other(_) => return None,
        })
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Q2K => f.write_str("Q2_K"),
            Self::Q3K => f.write_str("Q3_K"),
            Self::Q4K => f.write_str("Q4_K"),
            Self::Q5K => f.write_str("Q5_K"),
            Self::Q6K => f.write_str("Q6_K"),
            Self::Q8K => f.write_str("Q8_K"),
            Self::Other(id) => write!(f, "ggml type {id}"),
            other => write!(f, "{other:?}"),
        }
    }
}

/// Where a tensor lives in the file and how it is stored.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: innermost (row length) first.
    pub dims: Vec<u64>,
    pub dtype: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Shape in PyTorch order (ggml dims reversed).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Element count (saturating, so corrupt dims fail the bounds check instead of
    /// overflowing).
    pub fn numel(&self) -> u64 {
        self.dims.iter().fold(1u64, |n, &d| n.saturating_mul(d))
    }

    /// Bytes the tensor occupies, or None when the type's layout is unknown or the element
    /// count does not fill whole blocks.
    pub fn byte_len(&self) -> Option<u64> {
        let (block, bytes) = self.dtype.block_layout()?;
        let n = self.numel();
        if !n.is_multiple_of(block as u64) {
            return None;
        }
        (n / block as u64).checked_mul(bytes as u64)
    }
}

/// An open, memory-mapped GGUF file with its header parsed; tensor data is read lazily.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<TensorInfo>,
    data_offset: u64,
    alignment: u64,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io = |cause| GgufError::Io {
            path: path.to_path_buf(),
            cause,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; as with every mmap-based model loader, the file must
        // not be truncated while rlft has it open.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(path.to_path_buf(), mmap)
    }

    fn parse(path: PathBuf, mmap: Mmap) -> Result<Self, GgufError> {
        let mut r = Reader {
            path: &path,
            bytes: &mmap,
            pos: 0,
        };
        let magic: [u8; 4] = r.array("magic")?;
        if &magic != MAGIC {
            return Err(GgufError::BadMagic { path, found: magic });
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            // A big-endian file reads as a huge version number here, which is also refused.
            return Err(GgufError::UnsupportedVersion { path, version });
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;

        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.string(&format!("metadata key #{i}"))?;
            let ty = r.u32(&format!("type of metadata `{key}`"))?;
            let value = r.value(ty, &key, 0)?;
            metadata.insert(key, value);
        }

        let mut tensors = Vec::with_capacity(r.capacity_hint(n_tensors, 24));
        for i in 0..n_tensors {
            let name = r.string(&format!("tensor name #{i}"))?;
            let n_dims = r.u32(&format!("dimension count of tensor `{name}`"))?;
            if n_dims > 8 {
                return Err(r.malformed(format!("tensor `{name}` has {n_dims} dimensions")));
            }
            let dims = (0..n_dims)
                .map(|_| r.u64(&format!("dimensions of tensor `{name}`")))
                .collect::<Result<Vec<_>, _>>()?;
            let dtype = GgmlType::from_id(r.u32(&format!("type of tensor `{name}`"))?);
            let offset = r.u64(&format!("offset of tensor `{name}`"))?;
            tensors.push(TensorInfo {
                name,
                dims,
                dtype,
                offset,
            });
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(r.malformed(format!("general.alignment is {v:?}")));
                }
            },
        };
        let data_offset = (r.pos as u64).div_ceil(alignment) * alignment;
        let file = Self {
            path,
            mmap,
            version,
            metadata,
            tensors,
            data_offset,
            alignment,
        };
        // Check extents now so a truncated download fails at open, naming the tensor. Types
        // of unknown layout are only refused when read, so their metadata stays readable.
        for info in file
            .tensors
            .iter()
            .filter(|t| t.dtype.block_layout().is_some())
        {
            file.extent(info)?;
        }
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Byte offset of the tensor data section in the file.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    pub fn metadata(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// All metadata, sorted by key.
    pub fn metadata_entries(&self) -> impl Iterator<Item = (&str, &GgufValue)> {
        self.metadata.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn tensor_infos(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The value under `key`, or a MissingKey error naming the file.
    pub fn require(&self, key: &str) -> Result<&GgufValue, GgufError> {
        self.metadata(key).ok_or_else(|| GgufError::MissingKey {
            path: self.path.clone(),
            key: key.to_string(),
        })
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        get: impl Fn(&'a GgufValue) -> Option<T>,
    ) -> Result<Option<T>, GgufError> {
        match self.metadata(key) {
            None => Ok(None),
            Some(v) => get(v).map(Some).ok_or_else(|| GgufError::WrongType {
                path: self.path.clone(),
                key: key.to_string(),
                expected,
                found: v.type_name(),
            }),
        }
    }

    /// Optional non-negative integer; a value of another type is an error.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.typed(key, "a non-negative integer", GgufValue::as_u64)
    }

    pub fn get_f64(&self, key: &str) -> Result<Option<f64>, GgufError> {
        self.typed(key, "a number", GgufValue::as_f64)
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.typed(key, "a bool", GgufValue::as_bool)
    }

    pub fn get_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.typed(key, "a string", GgufValue::as_str)
    }

    /// Optional array of strings (token lists, merges).
    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>, GgufError> {
        self.typed(key, "an array of strings", |v| {
            v.as_array()?.iter().map(GgufValue::as_str).collect()
        })
    }

    /// Optional array of numbers (token scores).
    pub fn get_f64_array(&self, key: &str) -> Result<Option<Vec<f64>>, GgufError> {
        self.typed(key, "an array of numbers", |v| {
            v.as_array()?.iter().map(GgufValue::as_f64).collect()
        })
    }

    /// Optional array of integers (token types).
    pub fn get_i64_array(&self, key: &str) -> Result<Option<Vec<i64>>, GgufError> {
        self.typed(key, "an array of integers", |v| {
            v.as_array()?.iter().map(GgufValue::as_i64).collect()
        })
    }

    pub fn require_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.get_u64(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn require_str(&self, key: &str) -> Result<&str, GgufError> {
        self.get_str(key)?.ok_or_else(|| self.missing(key))
    }

    fn missing(&self, key: &str) -> GgufError {
        GgufError::MissingKey {
            path: self.path.clone(),
            key: key.to_string(),
        }
    }

    pub(crate) fn bad_tensor(&self, tensor: &str, what: impl Into<String>) -> GgufError {
        GgufError::BadTensor {
            path: self.path.clone(),
            tensor: tensor.to_string(),
            what: what.into(),
        }
    }

    /// The byte range of a tensor's data in the file.
    fn extent(&self, info: &TensorInfo) -> Result<std::ops::Range<usize>, GgufError> {
        let len = info
            .byte_len()
            .ok_or_else(|| match info.dtype.block_layout() {
                None => GgufError::UnsupportedType {
                    path: self.path.clone(),
                    tensor: info.name.clone(),
                    dtype: info.dtype,
                },
                Some((block, _)) => self.bad_tensor(
                    &info.name,
                    format!(
                        "{} elements are not whole {} blocks of {block}",
                        info.numel(),
                        info.dtype
                    ),
                ),
            })?;
        let start = self.data_offset.checked_add(info.offset);
        let end = start.and_then(|s| s.checked_add(len));
        let file_len = self.mmap.len() as u64;
        match (start, end) {
            (Some(start), Some(end)) if end <= file_len => Ok(start as usize..end as usize),
            _ => Err(GgufError::Truncated {
                path: self.path.clone(),
                what: format!("data of tensor `{}`", info.name),
                start: start.unwrap_or(u64::MAX),
                end: end.unwrap_or(u64::MAX),
                len: file_len,
            }),
        }
    }

    /// The raw (possibly quantised) bytes of a tensor.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8], GgufError> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| GgufError::MissingTensor {
                path: self.path.clone(),
                tensor: name.to_string(),
            })?;
        Ok(&self.mmap[self.extent(info)?])
    }

    /// Dequantises a tensor to f32 in PyTorch layout (shape = ggml dims reversed).
    pub fn tensor_f32(&self, name: &str) -> Result<HostTensor, GgufError> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| GgufError::MissingTensor {
                path: self.path.clone(),
                tensor: name.to_string(),
            })?;
        let bytes = &self.mmap[self.extent(info)?];
        let data = dequantize(info.dtype, bytes).ok_or_else(|| GgufError::UnsupportedType {
            path: self.path.clone(),
            tensor: name.to_string(),
            dtype: info.dtype,
        })?;
        Ok(HostTensor::new(info.shape(), data))
    }
}

/// Bounds-checked little-endian cursor over the file header.
struct Reader<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
}

/// Deepest array nesting accepted; real files use 1, and this bounds recursion on bad input.
const MAX_ARRAY_DEPTH: usize = 4;

impl Reader<'_> {
    fn take(&mut self, n: u64, what: &str) -> Result<&[u8], GgufError> {
        let start = self.pos as u64;
        let end = start.saturating_add(n);
        if end > self.bytes.len() as u64 {
            return Err(GgufError::Truncated {
                path: self.path.to_path_buf(),
                what: what.to_string(),
                start,
                end,
                len: self.bytes.len() as u64,
            });
        }
        self.pos = end as usize;
        Ok(&self.bytes[start as usize..end as usize])
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?.to_vec();
        String::from_utf8(bytes).map_err(|_| self.malformed(format!("{what} is not valid UTF-8")))
    }

    fn malformed(&self, what: String) -> GgufError {
        GgufError::Malformed {
            path: self.path.to_path_buf(),
            what,
        }
    }

    /// Capacity to reserve for `count` items of at least `min_size` bytes each: never more
    /// than the rest of the file could hold, so a corrupt count cannot exhaust memory.
    fn capacity_hint(&self, count: u64, min_size: u64) -> usize {
        let left = (self.bytes.len() - self.pos) as u64 / min_size.max(1);
        count.min(left) as usize
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<GgufValue, GgufError> {
        let what = || format!("value of metadata `{key}`");
        Ok(match ty {
            0 => GgufValue::U8(self.array::<1>(&what())?[0]),
            1 => GgufValue::I8(i8::from_le_bytes(self.array(&what())?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(&what())?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(&what())?)),
            4 => GgufValue::U32(self.u32(&what())?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(&what())?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(&what())?)),
            7 => match self.array::<1>(&what())?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(self.malformed(format!("metadata `{key}`: bool byte {b}"))),
            },
            8 => GgufValue::String(self.string(&what())?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.malformed(format!("metadata `{key}`: arrays nested too deep")));
                }
                let elem_ty = self.u32(&what())?;
                let count = self.u64(&what())?;
                let mut items = Vec::with_capacity(self.capacity_hint(count, 1));
                for _ in 0..count {
                    items.push(self.value(elem_ty, key, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(self.u64(&what())?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(&what())?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(&what())?)),
            other => {
                return Err(self.malformed(format!("metadata `{key}` has unknown type {other}")));
            }
        })
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Decodes `bytes` (a whole number of blocks, checked by the caller) to f32, following
/// ggml's `dequantize_row_*`. None for types rlft does not decode.
pub fn dequantize(dtype: GgmlType, bytes: &[u8]) -> Option<Vec<f32>> {
    let (block, block_bytes) = dtype.block_layout()?;
    let n = bytes.len() / block_bytes * block;
    let mut out = Vec::with_capacity(n);
    let blocks = bytes.chunks_exact(block_bytes);
    match dtype {
        GgmlType::F32 => out.extend(blocks.map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        GgmlType::F16 => out.extend(blocks.map(|b| f16_at(b, 0))),
        GgmlType::BF16 => {
            out.extend(blocks.map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()))
        }
        GgmlType::F64 => {
            out.extend(blocks.map(|b| {
                f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
            }))
        }
        GgmlType::I8 => out.extend(blocks.map(|b| b[0] as i8 as f32)),
        GgmlType::I16 => out.extend(blocks.map(|b| i16::from_le_bytes([b[0], b[1]]) as f32)),
        GgmlType::I32 => {
            out.extend(blocks.map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32))
        }
        GgmlType::Q4_0 => blocks.for_each(|b| dequant_q4(b, &mut out, false)),
        GgmlType::Q4_1 => blocks.for_each(|b| dequant_q4(b, &mut out, true)),
        GgmlType::Q5_0 => blocks.for_each(|b| dequant_q5(b, &mut out, false)),
        GgmlType::Q5_1 => blocks.for_each(|b| dequant_q5(b, &mut out, true)),
        // Q8_1 is Q8_0 plus a precomputed sum (d * Σq) that decoding does not need.
        GgmlType::Q8_0 | GgmlType::Q8_1 => blocks.for_each(|b| {
            let d = f16_at(b, 0);
            let qs = &b[block_bytes - 32..];
            out.extend(qs.iter().map(|&q| q as i8 as f32 * d));
        }),
        GgmlType::Q4K => blocks.for_each(|b| dequant_q4k(b, &mut out)),
        GgmlType::Q5K => blocks.for_each(|b| dequant_q5k(b, &mut out)),
        GgmlType::Q6K => blocks.for_each(|b| dequant_q6k(b, &mut out)),
        _ => return None,
    }
    Some(out)
}

/// Q4_0 (f16 d, 16 bytes: value = (nibble - 8) * d) and Q4_1 (f16 d, f16 m, 16 bytes:
/// value = nibble * d + m). Low nibbles are elements 0..16, high nibbles 16..32.
fn dequant_q4(b: &[u8], out: &mut Vec<f32>, with_min: bool) {
    let d = f16_at(b, 0);
    let (offset, m, qs) = if with_min {
        (0, f16_at(b, 2), &b[4..20])
    } else {
        (8, 0.0, &b[2..18])
    };
    out.extend(
        qs.iter()
            .map(|&q| (i32::from(q & 0x0F) - offset) as f32 * d + m),
    );
    out.extend(
        qs.iter()
            .map(|&q| (i32::from(q >> 4) - offset) as f32 * d + m),
    );
}

/// Q5_0 / Q5_1: like Q4 with a fifth bit per element in a 32-bit mask `qh` (bit j for
/// element j); Q5_0 centres on 16.
fn dequant_q5(b: &[u8], out: &mut Vec<f32>, with_min: bool) {
    let d = f16_at(b, 0);
    let (offset, m, rest) = if with_min {
        (0, f16_at(b, 2), &b[4..])
    } else {
        (16, 0.0, &b[2..])
    };
    let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let qs = &rest[4..20];
    for half in 0..2 {
        for (j, &q) in qs.iter().enumerate() {
            let lo = if half == 0 { q & 0x0F } else { q >> 4 };
            let hi = ((qh >> (j + 16 * half)) & 1) as u8;
            out.push((i32::from(lo | hi << 4) - offset) as f32 * d + m);
        }
    }
}

/// The 6-bit scale and min of sub-block `j` in a Q4_K/Q5_K block (ggml's
/// `get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    let (sc, m) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    };
    (sc as f32, m as f32)
}

/// Q4_K: 256 elements as 8 sub-blocks of 32, each with a 6-bit scale and min.
/// Layout: f16 d, f16 dmin, 12 bytes of packed scales, 128 bytes of nibbles.
fn dequant_q4k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    for (i, q) in b[16..144].chunks_exact(32).enumerate() {
        let (s1, m1) = scale_min_k4(2 * i, scales);
        let (s2, m2) = scale_min_k4(2 * i + 1, scales);
        out.extend(q.iter().map(|&x| d * s1 * (x & 0x0F) as f32 - dmin * m1));
        out.extend(q.iter().map(|&x| d * s2 * (x >> 4) as f32 - dmin * m2));
    }
}

/// Q5_K: Q4_K plus a fifth bit per element from the 32-byte `qh`.
/// Layout: f16 d, f16 dmin, 12 bytes scales, 32 bytes qh, 128 bytes nibbles.
fn dequant_q5k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    for (i, ql) in b[48..176].chunks_exact(32).enumerate() {
        let (s1, m1) = scale_min_k4(2 * i, scales);
        let (s2, m2) = scale_min_k4(2 * i + 1, scales);
        let (u1, u2) = (1u8 << (2 * i), 2u8 << (2 * i));
        out.extend(ql.iter().zip(qh).map(|(&x, &h)| {
            let hi = if h & u1 != 0 { 16.0 } else { 0.0 };
            d * s1 * ((x & 0x0F) as f32 + hi) - dmin * m1
        }));
        out.extend(ql.iter().zip(qh).map(|(&x, &h)| {
            let hi = if h & u2 != 0 { 16.0 } else { 0.0 };
            d * s2 * ((x >> 4) as f32 + hi) - dmin * m2
        }));
    }
}

/// Q6_K: 256 elements, 4 low bits in `ql` (128 bytes), 2 high bits in `qh` (64 bytes),
/// 16 signed 8-bit scales, then f16 d.
fn dequant_q6k(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 208);
    let start = out.len();
    out.resize(start + 256, 0.0);
    let y = &mut out[start..];
    for n in 0..2 {
        let ql = &b[64 * n..64 * n + 64];
        let qh = &b[128 + 32 * n..128 + 32 * n + 32];
        let sc = &b[192 + 8 * n..192 + 8 * n + 8];
        let y = &mut y[128 * n..128 * n + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

/// llama.cpp's convert script interleaves the rotary halves of each Q/K head
/// (`permute(w, n_head, n_head_kv)`: rows viewed as `[n_head, 2, rows/n_head/2]`, axes 1 and
/// 2 swapped) so GGUF uses the GPT-J rotary layout. This applies that permutation to
/// HF-ordered rows of length `cols` (`cols = 1` for a bias). Returns None when the rows do
/// not split into `n_head` heads of even size.
pub fn permute_qk(data: &[f32], cols: usize, n_head: usize) -> Option<Vec<f32>> {
    reorder_qk(data, cols, n_head, false)
}

/// The inverse of [`permute_qk`]: GGUF row order back to Hugging Face's (rotate-half) order.
/// Use `n_head = num_attention_heads` for q and `num_key_value_heads` for k.
pub fn unpermute_qk(data: &[f32], cols: usize, n_head: usize) -> Option<Vec<f32>> {
    reorder_qk(data, cols, n_head, true)
}

fn reorder_qk(data: &[f32], cols: usize, n_head: usize, to_hf: bool) -> Option<Vec<f32>> {
    if cols == 0 || n_head == 0 || !data.len().is_multiple_of(cols) {
        return None;
    }
    let rows = data.len() / cols;
    if !rows.is_multiple_of(2 * n_head) {
        return None;
    }
    let half = rows / n_head / 2;
    let mut out = vec![0.0; data.len()];
    for h in 0..n_head {
        for s in 0..2 {
            for i in 0..half {
                // HF row (h, s, i) is stored at GGUF row (h, i, s).
                let hf = (h * 2 + s) * half + i;
                let gg = (h * half + i) * 2 + s;
                let (src, dst) = if to_hf { (gg, hf) } else { (hf, gg) };
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    Some(out)
}

/// Builds GGUF files by hand for tests (here and in the tokenizer).
#[cfg(test)]
pub(crate) mod test_writer {
    use super::*;
    use std::io::Write;

    /// Minimal GGUF writer for building test files by hand.
    #[derive(Default)]
    pub(crate) struct Writer {
        kv: Vec<u8>,
        n_kv: u64,
        infos: Vec<u8>,
        data: Vec<u8>,
        n_tensors: u64,
        pub(crate) alignment: usize,
    }

    pub(crate) fn put_str(buf: &mut Vec<u8>, s: &str) {
        buf.extend((s.len() as u64).to_le_bytes());
        buf.extend(s.as_bytes());
    }

    impl Writer {
        pub(crate) fn new() -> Self {
            Self {
                alignment: 32,
                ..Self::default()
            }
        }

        pub(crate) fn kv(&mut self, key: &str, ty: u32, payload: &[u8]) -> &mut Self {
            put_str(&mut self.kv, key);
            self.kv.extend(ty.to_le_bytes());
            self.kv.extend(payload);
            self.n_kv += 1;
            self
        }

        pub(crate) fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
            self.kv(key, 4, &v.to_le_bytes())
        }

        pub(crate) fn kv_f32(&mut self, key: &str, v: f32) -> &mut Self {
            self.kv(key, 6, &v.to_le_bytes())
        }

        pub(crate) fn kv_bool(&mut self, key: &str, v: bool) -> &mut Self {
            self.kv(key, 7, &[v as u8])
        }

        pub(crate) fn kv_str(&mut self, key: &str, v: &str) -> &mut Self {
            let mut p = Vec::new();
            put_str(&mut p, v);
            self.kv(key, 8, &p)
        }

        pub(crate) fn kv_str_array(&mut self, key: &str, items: &[&str]) -> &mut Self {
            let mut p = Vec::new();
            p.extend(8u32.to_le_bytes());
            p.extend((items.len() as u64).to_le_bytes());
            for s in items {
                put_str(&mut p, s);
            }
            self.kv(key, 9, &p)
        }

        pub(crate) fn kv_i32_array(&mut self, key: &str, items: &[i32]) -> &mut Self {
            let mut p = Vec::new();
            p.extend(5u32.to_le_bytes());
            p.extend((items.len() as u64).to_le_bytes());
            for v in items {
                p.extend(v.to_le_bytes());
            }
            self.kv(key, 9, &p)
        }

        /// `dims` in ggml order (innermost first).
        pub(crate) fn tensor(
            &mut self,
            name: &str,
            dims: &[u64],
            ty: GgmlType,
            bytes: &[u8],
        ) -> &mut Self {
            while !self.data.len().is_multiple_of(self.alignment) {
                self.data.push(0);
            }
            put_str(&mut self.infos, name);
            self.infos.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                self.infos.extend(d.to_le_bytes());
            }
            self.infos.extend(ty.id().to_le_bytes());
            self.infos.extend((self.data.len() as u64).to_le_bytes());
            self.data.extend(bytes);
            self.n_tensors += 1;
            self
        }

        pub(crate) fn f32_tensor(&mut self, name: &str, dims: &[u64], values: &[f32]) -> &mut Self {
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.tensor(name, dims, GgmlType::F32, &bytes)
        }

        pub(crate) fn bytes(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend(MAGIC);
            out.extend(3u32.to_le_bytes());
            out.extend(self.n_tensors.to_le_bytes());
            out.extend(self.n_kv.to_le_bytes());
            out.extend(&self.kv);
            out.extend(&self.infos);
            while !out.len().is_multiple_of(self.alignment) {
                out.push(0);
            }
            out.extend(&self.data);
            out
        }

        pub(crate) fn write(&self) -> tempfile::NamedTempFile {
            let mut f = tempfile::NamedTempFile::new().expect("temp file");
            f.write_all(&self.bytes()).expect("write gguf");
            f.flush().expect("flush");
            f
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_writer::Writer;
    use super::*;
    use std::io::Write;

    fn f16_bytes(v: f32) -> [u8; 2] {
        half::f16::from_f32(v).to_le_bytes()
    }

    #[test]
    fn reads_metadata_and_dequantises_each_type() {
        // Q4_0 block: d = 0.5; byte j holds element j (low nibble) and j+16 (high nibble).
        let mut q4_0 = f16_bytes(0.5).to_vec();
        q4_0.extend((0..16u8).map(|j| j | (15 - j) << 4));
        // Q4_1 block: d = 0.25, m = -1.0.
        let mut q4_1 = f16_bytes(0.25).to_vec();
        q4_1.extend(f16_bytes(-1.0));
        q4_1.extend((0..16u8).map(|j| j | (15 - j) << 4));
        // Q8_0 block: d = 0.125, values -16..16.
        let mut q8_0 = f16_bytes(0.125).to_vec();
        q8_0.extend((-16i8..16).map(|q| q as u8));
        let f16: Vec<u8> = [1.5f32, -2.0, 0.0, 65504.0]
            .iter()
            .flat_map(|&v| f16_bytes(v))
            .collect();

        let mut w = Writer::new();
        w.kv_str("general.architecture", "llama")
            .kv_u32("some.count", 7)
            .kv_f32("some.eps", 0.25)
            .kv_bool("some.flag", true)
            .kv_str_array("some.words", &["a b", "", "ünï"])
            .kv_i32_array("some.ints", &[3, -1])
            .f32_tensor("f32", &[3, 2], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
            .tensor("f16", &[4], GgmlType::F16, &f16)
            .tensor("q4_0", &[32], GgmlType::Q4_0, &q4_0)
            .tensor("q4_1", &[32], GgmlType::Q4_1, &q4_1)
            .tensor("q8_0", &[32], GgmlType::Q8_0, &q8_0);
        let tmp = w.write();
        let g = GgufFile::open(tmp.path()).expect("open");

        assert_eq!(g.version(), 3);
        assert_eq!(g.require_str("general.architecture").unwrap(), "llama");
        assert_eq!(g.require_u64("some.count").unwrap(), 7);
        assert_eq!(g.get_f64("some.eps").unwrap(), Some(0.25));
        assert_eq!(g.get_bool("some.flag").unwrap(), Some(true));
        assert_eq!(
            g.get_str_array("some.words").unwrap().unwrap(),
            vec!["a b", "", "ünï"]
        );
        assert_eq!(g.get_i64_array("some.ints").unwrap().unwrap(), vec![3, -1]);
        assert_eq!(g.get_u64("absent").unwrap(), None);
        let err = g.require_u64("absent").unwrap_err().to_string();
        assert!(
            err.contains("absent") && err.contains(&tmp.path().display().to_string()),
            "{err}"
        );
        let err = g.get_u64("some.words").unwrap_err().to_string();
        assert!(err.contains("some.words") && err.contains("array"), "{err}");

        let t = g.tensor_f32("f32").unwrap();
        assert_eq!(t.shape, vec![2, 3]);
        assert_eq!(t.data, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(
            g.tensor_f32("f16").unwrap().data,
            vec![1.5, -2.0, 0.0, 65504.0]
        );

        let q = g.tensor_f32("q4_0").unwrap();
        assert_eq!(q.shape, vec![32]);
        for j in 0..16 {
            assert_eq!(q.data[j], (j as f32 - 8.0) * 0.5, "q4_0 low {j}");
            assert_eq!(
                q.data[j + 16],
                (15.0 - j as f32 - 8.0) * 0.5,
                "q4_0 high {j}"
            );
        }
        let q = g.tensor_f32("q4_1").unwrap();
        for j in 0..16 {
            assert_eq!(q.data[j], j as f32 * 0.25 - 1.0, "q4_1 low {j}");
            assert_eq!(
                q.data[j + 16],
                (15 - j) as f32 * 0.25 - 1.0,
                "q4_1 high {j}"
            );
        }
        let q = g.tensor_f32("q8_0").unwrap();
        for (j, v) in q.data.iter().enumerate() {
            assert_eq!(*v, (j as f32 - 16.0) * 0.125, "q8_0 {j}");
        }
        assert!(
            g.tensor_f32("nope")
                .unwrap_err()
                .to_string()
                .contains("nope")
        );
    }

    #[test]
    fn q5_blocks_use_the_high_bit_mask() {
        // Q5_0: d = 1, qh has bit j set for odd j; nibbles all 3.
        let qh: u32 = 0xAAAA_AAAA;
        let mut b = f16_bytes(1.0).to_vec();
        b.extend(qh.to_le_bytes());
        b.extend([0x33u8; 16]);
        let v = dequantize(GgmlType::Q5_0, &b).unwrap();
        for (j, x) in v.iter().enumerate() {
            let expect = 3.0 + if j % 2 == 1 { 16.0 } else { 0.0 } - 16.0;
            assert_eq!(*x, expect, "q5_0 {j}");
        }
        // Q5_1: d = 0.5, m = 2.
        let mut b = f16_bytes(0.5).to_vec();
        b.extend(f16_bytes(2.0));
        b.extend(qh.to_le_bytes());
        b.extend([0x33u8; 16]);
        let v = dequantize(GgmlType::Q5_1, &b).unwrap();
        for (j, x) in v.iter().enumerate() {
            let q = 3.0 + if j % 2 == 1 { 16.0 } else { 0.0 };
            assert_eq!(*x, q * 0.5 + 2.0, "q5_1 {j}");
        }
    }

    #[test]
    fn k_quants_match_ggml_reference_values() {
        // One block each with bytes (i * 37 + 11) mod 256 and sane f16 scales; reference
        // values from gguf-py's `gguf.quants.dequantize` (the Python port of ggml).
        let block =
            |len: usize| -> Vec<u8> { (0..len).map(|i| ((i * 37 + 11) % 256) as u8).collect() };
        let mut q4k = block(144);
        q4k[..2].copy_from_slice(&f16_bytes(0.01));
        q4k[2..4].copy_from_slice(&f16_bytes(0.02));
        let mut q5k = block(176);
        q5k[..2].copy_from_slice(&f16_bytes(0.01));
        q5k[2..4].copy_from_slice(&f16_bytes(0.02));
        let mut q6k = block(210);
        q6k[208..].copy_from_slice(&f16_bytes(0.005));
        let cases = [
            (GgmlType::Q4K, q4k, Q4K_REF),
            (GgmlType::Q5K, q5k, Q5K_REF),
            (GgmlType::Q6K, q6k, Q6K_REF),
        ];
        for (ty, bytes, reference) in cases {
            let v = dequantize(ty, &bytes).unwrap();
            assert_eq!(v.len(), 256);
            for &(i, expect) in reference {
                assert!(
                    (v[i] - expect).abs() <= 1e-4 * expect.abs().max(1.0),
                    "{ty} [{i}] = {} != {expect}",
                    v[i]
                );
            }
        }
    }

    // Reference values from gguf-py's `gguf.quants.dequantize` for the blocks above.
    const Q4K_REF: &[(usize, f32)] = &[
        (0, 2.3905106),
        (1, -1.0202179),
        (5, 0.220047),
        (31, 0.84017944),
        (32, -0.2800598),
        (33, -0.16003418),
        (63, 0.040008545),
        (64, 3.2907028),
        (100, 0.440094),
        (127, 0.3000641),
        (128, 4.050865),
        (150, 3.2706985),
        (191, 0.0),
        (192, 5.051079),
        (200, 1.1302414),
        (255, -0.040008545),
    ];
    const Q5K_REF: &[(usize, f32)] = &[
        (0, 7.35157),
        (1, -1.0202179),
        (5, 0.220047),
        (31, 0.84017944),
        (32, 0.76016235),
        (33, -0.40008545),
        (63, 0.440094),
        (64, 3.2907028),
        (100, 1.8403931),
        (127, -0.54011536),
        (128, 10.292198),
        (150, 3.2706985),
        (191, 6.0012817),
        (192, 12.892754),
        (200, 1.1302414),
        (255, 0.5601196),
    ];
    const Q6K_REF: &[(usize, f32)] = &[
        (0, -7.1565285),
        (1, 8.481812),
        (5, 7.421585),
        (31, -0.48010254),
        (32, 1.1552467),
        (33, -3.3607178),
        (63, -2.9006195),
        (64, -15.203247),
        (100, 12.617695),
        (127, 7.501602),
        (128, -1.7553749),
        (150, -0.84017944),
        (191, -4.9010468),
        (192, -2.420517),
        (200, 5.446163),
        (255, -0.3000641),
    ];

    #[test]
    fn custom_alignment_and_errors_name_the_problem() {
        let mut w = Writer::new();
        w.alignment = 64;
        w.kv_u32("general.alignment", 64)
            .f32_tensor("a", &[2], &[1.0, 2.0])
            .f32_tensor("b", &[1], &[3.0]);
        let tmp = w.write();
        let g = GgufFile::open(tmp.path()).unwrap();
        assert_eq!(g.alignment(), 64);
        assert_eq!(g.data_offset() % 64, 0);
        assert_eq!(g.tensor_f32("b").unwrap().data, vec![3.0]);

        // Truncated: cut into the last tensor's data.
        let bytes = w.bytes();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&bytes[..bytes.len() - 2]).unwrap();
        let err = GgufFile::open(f.path()).unwrap_err().to_string();
        assert!(err.contains("truncated") && err.contains("`b`"), "{err}");

        // Truncated inside the header.
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&bytes[..30]).unwrap();
        let err = GgufFile::open(f.path()).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");

        // Bad magic.
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"PK\x03\x04 not a gguf file").unwrap();
        let err = GgufFile::open(f.path()).unwrap_err();
        assert!(matches!(err, GgufError::BadMagic { .. }), "{err}");
        assert!(err.to_string().contains(&f.path().display().to_string()));

        // Unsupported type names the type and the tensor.
        let mut w = Writer::new();
        w.tensor("weird", &[256], GgmlType::Q2K, &[0u8; 84]);
        let tmp = w.write();
        let err = GgufFile::open(tmp.path())
            .unwrap()
            .tensor_f32("weird")
            .unwrap_err()
            .to_string();
        assert!(err.contains("Q2_K") && err.contains("weird"), "{err}");
        let mut w = Writer::new();
        w.tensor("iq", &[256], GgmlType::Other(19), &[0u8; 64]);
        let tmp = w.write();
        let g = GgufFile::open(tmp.path()).unwrap();
        let err = g.tensor_f32("iq").unwrap_err().to_string();
        assert!(err.contains("ggml type 19") && err.contains("iq"), "{err}");
    }

    #[test]
    fn unpermute_inverts_permute() {
        let (n_head, head_dim, cols) = (3, 4, 5);
        let data: Vec<f32> = (0..n_head * head_dim * cols).map(|i| i as f32).collect();
        let p = permute_qk(&data, cols, n_head).unwrap();
        assert_ne!(p, data);
        assert_eq!(unpermute_qk(&p, cols, n_head).unwrap(), data);
        assert_eq!(
            permute_qk(&unpermute_qk(&data, cols, n_head).unwrap(), cols, n_head).unwrap(),
            data
        );
        // By hand for one head of 4 rows (bias, cols = 1): HF [a0 a1 b0 b1] -> GGUF [a0 b0 a1 b1].
        assert_eq!(
            permute_qk(&[0.0, 1.0, 2.0, 3.0], 1, 1).unwrap(),
            vec![0.0, 2.0, 1.0, 3.0]
        );
        assert!(permute_qk(&[0.0; 6], 1, 2).is_none());
    }
}
