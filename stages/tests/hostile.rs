//! Hostile inputs, each generated here: archives and streams that expand without end, headers
//! that lie about sizes, image folders too large to decode, files that are no files, and
//! symlinks out of the dataset. Each must end in an error naming the file, quickly and within
//! bounded memory — never a hang, an abort or a panic.

use opt_stages::data::fetch::{DatasetName, FetchConfig, Source};
use opt_stages::data::preprocess::{self, DataFormat, LabelChoice, PreprocessConfig};
use opt_stages::data::readers::bundle::Bundle;
use opt_stages::data::readers::idx;
use opt_stages::data::readers::image_folder;
use opt_stages::data::readers::input::InputLimits;
use opt_stages::Silent;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn limits(max_bytes: u64) -> InputLimits {
    InputLimits { max_bytes }
}

/// Runs `f`, which must fail within a few seconds; returns its message.
fn fails_quickly<T>(f: impl FnOnce() -> opt_stages::Result<T>) -> String {
    let t = Instant::now();
    let r = f();
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
    match r {
        Ok(_) => panic!("a hostile input was accepted"),
        Err(e) => e.to_string(),
    }
}

/// A tar member header for `name` declaring `size` bytes.
fn header(name: &str, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_path(name).unwrap();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    h
}

/// Writes a gzip file whose content comes from `write`.
fn gzip_file(path: &Path, write: impl FnOnce(&mut dyn Write)) {
    let f = std::fs::File::create(path).unwrap();
    let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    write(&mut gz);
    gz.finish().unwrap();
}

/// Streams `n` zero bytes into `w` without holding them.
fn zeros(w: &mut dyn Write, n: u64) {
    let block = vec![0u8; MIB as usize];
    let mut left = n;
    while left > 0 {
        let k = left.min(MIB);
        w.write_all(&block[..k as usize]).unwrap();
        left -= k;
    }
}

#[test]
fn a_gzip_bomb_in_a_tarball_stops_at_the_limit_naming_the_member() {
    let dir = tempfile::tempdir().unwrap();
    let bomb = dir.path().join("cifar.tar.gz");
    // 64 MiB of zeros compress to about 64 KiB.
    gzip_file(&bomb, |w| {
        w.write_all(header("cifar-10-batches-bin/data_batch_1.bin", 64 * MIB).as_bytes())
            .unwrap();
        zeros(w, 64 * MIB);
        zeros(w, 1024);
    });
    assert!(std::fs::metadata(&bomb).unwrap().len() < MIB);
    let e = fails_quickly(|| Bundle::load_with(&bomb, limits(16 * MIB)));
    assert!(
        e.starts_with(&format!(
            "{}!/cifar-10-batches-bin/data_batch_1.bin: 64.0 MiB does not fit",
            bomb.display()
        )),
        "{e}"
    );
    assert!(
        e.contains("16.0 MiB a dataset may take in memory here"),
        "{e}"
    );

    // Many members, each small: the archive's total is what is capped.
    let many = dir.path().join("many.tar.gz");
    gzip_file(&many, |w| {
        for i in 0..3 {
            w.write_all(header(&format!("part{i}.bin"), 8 * MIB).as_bytes())
                .unwrap();
            zeros(w, 8 * MIB);
        }
        zeros(w, 1024);
    });
    let e = fails_quickly(|| Bundle::load_with(&many, limits(20 * MIB)));
    assert!(
        e.contains("many.tar.gz!/part2.bin: 8.0 MiB does not fit"),
        "{e}"
    );
    // Within the limit, the same archive loads.
    let b = Bundle::load_with(&many, limits(32 * MIB)).unwrap();
    assert_eq!(b.entries.len(), 3);
    assert_eq!(b.entries[2].bytes().unwrap().len() as u64, 8 * MIB);
}

#[test]
fn a_tar_header_declaring_60_gb_is_refused_before_any_allocation() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["big.tar", "big.tar.gz"] {
        let path = dir.path().join(name);
        let body = |w: &mut dyn Write| {
            w.write_all(header("data_batch_1.bin", 60 << 30).as_bytes())
                .unwrap();
            w.write_all(&[0u8; 4096]).unwrap();
        };
        if name.ends_with(".gz") {
            gzip_file(&path, body);
        } else {
            body(&mut std::fs::File::create(&path).unwrap());
        }
        // The machine's own limits: the archive's size alone rules the header out.
        let e = fails_quickly(|| Bundle::load(&path));
        assert!(
            e.contains(&format!("{name}!/data_batch_1.bin"))
                && e.contains("declares 60.0 GiB, more than the"),
            "{e}"
        );
    }
}

#[test]
fn idx_headers_and_gzip_streams_are_believed_only_within_bounds() {
    let dir = tempfile::tempdir().unwrap();
    // A header declaring 10^9 pixels in front of an endless-looking zero stream.
    let bomb = dir.path().join("train-images-idx3-ubyte.gz");
    gzip_file(&bomb, |w| {
        w.write_all(&idx::encode(&[1000, 1000, 1000], &[])).unwrap();
        zeros(w, 64 * MIB);
    });
    let e = fails_quickly(|| idx::read_with(&bomb, limits(16 * MIB)));
    assert!(
        e.starts_with(&bomb.display().to_string()) && e.contains("declare 953.7 MiB, more than"),
        "{e}"
    );
    // A small header followed by much more data: read up to one byte past the header's size.
    let long = dir.path().join("long.gz");
    gzip_file(&long, |w| {
        w.write_all(&idx::encode(&[10, 2, 2], &[])).unwrap();
        zeros(w, 64 * MIB);
    });
    let e = fails_quickly(|| idx::read_with(&long, limits(16 * MIB)));
    assert!(
        e.contains("IDX body has more than 40 bytes but dimensions [10, 2, 2] need 40"),
        "{e}"
    );
    // Raw, truncated: the header is not believed.
    let raw = dir.path().join("raw");
    std::fs::write(&raw, idx::encode(&[60000, 28, 28], &[1, 2, 3])).unwrap();
    let e = fails_quickly(|| idx::read_with(&raw, limits(1 << 30)));
    assert!(e.contains("IDX body has 3 bytes"), "{e}");
}

fn fetched_idx(dir: &Path, dims: &[usize]) -> std::path::PathBuf {
    let files = dir.join("fetched/files");
    std::fs::create_dir_all(&files).unwrap();
    let n = dims[0];
    let pixels: usize = dims.iter().product();
    for (i, name) in opt_stages::data::fetch::IDX_FILES.iter().enumerate() {
        let bytes = if i % 2 == 0 {
            idx::encode(dims, &vec![0u8; pixels])
        } else {
            idx::encode(&[n], &vec![0u8; n])
        };
        std::fs::write(files.join(name), bytes).unwrap();
    }
    dir.join("fetched")
}

#[test]
fn zero_pixel_idx_images_are_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let fetched = fetched_idx(dir.path(), &[5, 0, 0]);
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let cfg = PreprocessConfig {
        dataset: DatasetName::FashionMnist,
        format: DataFormat::Idx,
        label: LabelChoice::Fine,
    };
    let e = fails_quickly(|| preprocess::run(&cfg, &fetched, &out, &Silent));
    assert!(
        e.contains("train-images-idx3-ubyte: images of 0×0 pixels"),
        "{e}"
    );
}

/// A valid PNG of `w`×`h` RGB pixels, then its header rewritten to claim `claim_w`×`claim_h`
/// (the CRC fixed): what a reader sees before it decodes.
fn png_claiming(w: u32, h: u32, claim_w: u32, claim_h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    // Signature (8) + IHDR length (4) + "IHDR" (4): width, height, then 5 bytes, then CRC.
    png[16..20].copy_from_slice(&claim_w.to_be_bytes());
    png[20..24].copy_from_slice(&claim_h.to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(&png[12..29]);
    png[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    png
}

#[test]
fn an_image_folder_too_large_to_decode_is_refused_from_its_headers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("folder");
    // 16 images claiming 12000×12000 each: 6.4 GiB of RGB pixels from a few kilobytes.
    for (split, n) in [("train", 12), ("test", 4)] {
        for k in 0..n {
            let class = root.join(split).join(format!("c{}", k % 2));
            std::fs::create_dir_all(&class).unwrap();
            std::fs::write(
                class.join(format!("{k}.png")),
                png_claiming(4, 4, 12000, 12000),
            )
            .unwrap();
        }
    }
    let bundle = Bundle::load_with(&root, limits(1 << 30)).unwrap();
    let e = fails_quickly(|| image_folder::read(&bundle));
    assert_eq!(
        e,
        format!(
            "{}: 16 images of 12000×12000 decode to 6.4 GiB, more than the 1.0 GiB a dataset may \
             take in memory here",
            root.display()
        )
    );

    // One image claiming another size than the rest is named before anything is decoded.
    let odd = root.join("test/c1/3.png");
    std::fs::write(&odd, png_claiming(4, 4, 12000, 11999)).unwrap();
    let bundle = Bundle::load_with(&root, limits(1 << 30)).unwrap();
    let e = fails_quickly(|| image_folder::read(&bundle));
    assert!(
        e.starts_with(&format!("{}: image is 12000×11999", odd.display())),
        "{e}"
    );

    // A header that lies about a small image: the decoder is held to it and fails cleanly.
    let small = dir.path().join("small");
    for split in ["train", "test"] {
        let class = small.join(split).join("a");
        std::fs::create_dir_all(&class).unwrap();
        std::fs::write(class.join("0.png"), png_claiming(4, 4, 64, 64)).unwrap();
    }
    let bundle = Bundle::load_with(&small, limits(1 << 30)).unwrap();
    let e = fails_quickly(|| image_folder::read(&bundle));
    assert!(e.contains("0.png: cannot decode image"), "{e}");
}

#[cfg(unix)]
#[test]
fn files_that_are_no_regular_files_and_symlinks_out_are_refused() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();

    // A batch that is /dev/zero: never read.
    let zero = dir.path().join("zero");
    std::fs::create_dir_all(&zero).unwrap();
    let link = zero.join("data_batch_1.bin");
    symlink("/dev/zero", &link).unwrap();
    let e = fails_quickly(|| Bundle::load(&zero));
    assert!(
        e.contains("symlink to /dev/zero, outside the dataset"),
        "{e}"
    );
    // Pointed at directly, the device itself is refused.
    let e = fails_quickly(|| Bundle::load(Path::new("/dev/zero")));
    assert!(e.contains("a device, not a regular file"), "{e}");
    let e = fails_quickly(|| idx::read(Path::new("/dev/zero")));
    assert!(e.contains("a device, not a regular file"), "{e}");

    // A FIFO: refused without opening it (opening would wait for a writer forever).
    let fifo_dir = dir.path().join("fifo");
    std::fs::create_dir_all(&fifo_dir).unwrap();
    let fifo = fifo_dir.join("data_batch_1.bin");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let e = fails_quickly(|| Bundle::load(&fifo_dir));
    assert_eq!(
        e,
        format!(
            "{}: a FIFO (named pipe), not a regular file: datasets are read only from regular \
             files",
            fifo.display()
        )
    );
    let local = FetchConfig {
        dataset: DatasetName::Cifar10,
        source: Source::Local {
            path: fifo_dir.clone(),
        },
    };
    let e = fails_quickly(|| local.fingerprint());
    assert!(e.contains("FIFO"), "{e}");

    // A symlink to `/` inside the dataset is not followed out of it, by the fingerprint
    // (which walked the whole file system) nor by the reader.
    let escape = dir.path().join("escape");
    std::fs::create_dir_all(escape.join("train")).unwrap();
    symlink("/", escape.join("train/root")).unwrap();
    let e = fails_quickly(|| Bundle::load(&escape));
    assert!(
        e.contains("train/root: symlink to /, outside the dataset"),
        "{e}"
    );
    let local = FetchConfig {
        dataset: DatasetName::Cifar10,
        source: Source::Local {
            path: escape.clone(),
        },
    };
    let e = fails_quickly(|| local.fingerprint());
    assert!(e.contains("outside the dataset"), "{e}");

    // Symlinks inside the dataset are fine; a loop is an error, not a hang.
    let inside = dir.path().join("inside");
    std::fs::create_dir_all(inside.join("a")).unwrap();
    std::fs::write(inside.join("a/x.bin"), b"x").unwrap();
    symlink(inside.join("a/x.bin"), inside.join("y.bin")).unwrap();
    let b = Bundle::load(&inside).unwrap();
    assert_eq!(b.entries.len(), 2);
    symlink(&inside, inside.join("a/again")).unwrap();
    let e = fails_quickly(|| Bundle::load(&inside));
    assert!(e.contains("a symlink loop"), "{e}");
}
