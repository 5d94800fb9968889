//! A NumPy `.npz` reader that trusts nothing in the file.
//!
//! tch's `Tensor::read_npz` hands the shape from an array's header to libtorch together with
//! however many bytes followed it, and libtorch copies the announced size: a header that
//! announces more than the file holds reads past the buffer. Here every header is parsed and
//! its element count checked (in checked arithmetic) against the bytes actually there, and every
//! entry is read through a bound, so a lying zip header cannot make it allocate without limit.

use std::io::{Read, Seek};

/// The most bytes one array may hold once decompressed (a whole ImageNet at 32x32 is 3.7 GiB).
pub const MAX_ARRAY_BYTES: u64 = 16 << 30;

/// An array's values, widened: bytes stay bytes, every other integer type becomes `i64`.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// `uint8`.
    U8(Vec<u8>),
    /// Any other integer type.
    I64(Vec<i64>),
    /// A type no loader takes (floats, booleans, complex): only its size was checked.
    Other,
}

/// One array of an archive.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// Its shape (C order).
    pub shape: Vec<usize>,
    /// The dtype as written in its header, e.g. `<i8`.
    pub descr: String,
    /// Its values.
    pub values: Values,
}

/// Every array of an `.npz` archive, by name (without `.npy`). Errors say what is wrong and
/// where; the caller names the file.
pub fn read(archive: impl Read + Seek) -> Result<Vec<(String, Array)>, String> {
    let mut zip = zip::ZipArchive::new(archive).map_err(|e| format!("not a zip archive: {e}"))?;
    let mut arrays = Vec::with_capacity(zip.len());
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| format!("entry {i} of the archive: {e}"))?;
        let name = entry.name().to_owned();
        let array = read_npy(&mut entry).map_err(|e| format!("{name}: {e}"))?;
        arrays.push((name.strip_suffix(".npy").unwrap_or(&name).to_owned(), array));
    }
    Ok(arrays)
}

/// Elements of an array of `shape`, or None when they would overflow `usize` (a header's
/// dimensions are the file's word, never trusted).
pub fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// One `.npy` stream: magic, version, header, data.
pub fn read_npy(reader: &mut impl Read) -> Result<Array, String> {
    let mut lead = [0u8; 8];
    reader
        .read_exact(&mut lead)
        .map_err(|e| format!("truncated before its .npy header ({e})"))?;
    if &lead[..6] != b"\x93NUMPY" {
        return Err("not a .npy array (no \\x93NUMPY magic)".into());
    }
    let header_len = match lead[6] {
        1 => {
            let mut n = [0u8; 2];
            reader
                .read_exact(&mut n)
                .map_err(|e| format!("truncated header length ({e})"))?;
            usize::from(u16::from_le_bytes(n))
        }
        2 | 3 => {
            let mut n = [0u8; 4];
            reader
                .read_exact(&mut n)
                .map_err(|e| format!("truncated header length ({e})"))?;
            u32::from_le_bytes(n) as usize
        }
        v => return Err(format!(".npy format version {v} (versions 1, 2 and 3 are read)")),
    };
    if header_len > 1 << 16 {
        return Err(format!("a header of {header_len} bytes (at most 65536)"));
    }
    let mut header = vec![0u8; header_len];
    reader
        .read_exact(&mut header)
        .map_err(|e| format!("header of {header_len} bytes is truncated ({e})"))?;
    let header = std::str::from_utf8(&header).map_err(|_| "header is not text".to_owned())?;
    let (descr, fortran, shape) = parse_header(header)?;
    if fortran {
        return Err("is in Fortran order; save it C-contiguous (np.ascontiguousarray)".into());
    }
    let (width, ty) = dtype(&descr)?;
    let count = element_count(&shape).ok_or_else(|| format!("shape {shape:?} has more elements than fit in memory"))?;
    let expected = count
        .checked_mul(width)
        .filter(|&b| b as u64 <= MAX_ARRAY_BYTES)
        .ok_or_else(|| format!("shape {shape:?} of {descr} is over {MAX_ARRAY_BYTES} bytes"))?;
    let mut data = Vec::with_capacity(expected.min(1 << 26));
    reader
        .take(expected as u64 + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("data cannot be read: {e}"))?;
    if data.len() != expected {
        let hint = if data.len() < expected { ": truncated?" } else { "" };
        return Err(format!(
            "holds {} data bytes; its header ({descr}, shape {shape:?}) announces {expected}{hint}",
            if data.len() > expected {
                format!("more than {expected}")
            } else {
                data.len().to_string()
            }
        ));
    }
    let signed = ty == Ty::Signed;
    let values = match (width, ty) {
        (_, Ty::Other) => Values::Other,
        (1, Ty::Unsigned) => Values::U8(data),
        _ => Values::I64(
            data.chunks_exact(width)
                .map(|c| {
                    let mut le = [0u8; 8];
                    le[..width].copy_from_slice(c);
                    if signed && c[width - 1] & 0x80 != 0 {
                        le[width..].fill(0xff);
                    }
                    i64::from_le_bytes(le)
                })
                .collect(),
        ),
    };
    if let Values::I64(v) = &values
        && ty == Ty::Unsigned
        && width == 8
        && v.iter().any(|&x| x < 0)
    {
        return Err("holds uint64 values over 2^63".into());
    }
    Ok(Array { shape, descr, values })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Unsigned,
    Signed,
    Other,
}

/// Width in bytes and kind of a dtype; one NumPy does not write is refused.
fn dtype(descr: &str) -> Result<(usize, Ty), String> {
    let (order, code) = descr.split_at(descr.len().min(1));
    let code = match order {
        "<" | "|" | "=" => code,
        ">" => return Err(format!("dtype {descr} is big-endian; save it little-endian")),
        _ => descr,
    };
    Ok(match code {
        "u1" | "B" => (1, Ty::Unsigned),
        "i1" | "b" => (1, Ty::Signed),
        "u2" | "H" => (2, Ty::Unsigned),
        "i2" | "h" => (2, Ty::Signed),
        "u4" | "I" => (4, Ty::Unsigned),
        "i4" | "i" => (4, Ty::Signed),
        "u8" | "Q" => (8, Ty::Unsigned),
        "i8" | "q" => (8, Ty::Signed),
        "b1" | "?" => (1, Ty::Other),
        "f2" | "e" => (2, Ty::Other),
        "f4" | "f" => (4, Ty::Other),
        "f8" | "d" => (8, Ty::Other),
        "c8" | "F" => (8, Ty::Other),
        "c16" | "D" => (16, Ty::Other),
        _ => return Err(format!("dtype {descr:?} is not a NumPy number type")),
    })
}

/// The header dictionary: `{'descr': '<u1', 'fortran_order': False, 'shape': (2, 3), }`.
fn parse_header(header: &str) -> Result<(String, bool, Vec<usize>), String> {
    let value = |key: &str| -> Result<&str, String> {
        let at = header
            .find(&format!("'{key}'"))
            .ok_or_else(|| format!("header has no '{key}' entry"))?;
        let rest = header[at + key.len() + 2..].trim_start();
        rest.strip_prefix(':')
            .map(str::trim_start)
            .ok_or_else(|| format!("header entry '{key}' has no value"))
    };
    let descr = value("descr")?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split_once('\''))
        .map(|(d, _)| d.to_owned())
        .ok_or_else(|| "header 'descr' is not a quoted dtype".to_owned())?;
    let fortran = match value("fortran_order")? {
        v if v.starts_with("False") => false,
        v if v.starts_with("True") => true,
        _ => return Err("header 'fortran_order' is neither True nor False".into()),
    };
    let shape = value("shape")?;
    let inner = shape
        .strip_prefix('(')
        .and_then(|s| s.split_once(')'))
        .map(|(s, _)| s)
        .ok_or_else(|| "header 'shape' is not a tuple".to_owned())?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            d.parse::<usize>()
                .map_err(|_| format!("header 'shape' has a dimension {d:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((descr, fortran, shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}\n");
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn reads_what_numpy_writes_and_refuses_lies() {
        let a = read_npy(&mut &npy("<i2", "(3,)", &[1, 0, 0xff, 0xff, 7, 0])[..]).unwrap();
        assert_eq!((a.shape, a.values), (vec![3], Values::I64(vec![1, -1, 7])));
        let a = read_npy(&mut &npy("|u1", "(1, 2)", &[9, 8])[..]).unwrap();
        assert_eq!(a.values, Values::U8(vec![9, 8]));
        let scalar = read_npy(&mut &npy("<i8", "()", &5i64.to_le_bytes())[..]).unwrap();
        assert_eq!((scalar.shape, scalar.values), (vec![], Values::I64(vec![5])));
        // A header announcing more than is there: the read libtorch would have gone past.
        let e = read_npy(&mut &npy("|u1", "(1000000,)", &[1, 2])[..]).unwrap_err();
        assert!(e.contains("holds 2 data bytes") && e.contains("1000000"), "{e}");
        let e = read_npy(&mut &npy("|u1", "(4294967296, 4294967296, 4294967296)", &[])[..]).unwrap_err();
        assert!(e.contains("more elements"), "{e}");
        let floats = read_npy(&mut &npy("<f4", "(1,)", &[0; 4])[..]).unwrap();
        assert_eq!((floats.descr.as_str(), floats.values), ("<f4", Values::Other));
        let e = read_npy(&mut &npy("<U8", "(1,)", &[0; 4])[..]).unwrap_err();
        assert!(e.contains("<U8"), "{e}");
        let e = read_npy(&mut &npy(">i4", "(1,)", &[0; 4])[..]).unwrap_err();
        assert!(e.contains("big-endian"), "{e}");
    }
}
