//! The IDX format of MNIST and Fashion-MNIST (raw or gzip-compressed).
//!
//! Header: two zero bytes, a type byte (0x08 = unsigned byte, the only type these datasets
//! use), the number of dimensions, then each dimension as a big-endian u32.

use crate::data::readers::input::{self, size_text, Capped, InputLimits};
use crate::error::{format_err, IoContext};
use crate::Result;
use flate2::read::GzDecoder;
use std::io::{BufRead, Read};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Parses IDX bytes; `path` is only used in error messages.
pub fn parse(bytes: &[u8], path: &Path) -> Result<IdxArray> {
    parse_stream(bytes, path, u64::MAX, false)
}

/// Reads an IDX file, gunzipping it when it starts with the gzip magic. Streamed: the body is
/// read only up to the size the header declares, and only once that size is known to fit in
/// `limits` (a gzip bomb never expands past it).
pub fn read_with(path: &Path, limits: InputLimits) -> Result<IdxArray> {
    let (file, len) = input::open_regular(path)?;
    let mut buffered = std::io::BufReader::new(file);
    let gz = buffered.fill_buf().at(path)?.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read> = if gz {
        // Deflate expands at most 1032-fold; the header is parsed before the body is read.
        let cap = len.saturating_mul(1032).saturating_add(1 << 20);
        Box::new(Capped::new(
            GzDecoder::new(buffered),
            cap,
            "the decompressed stream",
        ))
    } else {
        Box::new(buffered)
    };
    parse_stream(reader, path, limits.max_bytes, gz)
}

pub fn read(path: &Path) -> Result<IdxArray> {
    read_with(path, InputLimits::of_machine())
}

fn parse_stream(mut r: impl Read, path: &Path, max_bytes: u64, gz: bool) -> Result<IdxArray> {
    let what = if gz {
        "corrupt gzip stream"
    } else {
        "cannot read"
    };
    let corrupt = |e: std::io::Error| format_err(path, format!("{what}: {e}"));
    let mut head = Vec::with_capacity(4);
    (&mut r).take(4).read_to_end(&mut head).map_err(corrupt)?;
    if head.len() < 4 || head[0] != 0 || head[1] != 0 {
        return Err(format_err(path, "not an IDX file (bad magic number)"));
    }
    if head[2] != 0x08 {
        return Err(format_err(
            path,
            format!(
                "IDX element type 0x{:02x} is not supported (expected 0x08, unsigned byte)",
                head[2]
            ),
        ));
    }
    let ndim = head[3] as usize;
    if ndim == 0 {
        return Err(format_err(path, "IDX file declares zero dimensions"));
    }
    let mut raw_dims = Vec::with_capacity(4 * ndim);
    (&mut r)
        .take(4 * ndim as u64)
        .read_to_end(&mut raw_dims)
        .map_err(corrupt)?;
    if raw_dims.len() < 4 * ndim {
        return Err(format_err(path, "IDX header is truncated"));
    }
    let dims: Vec<usize> = raw_dims
        .chunks_exact(4)
        .map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize)
        .collect();
    let expected = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let expected = expected.ok_or_else(|| format_err(path, "IDX dimensions overflow"))?;
    if expected as u64 > max_bytes {
        return Err(format_err(
            path,
            format!(
                "IDX dimensions {dims:?} declare {}, more than the {} a dataset may take in \
                 memory here",
                size_text(expected as u64),
                size_text(max_bytes)
            ),
        ));
    }
    // Grown as the bytes arrive: a header is believed only as far as the data go.
    let mut data = Vec::with_capacity(expected.min(1 << 26));
    (&mut r)
        .take(expected as u64)
        .read_to_end(&mut data)
        .map_err(corrupt)?;
    let extra = r.read(&mut [0u8; 1]).map_err(corrupt)?;
    if data.len() != expected || extra > 0 {
        let found = if extra > 0 {
            format!("more than {expected}")
        } else {
            data.len().to_string()
        };
        return Err(format_err(
            path,
            format!(
                "IDX body has {found} bytes but dimensions {dims:?} need {expected} \
                 (truncated or corrupt file)"
            ),
        ));
    }
    Ok(IdxArray { dims, data })
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
