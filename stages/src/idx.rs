//! The IDX format of MNIST and Fashion-MNIST (raw or gzip-compressed).
//!
//! Header: two zero bytes, a type byte (0x08 = unsigned byte, the only type these datasets
//! use), the number of dimensions, then each dimension as a big-endian u32.

use crate::error::{format_err, IoContext};
use crate::Result;
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads a whole file, gunzipping it when it starts with the gzip magic.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).at(path)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 2);
        GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| format_err(path, format!("corrupt gzip stream: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Parses IDX bytes; `path` is only used in error messages.
pub fn parse(bytes: &[u8], path: &Path) -> Result<IdxArray> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(format_err(path, "not an IDX file (bad magic number)"));
    }
    if bytes[2] != 0x08 {
        return Err(format_err(
            path,
            format!(
                "IDX element type 0x{:02x} is not supported (expected 0x08, unsigned byte)",
                bytes[2]
            ),
        ));
    }
    let ndim = bytes[3] as usize;
    if ndim == 0 {
        return Err(format_err(path, "IDX file declares zero dimensions"));
    }
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(format_err(path, "IDX header is truncated"));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| {
            let o = 4 + 4 * i;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let expected = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let expected = expected.ok_or_else(|| format_err(path, "IDX dimensions overflow"))?;
    let body = &bytes[header..];
    if body.len() != expected {
        return Err(format_err(
            path,
            format!(
                "IDX body has {} bytes but dimensions {:?} need {} (truncated or corrupt file)",
                body.len(),
                dims,
                expected
            ),
        ));
    }
    Ok(IdxArray {
        dims,
        data: body.to_vec(),
    })
}

pub fn read(path: &Path) -> Result<IdxArray> {
    parse(&read_maybe_gz(path)?, path)
}

/// Encodes an unsigned-byte IDX array (used by tests and tools to build fixtures).
pub fn encode(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_errors_name_the_file() {
        let p = Path::new("x.idx");
        let bytes = encode(&[2, 2, 3], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let a = parse(&bytes, p).unwrap();
        assert_eq!(a.dims, vec![2, 2, 3]);
        assert_eq!(a.data[11], 12);
        let err = parse(&bytes[..bytes.len() - 1], p).unwrap_err().to_string();
        assert!(
            err.starts_with("x.idx:") && err.contains("truncated"),
            "{err}"
        );
        let err = parse(&[1, 2, 3, 4], p).unwrap_err().to_string();
        assert!(err.contains("bad magic"), "{err}");
    }
}
