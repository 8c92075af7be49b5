//! TFRecord framing, the container of TensorBoard's event files: each record is its length
//! (u64, little-endian), the masked CRC-32C of those 8 bytes, the data, and the masked CRC-32C
//! of the data. The mask (rotate right by 15, add a constant) is TensorFlow's, so a CRC of data
//! that itself holds CRCs stays well distributed.

use std::io::Write;

const MASK_DELTA: u32 = 0xa282_ead8;

/// TensorFlow's masked CRC-32C (Castagnoli) of `data`.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
        .rotate_right(15)
        .wrapping_add(MASK_DELTA)
}

/// Appends one record holding `data` to `w`.
pub fn write_record(w: &mut impl Write, data: &[u8]) -> std::io::Result<()> {
    let length = (data.len() as u64).to_le_bytes();
    w.write_all(&length)?;
    w.write_all(&masked_crc32c(&length).to_le_bytes())?;
    w.write_all(data)?;
    w.write_all(&masked_crc32c(data).to_le_bytes())
}

/// Why a file's records could not all be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The file ends inside a record (a writer stopped mid-write).
    #[error("the last record, at byte {offset}, is cut short")]
    Truncated { offset: usize },
    /// A length or data CRC does not match: the bytes were altered.
    #[error("the record at byte {offset} fails its {what} checksum")]
    Checksum { offset: usize, what: &'static str },
}

/// The records of a whole file, in order; the records before a problem come with it.
pub fn read_records(bytes: &[u8]) -> (Vec<&[u8]>, Option<RecordError>) {
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        match read_one(bytes, at) {
            Ok((data, next)) => {
                records.push(data);
                at = next;
            }
            Err(e) => return (records, Some(e)),
        }
    }
    (records, None)
}

/// The record at byte `offset` and the offset after it.
fn read_one(bytes: &[u8], offset: usize) -> Result<(&[u8], usize), RecordError> {
    let truncated = RecordError::Truncated { offset };
    let u32_at = |at: usize| -> Result<u32, RecordError> {
        let b = bytes.get(at..at + 4).ok_or(truncated.clone())?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let length_bytes = bytes.get(offset..offset + 8).ok_or(truncated.clone())?;
    if u32_at(offset + 8)? != masked_crc32c(length_bytes) {
        return Err(RecordError::Checksum {
            offset,
            what: "length",
        });
    }
    let length = u64::from_le_bytes(length_bytes.try_into().expect("8 bytes"));
    let start = offset + 12;
    let end = usize::try_from(length)
        .ok()
        .and_then(|l| start.checked_add(l))
        .ok_or(truncated.clone())?;
    let data = bytes.get(start..end).ok_or(truncated.clone())?;
    if u32_at(end)? != masked_crc32c(data) {
        return Err(RecordError::Checksum {
            offset,
            what: "data",
        });
    }
    Ok((data, end + 4))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CRC-32C's check value and RFC 3720's (iSCSI) test vectors; the masked values are those
    /// TensorBoard's own implementation gives
    /// (`tensorboard.compat.tensorflow_stub.pywrap_tensorflow.masked_crc32c`, TensorBoard 2.21).
    #[test]
    fn crc_and_mask_match_known_vectors() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c::crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c::crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c::crc32c(&ascending), 0x46dd_794e);
        assert_eq!(masked_crc32c(b"123456789"), 0xc78a_b0e5);
        assert_eq!(masked_crc32c(b""), 0xa282_ead8);
        assert_eq!(masked_crc32c(&24u64.to_le_bytes()), 0x224b_7fa3);
    }

    /// A record's bytes are exactly the framing: length, its CRC, data, its CRC.
    #[test]
    fn a_record_is_framed_as_tensorflow_frames_it() {
        let mut out = Vec::new();
        write_record(&mut out, b"123456789").unwrap();
        let mut expected = 9u64.to_le_bytes().to_vec();
        expected.extend(masked_crc32c(&9u64.to_le_bytes()).to_le_bytes());
        expected.extend(b"123456789");
        expected.extend(0xc78a_b0e5u32.to_le_bytes());
        assert_eq!(out, expected);
    }

    /// Records read back in order; a cut tail and an altered byte are found, with the records
    /// before them kept.
    #[test]
    fn records_read_back_and_damage_is_found() {
        let mut out = Vec::new();
        for data in [&b"first"[..], b"", b"third record"] {
            write_record(&mut out, data).unwrap();
        }
        let (records, problem) = read_records(&out);
        assert_eq!(records, vec![&b"first"[..], b"", b"third record"]);
        assert_eq!(problem, None);

        let second = 12 + 5 + 4;
        let third = second + 12 + 4;
        let (records, problem) = read_records(&out[..out.len() - 3]);
        assert_eq!(records.len(), 2);
        assert_eq!(problem, Some(RecordError::Truncated { offset: third }));

        let mut altered = out.clone();
        altered[third + 14] ^= 1;
        let (records, problem) = read_records(&altered);
        assert_eq!(records.len(), 2);
        assert_eq!(
            problem,
            Some(RecordError::Checksum {
                offset: third,
                what: "data"
            })
        );
        altered = out.clone();
        altered[second] = 200;
        assert_eq!(
            read_records(&altered).1,
            Some(RecordError::Checksum {
                offset: second,
                what: "length"
            })
        );
    }
}
