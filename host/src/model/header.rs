//! Validation of model-file headers before a third-party parser sees them.
//!
//! A model file is input the host did not write. candle's GGUF reader divides by
//! `general.alignment` (0 panics), trusts tensor shapes and offsets, and keeps the last of two
//! tensors with the same name; the safetensors reader is careful, but we check the same
//! invariants ourselves so both formats are held to one rule: every count, length, shape and
//! offset is checked against the file's size with overflow-checked arithmetic, and a file that
//! fails gets a clear [`ModelError::Format`](super::ModelError::Format), never a panic.

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};

use candle_core::quantized::GgmlDType;

/// Tensors in one file. Why 65,536: a 405B-parameter LLaMA has ~1,140 tensors.
pub const MAX_TENSORS: u64 = 1 << 16;
/// Metadata entries of a GGUF file. Why 65,536: real files carry a few dozen.
pub const MAX_METADATA: u64 = 1 << 16;
/// Bytes of one GGUF string. Why 16 MiB: the longest real values are chat templates (tens of
/// KiB); a token string is a few bytes.
pub const MAX_STRING: u64 = 16 << 20;
/// Elements of one GGUF array. Why 2^24: the largest vocabularies and merge lists are a few
/// hundred thousand entries.
pub const MAX_ARRAY: u64 = 1 << 24;
/// Nesting of GGUF arrays. Why 4: real files have none (arrays of strings or numbers).
pub const MAX_DEPTH: usize = 4;
/// Dimensions of a tensor (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;
/// Largest `general.alignment`. Why 1 MiB: files use 32 (the default) or a page; the value
/// must also be a power of two, as llama.cpp requires.
pub const MAX_ALIGNMENT: u64 = 1 << 20;
/// Bytes of a safetensors JSON header. Why 64 MiB: 100,000 tensors take ~10 MiB of JSON.
pub const MAX_ST_HEADER: u64 = 64 << 20;

/// Why a header is refused.
pub type HeaderResult<T> = Result<T, String>;

/// A reader that knows how far it is and how much the file holds.
struct Cursor<R> {
    r: R,
    pos: u64,
    size: u64,
}

impl<R: Read> Cursor<R> {
    fn bytes(&mut self, n: u64, what: &str) -> HeaderResult<Vec<u8>> {
        if n > self.size.saturating_sub(self.pos) {
            return Err(format!(
                "{what} needs {n} bytes at offset {}, the file has {}",
                self.pos, self.size
            ));
        }
        let mut b = vec![0u8; n as usize];
        self.r
            .read_exact(&mut b)
            .map_err(|e| format!("{what} at offset {}: {e}", self.pos))?;
        self.pos += n;
        Ok(b)
    }
    fn skip(&mut self, n: u64, what: &str) -> HeaderResult<()> {
        if n > self.size.saturating_sub(self.pos) {
            return Err(format!(
                "{what} needs {n} bytes at offset {}, the file has {}",
                self.pos, self.size
            ));
        }
        std::io::copy(&mut (&mut self.r).take(n), &mut std::io::sink())
            .map_err(|e| format!("{what}: {e}"))?;
        self.pos += n;
        Ok(())
    }
    fn u32(&mut self, what: &str) -> HeaderResult<u32> {
        Ok(u32::from_le_bytes(
            self.bytes(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self, what: &str) -> HeaderResult<u64> {
        Ok(u64::from_le_bytes(
            self.bytes(8, what)?.try_into().expect("8 bytes"),
        ))
    }
}

/// GGUF value types (the GGUF specification's numbering).
const STRING: u32 = 8;
const ARRAY: u32 = 9;

/// Size on disk of a fixed-size value type; `None` for strings, arrays and unknown types.
fn fixed_size(t: u32) -> Option<u64> {
    match t {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

/// A GGUF header being read: version-dependent length prefixes.
struct Gguf<R> {
    c: Cursor<R>,
    v1: bool,
}

impl<R: Read> Gguf<R> {
    fn len(&mut self, what: &str) -> HeaderResult<u64> {
        if self.v1 {
            self.c.u32(what).map(u64::from)
        } else {
            self.c.u64(what)
        }
    }

    fn string(&mut self, what: &str) -> HeaderResult<String> {
        let n = self.len(what)?;
        if n > MAX_STRING {
            return Err(format!(
                "{what} is {n} bytes long; the limit is {MAX_STRING}"
            ));
        }
        Ok(String::from_utf8_lossy(&self.c.bytes(n, what)?).into_owned())
    }

    /// Skip one value of type `t`; returns it when it is an unsigned or non-negative integer.
    fn value(&mut self, t: u32, depth: usize, key: &str) -> HeaderResult<Option<u64>> {
        if let Some(n) = fixed_size(t) {
            let b = self.c.bytes(n, key)?;
            if t == 7 && b[0] > 1 {
                return Err(format!("`{key}`: a boolean of value {}", b[0]));
            }
            let mut le = [0u8; 8];
            le[..b.len()].copy_from_slice(&b);
            let v = u64::from_le_bytes(le);
            let signed_negative = matches!(t, 1 | 3 | 5 | 11) && (b[b.len() - 1] & 0x80) != 0;
            let integer = matches!(t, 0..=5 | 10 | 11);
            return Ok((integer && !signed_negative).then_some(v));
        }
        match t {
            STRING => {
                self.string(key)?;
                Ok(None)
            }
            ARRAY => {
                if depth >= MAX_DEPTH {
                    return Err(format!("`{key}`: arrays nested deeper than {MAX_DEPTH}"));
                }
                let item = self.c.u32(key)?;
                // Checked even for an empty array: the parser refuses an unknown item type.
                if fixed_size(item).is_none() && item != STRING && item != ARRAY {
                    return Err(format!("`{key}`: an array of unknown value type {item}"));
                }
                let n = self.len(key)?;
                if n > MAX_ARRAY {
                    return Err(format!(
                        "`{key}`: an array of {n} elements; the limit is {MAX_ARRAY}"
                    ));
                }
                match fixed_size(item) {
                    Some(size) => {
                        let bytes = n
                            .checked_mul(size)
                            .ok_or_else(|| format!("`{key}`: array size overflows"))?;
                        self.c.skip(bytes, key)?;
                    }
                    None => {
                        for _ in 0..n {
                            self.value(item, depth + 1, key)?;
                        }
                    }
                }
                Ok(None)
            }
            other => Err(format!("`{key}`: unknown value type {other}")),
        }
    }
}

/// ggml's tensor types as candle reads them (the same numbering as `GgmlDType::from_u32`).
fn ggml_dtype(t: u32) -> Option<GgmlDType> {
    Some(match t {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// One tensor of a GGUF directory, as validated.
struct GgufTensor {
    name: String,
    offset: u64,
    bytes: u64,
}

/// Check a GGUF header (`r` positioned at the file's start, `size` the file's length): magic
/// and version, metadata counts, string and array lengths, `general.alignment` (a power of
/// two), tensor counts, unique names, dimensions, element counts and byte sizes without
/// overflow, offsets aligned, and every tensor's data inside the file.
pub fn check_gguf(r: impl Read, size: u64) -> HeaderResult<()> {
    let mut g = Gguf {
        c: Cursor { r, pos: 0, size },
        v1: false,
    };
    if g.c.bytes(4, "magic")? != b"GGUF" {
        return Err("not a GGUF file (bad magic)".into());
    }
    let version = g.c.u32("version")?;
    if !(1..=3).contains(&version) {
        return Err(format!("GGUF version {version} (1, 2 and 3 are read)"));
    }
    g.v1 = version == 1;
    let tensors = g.len("tensor count")?;
    let kvs = g.len("metadata count")?;
    if tensors > MAX_TENSORS || kvs > MAX_METADATA {
        return Err(format!(
            "{tensors} tensors and {kvs} metadata entries; the limits are {MAX_TENSORS} and {MAX_METADATA}"
        ));
    }
    let mut alignment = 32u64;
    for _ in 0..kvs {
        let key = g.string("metadata key")?;
        let t = g.c.u32(&key)?;
        let v = g.value(t, 0, &key)?;
        if key == "general.alignment" {
            // candle reads only integer alignments; anything else means the default.
            if matches!(t, 0..=5) {
                let a = v.ok_or("`general.alignment` is negative")?;
                if a == 0 || !a.is_power_of_two() || a > MAX_ALIGNMENT {
                    return Err(format!(
                        "`general.alignment` is {a}: it must be a power of two up to {MAX_ALIGNMENT}"
                    ));
                }
                alignment = a;
            }
        }
    }
    let mut dir = Vec::with_capacity(tensors.min(1024) as usize);
    let mut names = HashSet::new();
    for _ in 0..tensors {
        let name = g.string("tensor name")?;
        if !names.insert(name.clone()) {
            return Err(format!("tensor `{name}` appears twice"));
        }
        let dims = g.c.u32(&name)?;
        if dims > MAX_DIMS {
            return Err(format!(
                "tensor `{name}` has {dims} dimensions; at most {MAX_DIMS}"
            ));
        }
        let mut elems = 1u64;
        for _ in 0..dims {
            let d = g.len(&name)?;
            elems = elems
                .checked_mul(d)
                .filter(|&e| e <= 1 << 48)
                .ok_or_else(|| format!("tensor `{name}`: its shape overflows"))?;
        }
        let t = g.c.u32(&name)?;
        let dtype = ggml_dtype(t).ok_or_else(|| format!("tensor `{name}`: unknown type {t}"))?;
        let block = dtype.block_size() as u64;
        if !elems.is_multiple_of(block) {
            return Err(format!(
                "tensor `{name}`: {elems} elements do not fill blocks of {block}"
            ));
        }
        let bytes = elems / block * dtype.type_size() as u64;
        let offset = g.c.u64(&name)?;
        if offset % alignment != 0 {
            return Err(format!(
                "tensor `{name}`: offset {offset} is not a multiple of the alignment {alignment}"
            ));
        }
        dir.push(GgufTensor {
            name,
            offset,
            bytes,
        });
    }
    let data =
        g.c.pos
            .checked_next_multiple_of(alignment)
            .ok_or("the tensor data offset overflows")?;
    for t in &dir {
        let end = data
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(t.bytes))
            .ok_or_else(|| format!("tensor `{}`: its offset overflows", t.name))?;
        if end > size {
            return Err(format!(
                "tensor `{}` ends at byte {end}, past the end of the file ({size} bytes)",
                t.name
            ));
        }
    }
    Ok(())
}

/// Bits of one element of a safetensors dtype; `None` for an unknown name.
fn st_bits(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" | "F8_E4M3FNUZ"
        | "F8_E5M2FNUZ" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" | "C64" => 64,
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        _ => return None,
    })
}

/// One entry of a safetensors header.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

/// A validated safetensors tensor entry.
#[derive(Debug, Clone)]
pub struct StTensorEntry {
    /// Its name.
    pub name: String,
    /// Its dtype's safetensors name (`F32`, `F16`, …).
    pub dtype: String,
    /// Its shape.
    pub shape: Vec<u64>,
    /// Its bytes in the data area, `[start, end)`.
    pub data: (u64, u64),
}

/// A validated safetensors header.
#[derive(Debug, Clone)]
pub struct StHeader {
    /// Bytes of the JSON header (the data area starts at `8 + header_len`).
    pub header_len: u64,
    /// Every tensor, in data order.
    pub tensors: Vec<StTensorEntry>,
}

/// Check a safetensors header (`r` at the file's start, `size` the file's length): the header
/// length, its JSON, every dtype, shape (overflow-checked) and byte range, and that the
/// ranges tile the data area exactly (the format's own rule), all within the file. Returns
/// what it validated, so the reader uses exactly the header it checked, from one handle.
pub fn read_safetensors(mut r: impl Read, size: u64) -> HeaderResult<StHeader> {
    let mut len = [0u8; 8];
    r.read_exact(&mut len)
        .map_err(|_| format!("{size} bytes: too short for a safetensors header"))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_ST_HEADER || n > size.saturating_sub(8) {
        return Err(format!(
            "the header claims {n} bytes (file {size} bytes, limit {MAX_ST_HEADER})"
        ));
    }
    let mut json = vec![0u8; n as usize];
    r.read_exact(&mut json)
        .map_err(|e| format!("reading the header: {e}"))?;
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&json)
        .map_err(|e| format!("the header is not a JSON object: {e}"))?;
    let data = size.saturating_sub(8 + n);
    let mut ranges = Vec::with_capacity(map.len());
    for (name, v) in map {
        if name == "__metadata__" {
            let strings = v
                .as_object()
                .is_some_and(|m| m.values().all(|x| x.is_string()));
            if !(v.is_null() || strings) {
                return Err("`__metadata__` is not a map of strings".into());
            }
            continue;
        }
        if ranges.len() as u64 >= MAX_TENSORS {
            return Err(format!("more than {MAX_TENSORS} tensors"));
        }
        let e: StEntry = serde_json::from_value(v).map_err(|e| format!("tensor `{name}`: {e}"))?;
        let bits = st_bits(&e.dtype)
            .ok_or_else(|| format!("tensor `{name}`: unknown dtype {}", e.dtype))?;
        let bytes = e
            .shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .and_then(|elems| elems.checked_mul(bits))
            .filter(|b| b % 8 == 0)
            .map(|b| b / 8)
            .ok_or_else(|| format!("tensor `{name}`: its shape overflows or splits a byte"))?;
        let (start, end) = e.data_offsets;
        if start > end || end - start != bytes || end > data {
            return Err(format!(
                "tensor `{name}`: bytes [{start}, {end}) for {bytes} bytes of data in a {data}-byte area"
            ));
        }
        ranges.push((start, end, name, e.dtype, e.shape));
    }
    ranges.sort();
    let mut at = 0;
    for (start, end, name, _, _) in &ranges {
        if *start != at {
            return Err(format!(
                "tensor `{name}` starts at {start}, not at {at}: gaps or overlaps in the data"
            ));
        }
        at = *end;
    }
    if at != data {
        return Err(format!("the tensors cover {at} of the {data} data bytes"));
    }
    Ok(StHeader {
        header_len: n,
        tensors: ranges
            .into_iter()
            .map(|(start, end, name, dtype, shape)| StTensorEntry {
                name,
                dtype,
                shape,
                data: (start, end),
            })
            .collect(),
    })
}

/// Open `path` and run `check` on its header.
pub fn check_file(
    path: &std::path::Path,
    check: impl FnOnce(&mut std::io::BufReader<std::fs::File>, u64) -> HeaderResult<()>,
) -> super::Result<()> {
    let io = |source| super::ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::io::BufReader::new(std::fs::File::open(path).map_err(io)?);
    let size = f.get_ref().metadata().map_err(io)?.len();
    check(&mut f, size).map_err(|reason| super::ModelError::Format {
        path: path.to_path_buf(),
        reason,
    })?;
    f.seek(SeekFrom::Start(0)).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::Content;
    use proptest::prelude::*;

    /// A GGUF value of a type the generator picked.
    #[derive(Debug, Clone)]
    enum Val {
        U32(u32),
        I32(i32),
        Str(String, i64),
        Arr(u32, u64, Vec<u8>),
        Raw(u32, Vec<u8>),
    }

    #[derive(Debug, Clone)]
    struct Tensor {
        name: String,
        dims: Vec<u64>,
        dtype: u32,
        offset: u64,
    }

    fn put_len(b: &mut Vec<u8>, v1: bool, n: u64) {
        if v1 {
            b.extend((n as u32).to_le_bytes());
        } else {
            b.extend(n.to_le_bytes());
        }
    }

    /// Serialize a GGUF header; `lie` is added to every declared string length.
    fn gguf(version: u32, kvs: &[(String, Val)], tensors: &[Tensor], pad: usize) -> Vec<u8> {
        let v1 = version == 1;
        let mut b = b"GGUF".to_vec();
        b.extend(version.to_le_bytes());
        put_len(&mut b, v1, tensors.len() as u64);
        put_len(&mut b, v1, kvs.len() as u64);
        for (k, v) in kvs {
            put_len(&mut b, v1, k.len() as u64);
            b.extend(k.as_bytes());
            match v {
                Val::U32(x) => {
                    b.extend(4u32.to_le_bytes());
                    b.extend(x.to_le_bytes());
                }
                Val::I32(x) => {
                    b.extend(5u32.to_le_bytes());
                    b.extend(x.to_le_bytes());
                }
                Val::Str(s, lie) => {
                    b.extend(8u32.to_le_bytes());
                    put_len(&mut b, v1, (s.len() as i64 + lie).max(0) as u64);
                    b.extend(s.as_bytes());
                }
                Val::Arr(t, n, raw) => {
                    b.extend(9u32.to_le_bytes());
                    b.extend(t.to_le_bytes());
                    put_len(&mut b, v1, *n);
                    b.extend(raw);
                }
                Val::Raw(t, raw) => {
                    b.extend(t.to_le_bytes());
                    b.extend(raw);
                }
            }
        }
        for t in tensors {
            put_len(&mut b, v1, t.name.len() as u64);
            b.extend(t.name.as_bytes());
            b.extend((t.dims.len() as u32).to_le_bytes());
            for &d in &t.dims {
                put_len(&mut b, v1, d);
            }
            b.extend(t.dtype.to_le_bytes());
            b.extend(t.offset.to_le_bytes());
        }
        b.resize(b.len() + pad, 0x5a);
        b
    }

    fn val() -> impl Strategy<Value = Val> {
        prop_oneof![
            prop_oneof![
                Just(0u32),
                Just(1),
                Just(3),
                Just(32),
                Just(64),
                any::<u32>()
            ]
            .prop_map(Val::U32),
            prop_oneof![Just(-1i32), Just(0), Just(32), any::<i32>()].prop_map(Val::I32),
            (
                "[a-z]{0,12}",
                prop_oneof![Just(0i64), Just(1), Just(-3), Just(1 << 40)]
            )
                .prop_map(|(s, l)| Val::Str(s, l)),
            (
                prop_oneof![Just(0u32), Just(4), Just(8), Just(9), any::<u32>()],
                prop_oneof![Just(0u64), Just(2), Just(1 << 33), any::<u64>()],
                prop::collection::vec(any::<u8>(), 0..24)
            )
                .prop_map(|(t, n, r)| Val::Arr(t, n, r)),
            (0u32..16, prop::collection::vec(any::<u8>(), 0..9)).prop_map(|(t, r)| Val::Raw(t, r)),
        ]
    }

    fn tensor() -> impl Strategy<Value = Tensor> {
        let dim = prop_oneof![
            Just(0u64),
            Just(1),
            Just(2),
            Just(32),
            Just(256),
            Just(1 << 40),
            any::<u64>()
        ];
        (
            prop_oneof![Just("w".to_string()), Just("b".to_string()), "[a-z]{1,4}"],
            prop::collection::vec(dim, 0..6),
            prop_oneof![
                Just(0u32),
                Just(1),
                Just(2),
                Just(3),
                Just(8),
                Just(12),
                Just(30),
                any::<u32>()
            ],
            prop_oneof![
                Just(0u64),
                Just(32),
                Just(64),
                Just(96),
                Just(u64::MAX - 7),
                any::<u64>()
            ],
        )
            .prop_map(|(name, dims, dtype, offset)| Tensor {
                name,
                dims,
                dtype,
                offset,
            })
    }

    fn hostile_gguf() -> impl Strategy<Value = Vec<u8>> {
        let key = prop_oneof![Just("general.alignment".to_string()), "[a-z.]{1,10}"];
        (
            prop_oneof![Just(3u32), Just(2), Just(1), any::<u32>()],
            prop::collection::vec((key, val()), 0..4),
            prop::collection::vec(tensor(), 0..4),
            0usize..2048,
            prop::option::of((any::<prop::sample::Index>(), any::<u8>())),
        )
            .prop_map(|(v, kvs, ts, pad, flip)| {
                let mut b = gguf(v, &kvs, &ts, pad);
                if let Some((i, x)) = flip {
                    let i = i.index(b.len());
                    b[i] ^= x;
                }
                b
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 768, ..ProptestConfig::default() })]

        /// Whatever the bytes, validation answers (no panic); what it accepts, candle parses
        /// without panicking, and every tensor's data lies inside the file by candle's own
        /// arithmetic.
        #[test]
        fn gguf_validation_holds_for_hostile_headers(bytes in hostile_gguf()) {
            let size = bytes.len() as u64;
            if check_gguf(std::io::Cursor::new(&bytes), size).is_ok() {
                let content = std::panic::catch_unwind(|| {
                    Content::read(&mut std::io::Cursor::new(&bytes))
                });
                let content = content.expect("candle panicked on a validated header");
                let content = content.expect("candle refused a validated header");
                for info in content.tensor_infos.values() {
                    let elems = info.shape.elem_count() as u64;
                    let bytes_needed = elems / info.ggml_dtype.block_size() as u64
                        * info.ggml_dtype.type_size() as u64;
                    let end = content.tensor_data_offset + info.offset + bytes_needed;
                    prop_assert!(end <= size);
                    let read = std::panic::catch_unwind(|| {
                        info.read(
                            &mut std::io::Cursor::new(&bytes),
                            content.tensor_data_offset,
                            &candle_core::Device::Cpu,
                        )
                        .is_ok()
                    });
                    prop_assert!(read.is_ok(), "reading a validated tensor panicked");
                }
            }
        }

        /// The same for safetensors: accepted headers are accepted by the safetensors crate,
        /// and every tensor's bytes are where the header says.
        #[test]
        fn safetensors_validation_holds_for_hostile_headers(bytes in hostile_safetensors()) {
            let size = bytes.len() as u64;
            if read_safetensors(std::io::Cursor::new(&bytes), size).is_ok() {
                let st = candle_core::safetensors::SliceSafetensors::new(&bytes)
                    .expect("safetensors refused a validated header");
                for (name, view) in st.tensors() {
                    let bits: usize = view.dtype().bitsize();
                    let elems: usize = view.shape().iter().product();
                    prop_assert_eq!(view.data().len(), elems * bits / 8, "{}", name);
                }
            }
        }
    }

    fn hostile_safetensors() -> impl Strategy<Value = Vec<u8>> {
        let dtype = prop_oneof![
            Just("F32"),
            Just("F16"),
            Just("BF16"),
            Just("I64"),
            Just("BOOL"),
            Just("F4"),
            Just("C64"),
            Just("Q4"),
            Just("")
        ];
        let dim = prop_oneof![
            Just(0u64),
            Just(1),
            Just(3),
            Just(7),
            Just(1 << 31),
            Just(u64::MAX)
        ];
        let entry = (
            dtype,
            prop::collection::vec(dim, 0..4),
            any::<bool>(),
            any::<u64>(),
        );
        (
            prop::collection::vec(entry, 0..4),
            any::<bool>(),
            prop_oneof![Just(0i64), Just(0), Just(1), Just(-1), Just(1 << 20)],
            prop_oneof![Just(0i64), Just(0), Just(-1), Just(1 << 40)],
            prop::option::of((any::<prop::sample::Index>(), any::<u8>())),
        )
            .prop_map(|(entries, meta, data_delta, len_lie, flip)| {
                let mut map = serde_json::Map::new();
                if meta {
                    map.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
                }
                let mut at = 0u64;
                for (i, (dtype, shape, honest, offset)) in entries.iter().enumerate() {
                    let bits = st_bits(dtype).unwrap_or(32);
                    let bytes = shape
                        .iter()
                        .try_fold(1u64, |a, &d| a.checked_mul(d))
                        .and_then(|e| e.checked_mul(bits))
                        .map_or(1 << 20, |b| (b / 8).min(1 << 20));
                    let (s, e) = if *honest {
                        (at, at + bytes)
                    } else {
                        (*offset % 4096, offset % 4096 + bytes)
                    };
                    at = e.max(at);
                    map.insert(
                        format!("t{i}"),
                        serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [s, e]}),
                    );
                }
                let header = serde_json::to_vec(&map).unwrap();
                let declared = (header.len() as i64 + len_lie).max(0) as u64;
                let mut b = declared.to_le_bytes().to_vec();
                b.extend(&header);
                b.resize(
                    b.len() + (at as i64 + data_delta).clamp(0, 1 << 21) as usize,
                    0,
                );
                if let Some((i, x)) = flip {
                    let i = i.index(b.len());
                    b[i] ^= x;
                }
                b
            })
    }

    #[test]
    fn the_issue_s_alignment_zero_is_an_error() {
        let kvs = [("general.alignment".to_string(), Val::U32(0))];
        let b = gguf(3, &kvs, &[], 0);
        let e = check_gguf(std::io::Cursor::new(&b), b.len() as u64).unwrap_err();
        assert!(e.contains("power of two"), "{e}");
        // The same header with a valid alignment and one aligned tensor is accepted.
        let t = Tensor {
            name: "w".into(),
            dims: vec![32],
            dtype: 0,
            offset: 0,
        };
        let kvs = [("general.alignment".to_string(), Val::U32(64))];
        let b = gguf(3, &kvs, &[t], 64 + 128);
        check_gguf(std::io::Cursor::new(&b), b.len() as u64).unwrap();
    }
}
