//! The Fashion-MNIST subset compiled into the binary (`data/fashion-mnist-subset/SOURCE.md`
//! records its origin).

use crate::error::IoContext;
use crate::progress::Progress;
use crate::Result;
use std::path::Path;

const EMBEDDED: [(&str, &[u8]); 4] = [
    (
        "train-images-idx3-ubyte.gz",
        include_bytes!("../../../../data/fashion-mnist-subset/train-images-idx3-ubyte.gz"),
    ),
    (
        "train-labels-idx1-ubyte.gz",
        include_bytes!("../../../../data/fashion-mnist-subset/train-labels-idx1-ubyte.gz"),
    ),
    (
        "t10k-images-idx3-ubyte.gz",
        include_bytes!("../../../../data/fashion-mnist-subset/t10k-images-idx3-ubyte.gz"),
    ),
    (
        "t10k-labels-idx1-ubyte.gz",
        include_bytes!("../../../../data/fashion-mnist-subset/t10k-labels-idx1-ubyte.gz"),
    ),
];

/// The embedded files' fingerprint: constant for a build, so checksummed once per process
/// (every cell of a grid asks for it when computing its keys).
pub(super) fn fingerprint() -> &'static [String] {
    static FINGERPRINT: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    FINGERPRINT.get_or_init(|| {
        EMBEDDED
            .iter()
            .map(|(name, bytes)| format!("{name}:{}:{:08x}", bytes.len(), crc(bytes)))
            .collect()
    })
}

/// A cheap checksum of the embedded bytes (Adler-style; only distinguishes builds).
fn crc(bytes: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in bytes {
        a = (a + x as u32) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

/// Writes the embedded files into `files`; returns their names.
pub(super) fn write(files: &Path, progress: &dyn Progress) -> Result<Vec<String>> {
    std::fs::create_dir_all(files).at(files)?;
    progress.begin("fetch", EMBEDDED.len() as u64);
    let mut written = Vec::new();
    for (i, (name, bytes)) in EMBEDDED.iter().enumerate() {
        let dst = files.join(name);
        std::fs::write(&dst, bytes).at(&dst)?;
        written.push(name.to_string());
        progress.update(i as u64 + 1, name);
    }
    progress.end();
    Ok(written)
}
