//! Every dataset format, from archives generated here in the official layouts, read back pixel
//! for pixel and label for label; and each malformed variant's error.

mod common;

use common::pickle_write::{dict, W};
use opt_stages::data::dataset::Decoded;
use opt_stages::data::fetch::{self, DatasetName, FetchConfig, Source};
use opt_stages::data::preprocess::{self, DataFormat, DataView, LabelChoice, PreprocessConfig};
use opt_stages::data::readers::bundle::Bundle;
use opt_stages::data::readers::cifar::{self, Cifar, PIXELS};
use opt_stages::data::readers::pickle;
use opt_stages::data::readers::{image_folder, parquet_images};
use opt_stages::Silent;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Pixel `j` (CHW order) of generated image `k`.
fn pixel(k: usize, j: usize) -> u8 {
    ((k * 31 + j * 7 + j / 1024 * 50) % 256) as u8
}

fn image(k: usize) -> Vec<u8> {
    (0..PIXELS).map(|j| pixel(k, j)).collect()
}

/// `(fine, coarse)` labels of image `k` for CIFAR-100; CIFAR-10 uses `k % 10`.
fn labels100(k: usize) -> (u8, u8) {
    ((k * 13 % 100) as u8, (k * 7 % 20) as u8)
}

/// Writes a `.tar.gz` (or plain `.tar`) with `files` under `top/`.
fn tarball(path: &Path, top: &str, files: &[(String, Vec<u8>)]) {
    let f = std::fs::File::create(path).unwrap();
    let gz = path.to_string_lossy().ends_with(".gz");
    let w: Box<dyn Write> = if gz {
        Box::new(flate2::write::GzEncoder::new(
            f,
            flate2::Compression::fast(),
        ))
    } else {
        Box::new(f)
    };
    let mut b = tar::Builder::new(w);
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, format!("{top}/{name}"), &data[..])
            .unwrap();
    }
    b.into_inner().unwrap().flush().unwrap();
}

/// Train image indices of CIFAR-10 batch `b` (two per batch) and the test indices.
const TEN_TEST: [usize; 3] = [100, 101, 102];
fn ten_batch(b: usize) -> [usize; 2] {
    [2 * b, 2 * b + 1]
}

fn cifar10_binary(path: &Path) {
    let mut files = Vec::new();
    let rec = |ks: &[usize]| -> Vec<u8> {
        ks.iter()
            .flat_map(|&k| {
                let mut r = vec![(k % 10) as u8];
                r.extend(image(k));
                r
            })
            .collect()
    };
    for b in 0..5 {
        files.push((format!("data_batch_{}.bin", b + 1), rec(&ten_batch(b))));
    }
    files.push(("test_batch.bin".into(), rec(&TEN_TEST)));
    let names = "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n";
    files.push(("batches.meta.txt".into(), names.as_bytes().to_vec()));
    tarball(path, "cifar-10-batches-bin", &files);
}

fn cifar100_binary(path: &Path) {
    let rec = |ks: std::ops::Range<usize>| -> Vec<u8> {
        ks.flat_map(|k| {
            let (fine, coarse) = labels100(k);
            let mut r = vec![coarse, fine];
            r.extend(image(k));
            r
        })
        .collect()
    };
    tarball(
        path,
        "cifar-100-binary",
        &[
            ("train.bin".into(), rec(0..7)),
            ("test.bin".into(), rec(50..53)),
        ],
    );
}

fn py_batch(ks: &[usize], labels_key: &[(&str, Vec<i64>)]) -> Vec<u8> {
    let data: Vec<u8> = ks.iter().flat_map(|&k| image(k)).collect();
    let shape = [ks.len(), PIXELS];
    let names: Vec<Vec<u8>> = ks
        .iter()
        .map(|k| format!("img_{k}.png").into_bytes())
        .collect();
    let mut items: Vec<(&str, W<'_>)> = vec![("batch_label", W::Bytes(b"batch"))];
    for (k, v) in labels_key {
        items.push((k, W::Ints(v)));
    }
    items.push(("data", W::U8Array(&shape, &data)));
    items.push((
        "filenames",
        W::BytesList(names.iter().map(|n| n.as_slice()).collect()),
    ));
    dict(&items)
}

fn cifar10_python(path: &Path) {
    let mut files = Vec::new();
    for b in 0..5 {
        let ks = ten_batch(b);
        let labels: Vec<i64> = ks.iter().map(|&k| (k % 10) as i64).collect();
        files.push((
            format!("data_batch_{}", b + 1),
            py_batch(&ks, &[("labels", labels)]),
        ));
    }
    let labels: Vec<i64> = TEN_TEST.iter().map(|&k| (k % 10) as i64).collect();
    files.push((
        "test_batch".into(),
        py_batch(&TEN_TEST, &[("labels", labels)]),
    ));
    let names: Vec<String> = (0..10).map(|i| format!("class{i}")).collect();
    let meta = dict(&[(
        "label_names",
        W::BytesList(names.iter().map(|n| n.as_bytes()).collect()),
    )]);
    files.push(("batches.meta".into(), meta));
    tarball(path, "cifar-10-batches-py", &files);
}

fn cifar100_python(path: &Path) {
    let split = |ks: Vec<usize>| {
        let fine: Vec<i64> = ks.iter().map(|&k| labels100(k).0 as i64).collect();
        let coarse: Vec<i64> = ks.iter().map(|&k| labels100(k).1 as i64).collect();
        py_batch(&ks, &[("fine_labels", fine), ("coarse_labels", coarse)])
    };
    tarball(
        path,
        "cifar-100-python",
        &[
            ("train".into(), split((0..7).collect())),
            ("test".into(), split((50..53).collect())),
        ],
    );
}

fn check_cifar(d: &Decoded, train: &[usize], test: &[usize], label: impl Fn(usize) -> u32) {
    assert_eq!(d.train.shape, (3, 32, 32));
    assert_eq!(d.train.len(), train.len());
    assert_eq!(d.test.len(), test.len());
    for (i, &k) in train.iter().enumerate() {
        assert_eq!(d.train.image(i), image(k).as_slice(), "train image {i}");
        assert_eq!(d.train.labels[i], label(k), "train label {i}");
    }
    for (i, &k) in test.iter().enumerate() {
        assert_eq!(d.test.image(i), image(k).as_slice(), "test image {i}");
        assert_eq!(d.test.labels[i], label(k), "test label {i}");
    }
}

fn ten_train() -> Vec<usize> {
    (0..5).flat_map(ten_batch).collect()
}

#[test]
fn cifar_binary_and_python_archives_decode_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    cifar10_binary(&t.join("cifar-10-binary.tar.gz"));
    cifar10_python(&t.join("cifar-10-python.tar.gz"));
    cifar100_binary(&t.join("cifar-100-binary.tar.gz"));
    cifar100_python(&t.join("cifar-100-python.tar.gz"));
    let load = |f: &str| Bundle::load(&t.join(f)).unwrap();

    let ten = |k: usize| (k % 10) as u32;
    let d = cifar::read_binary(
        &load("cifar-10-binary.tar.gz"),
        Cifar::Ten,
        LabelChoice::Fine,
    )
    .unwrap();
    check_cifar(&d, &ten_train(), &TEN_TEST, ten);
    assert_eq!(d.class_names[1], "automobile");
    let p = cifar::read_python(
        &load("cifar-10-python.tar.gz"),
        Cifar::Ten,
        LabelChoice::Fine,
    )
    .unwrap();
    assert_eq!(p.train, d.train);
    assert_eq!(p.test, d.test);
    assert_eq!(p.class_names[9], "class9");

    let train: Vec<usize> = (0..7).collect();
    let test: Vec<usize> = (50..53).collect();
    for label in [LabelChoice::Fine, LabelChoice::Coarse] {
        let want = |k: usize| match label {
            LabelChoice::Fine => labels100(k).0 as u32,
            LabelChoice::Coarse => labels100(k).1 as u32,
        };
        let b =
            cifar::read_binary(&load("cifar-100-binary.tar.gz"), Cifar::Hundred, label).unwrap();
        check_cifar(&b, &train, &test, want);
        let p =
            cifar::read_python(&load("cifar-100-python.tar.gz"), Cifar::Hundred, label).unwrap();
        assert_eq!((p.train, p.test), (b.train, b.test));
        assert_eq!(
            b.class_names.len(),
            if label == LabelChoice::Fine { 100 } else { 20 }
        );
    }
}

#[test]
fn an_extracted_directory_reads_like_its_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&dir).unwrap();
    let arch = tmp.path().join("a.tar");
    cifar10_binary(&arch);
    let bundle = Bundle::load(&arch).unwrap();
    for e in &bundle.entries {
        let name = e.name.rsplit('/').next().unwrap();
        std::fs::write(dir.join(name), e.bytes().unwrap()).unwrap();
    }
    let a = cifar::read_binary(&bundle, Cifar::Ten, LabelChoice::Fine).unwrap();
    let b =
        cifar::read_binary(&Bundle::load(&dir).unwrap(), Cifar::Ten, LabelChoice::Fine).unwrap();
    assert_eq!(a, b);
}

#[test]
fn a_real_numpy_pickle_reads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cifar10-python");
    let bundle = Bundle::load(&dir).unwrap();
    let entry = bundle.require("data_batch_1", "fixture").unwrap();
    let v = opt_stages::data::readers::pickle::parse(&entry.bytes().unwrap()).unwrap();
    match v.get("data") {
        Some(opt_stages::data::readers::pickle::Value::Array { shape, data, .. }) => {
            assert_eq!(shape, &vec![3, 3072]);
            for i in 0..3 {
                for j in [0, 1, 1000, 3071] {
                    assert_eq!(data[i * 3072 + j] as usize, (7 * i + 3 * j) % 256);
                }
            }
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        v.get("labels"),
        Some(&opt_stages::data::readers::pickle::Value::List(vec![
            opt_stages::data::readers::pickle::Value::Int(6),
            opt_stages::data::readers::pickle::Value::Int(9),
            opt_stages::data::readers::pickle::Value::Int(0),
        ]))
    );
}

fn err_of(r: opt_stages::Result<Decoded>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn malformed_cifar_gives_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();

    // Truncated archive.
    let good = t.join("cifar-10-binary.tar.gz");
    cifar10_binary(&good);
    let bytes = std::fs::read(&good).unwrap();
    let cut = t.join("cut.tar.gz");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = match Bundle::load(&cut) {
        Ok(_) => panic!("a truncated archive loaded"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("cut.tar.gz") && e.contains("truncated"), "{e}");

    // Wrong record size (one stray byte) in a loose binary batch.
    let dir = t.join("bin");
    std::fs::create_dir(&dir).unwrap();
    for e in &Bundle::load(&good).unwrap().entries {
        let name = e.name.rsplit('/').next().unwrap();
        std::fs::write(dir.join(name), e.bytes().unwrap()).unwrap();
    }
    let mut b3 = std::fs::read(dir.join("data_batch_3.bin")).unwrap();
    b3.push(0);
    std::fs::write(dir.join("data_batch_3.bin"), &b3).unwrap();
    let e = err_of(cifar::read_binary(
        &Bundle::load(&dir).unwrap(),
        Cifar::Ten,
        LabelChoice::Fine,
    ));
    assert!(
        e.contains("data_batch_3.bin") && e.contains("3073-byte records"),
        "{e}"
    );
    // The same file read as CIFAR-100 (3074-byte records) is refused, not misread.
    b3.pop();
    std::fs::write(dir.join("data_batch_3.bin"), &b3).unwrap();

    // Label out of range.
    b3[3073] = 10;
    std::fs::write(dir.join("data_batch_3.bin"), &b3).unwrap();
    let e = err_of(cifar::read_binary(
        &Bundle::load(&dir).unwrap(),
        Cifar::Ten,
        LabelChoice::Fine,
    ));
    assert!(
        e.contains("data_batch_3.bin") && e.contains("label 10 of record 1 is out of range"),
        "{e}"
    );

    // A truncated pickle inside an archive names the archive and the member.
    let py = t.join("py");
    std::fs::create_dir(&py).unwrap();
    let ks = [0usize, 1];
    let batch = py_batch(&ks, &[("labels", vec![0, 1])]);
    std::fs::write(py.join("test_batch"), &batch[..batch.len() - 10]).unwrap();
    for b in 1..=5 {
        std::fs::write(py.join(format!("data_batch_{b}")), &batch).unwrap();
    }
    let e = err_of(cifar::read_python(
        &Bundle::load(&py).unwrap(),
        Cifar::Ten,
        LabelChoice::Fine,
    ));
    assert!(e.contains("test_batch") && e.contains("truncated"), "{e}");

    // Python labels out of range, and the wrong CIFAR for the file.
    let bad = py_batch(&ks, &[("labels", vec![0, 12])]);
    std::fs::write(py.join("test_batch"), &bad).unwrap();
    let e = err_of(cifar::read_python(
        &Bundle::load(&py).unwrap(),
        Cifar::Ten,
        LabelChoice::Fine,
    ));
    assert!(e.contains("test_batch") && e.contains("label 12"), "{e}");
    let e = err_of(cifar::read_python(
        &Bundle::load(&py).unwrap(),
        Cifar::Hundred,
        LabelChoice::Fine,
    ));
    assert!(e.contains("no file `train`"), "{e}");
}

fn png(k: usize, w: u32, h: u32, gray: bool) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    if gray {
        let img =
            image::GrayImage::from_fn(w, h, |x, y| image::Luma([pixel(k, (y * w + x) as usize)]));
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    } else {
        // CHW generator → HWC pixels.
        let plane = (w * h) as usize;
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            let j = (y * w + x) as usize;
            image::Rgb([pixel(k, j), pixel(k, plane + j), pixel(k, 2 * plane + j)])
        });
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    }
    out.into_inner()
}

/// The CHW bytes of generated image `k` at `w`×`h`.
fn chw(k: usize, w: usize, h: usize) -> Vec<u8> {
    (0..3 * w * h).map(|j| pixel(k, j)).collect()
}

/// Image-folder files: classes `cat`, `dog`, `emu` (sorted), two train and one test image each.
fn folder_files() -> Vec<(String, Vec<u8>, usize, &'static str)> {
    let mut files = Vec::new();
    for (c, class) in ["dog", "cat", "emu"].iter().enumerate() {
        for i in 0..2 {
            let k = 10 * c + i;
            files.push((
                format!("train/{class}/{i}.png"),
                png(k, 5, 4, false),
                k,
                "train",
            ));
        }
        let k = 10 * c + 5;
        files.push((
            format!("test/{class}/x.png"),
            png(k, 5, 4, false),
            k,
            "test",
        ));
    }
    files.push(("README.txt".into(), b"not an image".to_vec(), 0, "none"));
    files
}

fn check_folder(d: &Decoded) {
    assert_eq!(d.class_names, vec!["cat", "dog", "emu"]);
    assert_eq!(d.train.shape, (3, 4, 5));
    let label = |class: &str| d.class_names.iter().position(|n| n == class).unwrap() as u32;
    // Entries are read in sorted path order: cat, dog, emu.
    let expect_train: Vec<(usize, &str)> = vec![
        (10, "cat"),
        (11, "cat"),
        (0, "dog"),
        (1, "dog"),
        (20, "emu"),
        (21, "emu"),
    ];
    assert_eq!(d.train.len(), 6);
    for (i, (k, class)) in expect_train.iter().enumerate() {
        assert_eq!(d.train.image(i), chw(*k, 5, 4).as_slice(), "train {i}");
        assert_eq!(d.train.labels[i], label(class));
    }
    assert_eq!(d.test.labels, vec![0, 1, 2]);
    assert_eq!(d.test.image(1), chw(5, 5, 4).as_slice());
}

#[test]
fn image_folders_plain_and_in_tar_decode_with_sorted_class_names() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pets");
    for (name, data, ..) in folder_files() {
        let p = root.join(&name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    check_folder(&image_folder::read(&Bundle::load(&root).unwrap()).unwrap());
    let files: Vec<(String, Vec<u8>)> = folder_files()
        .into_iter()
        .map(|(n, d, ..)| (n, d))
        .collect();
    for name in ["pets.tar", "pets.tar.gz"] {
        let arch = tmp.path().join(name);
        tarball(&arch, "pets", &files);
        check_folder(&image_folder::read(&Bundle::load(&arch).unwrap()).unwrap());
    }

    // Grayscale folders stay one channel.
    let gray = tmp.path().join("gray");
    for (split, k) in [("train", 1), ("test", 2)] {
        let p = gray.join(split).join("a");
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("i.png"), png(k, 3, 2, true)).unwrap();
    }
    let d = image_folder::read(&Bundle::load(&gray).unwrap()).unwrap();
    assert_eq!(d.train.shape, (1, 2, 3));
    assert_eq!(d.test.image(0), &chw(2, 3, 2)[..6]);

    // A bad PNG names its file; so does a size mismatch.
    std::fs::write(root.join("train/dog/0.png"), b"\x89PNG\r\n\x1a\nbroken").unwrap();
    let e = err_of(image_folder::read(&Bundle::load(&root).unwrap()));
    assert!(e.contains("train/dog/0.png") && e.contains("decode"), "{e}");
    std::fs::write(root.join("train/dog/0.png"), png(0, 6, 4, false)).unwrap();
    let e = err_of(image_folder::read(&Bundle::load(&root).unwrap()));
    assert!(
        e.contains("train/dog/0.png") && e.contains("same size"),
        "{e}"
    );
}

/// Writes a parquet file shaped like the hub's `uoft-cs/cifar100` files.
fn hub_parquet(path: &Path, ks: &[usize], bad_png: bool) {
    use parquet::basic::Compression;
    use parquet::data_type::ByteArray;
    use parquet::file::metadata::KeyValue;
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use std::sync::Arc;
    let schema = parquet::schema::parser::parse_message_type(
        "message schema {
            optional group img {
                optional binary bytes;
                optional binary path (STRING);
            }
            optional int64 fine_label;
            optional int64 coarse_label;
        }",
    )
    .unwrap();
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let file = std::fs::File::create(path).unwrap();
    let mut w = SerializedFileWriter::new(file, Arc::new(schema), Arc::new(props)).unwrap();
    let names: Vec<String> = (0..100).map(|i| format!("fine{i}")).collect();
    let meta = serde_json::json!({"info": {"features": {"fine_label": {"names": names}}}});
    w.append_key_value_metadata(KeyValue::new("huggingface".into(), meta.to_string()));
    let mut rg = w.next_row_group().unwrap();
    let n = ks.len();
    let pngs: Vec<ByteArray> = ks
        .iter()
        .map(|&k| {
            let mut p = png(k, 32, 32, false);
            if bad_png && k == ks[n - 1] {
                p.truncate(20);
            }
            ByteArray::from(p)
        })
        .collect();
    let paths: Vec<ByteArray> = ks
        .iter()
        .map(|k| ByteArray::from(format!("{k}.png").as_str()))
        .collect();
    let fine: Vec<i64> = ks.iter().map(|&k| labels100(k).0 as i64).collect();
    let coarse: Vec<i64> = ks.iter().map(|&k| labels100(k).1 as i64).collect();
    let mut col = 0;
    while let Some(mut c) = rg.next_column().unwrap() {
        use parquet::column::writer::ColumnWriter;
        match (col, c.untyped()) {
            (0, ColumnWriter::ByteArrayColumnWriter(cw)) => {
                cw.write_batch(&pngs, Some(&vec![2; n]), None).unwrap();
            }
            (1, ColumnWriter::ByteArrayColumnWriter(cw)) => {
                cw.write_batch(&paths, Some(&vec![2; n]), None).unwrap();
            }
            (2, ColumnWriter::Int64ColumnWriter(cw)) => {
                cw.write_batch(&fine, Some(&vec![1; n]), None).unwrap();
            }
            (3, ColumnWriter::Int64ColumnWriter(cw)) => {
                cw.write_batch(&coarse, Some(&vec![1; n]), None).unwrap();
            }
            _ => panic!("unexpected column {col}"),
        }
        c.close().unwrap();
        col += 1;
    }
    rg.close().unwrap();
    w.close().unwrap();
}

fn write_hub_files(dir: &Path, bad: bool) -> [PathBuf; 2] {
    let d = dir.join("cifar100");
    std::fs::create_dir_all(&d).unwrap();
    let train = d.join("train-00000-of-00001.parquet");
    let test = d.join("test-00000-of-00001.parquet");
    hub_parquet(&train, &(0..7).collect::<Vec<_>>(), false);
    hub_parquet(&test, &(50..53).collect::<Vec<_>>(), bad);
    [train, test]
}

#[test]
fn hub_parquet_files_decode_to_the_same_images_as_the_official_archives() {
    let tmp = tempfile::tempdir().unwrap();
    write_hub_files(tmp.path(), false);
    let bundle = Bundle::load(tmp.path()).unwrap();
    for (label, col, classes) in [
        (LabelChoice::Fine, "fine_label", 100),
        (LabelChoice::Coarse, "coarse_label", 20),
    ] {
        let d = parquet_images::read(
            &bundle,
            &parquet_images::Columns {
                label: col,
                classes,
            },
        )
        .unwrap();
        let want = |k: usize| match label {
            LabelChoice::Fine => labels100(k).0 as u32,
            LabelChoice::Coarse => labels100(k).1 as u32,
        };
        check_cifar(&d, &(0..7).collect::<Vec<_>>(), &[50, 51, 52], want);
        if label == LabelChoice::Fine {
            assert_eq!(d.class_names[3], "fine3", "names from the hub metadata");
        }
    }
    let official = t_cifar100_binary();
    let d = parquet_images::read(
        &bundle,
        &parquet_images::Columns {
            label: "fine_label",
            classes: 100,
        },
    )
    .unwrap();
    assert_eq!((d.train, d.test), (official.train, official.test));

    // A bad PNG and a truncated parquet file name the file.
    let bad = tempfile::tempdir().unwrap();
    let [_, test] = write_hub_files(bad.path(), true);
    let cols = parquet_images::Columns {
        label: "fine_label",
        classes: 100,
    };
    let e = err_of(parquet_images::read(
        &Bundle::load(bad.path()).unwrap(),
        &cols,
    ));
    assert!(
        e.contains("test-00000-of-00001.parquet") && e.contains("decode"),
        "{e}"
    );
    let bytes = std::fs::read(&test).unwrap();
    std::fs::write(&test, &bytes[..bytes.len() - 30]).unwrap();
    let e = err_of(parquet_images::read(
        &Bundle::load(bad.path()).unwrap(),
        &cols,
    ));
    assert!(e.contains("test-00000-of-00001.parquet"), "{e}");
    // Fine labels against a 20-class reading are out of range.
    let e = err_of(parquet_images::read(
        &Bundle::load(tmp.path()).unwrap(),
        &parquet_images::Columns {
            label: "fine_label",
            classes: 20,
        },
    ));
    assert!(e.contains("out of range 0..20"), "{e}");
}

fn t_cifar100_binary() -> Decoded {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("c.tar.gz");
    cifar100_binary(&p);
    cifar::read_binary(
        &Bundle::load(&p).unwrap(),
        Cifar::Hundred,
        LabelChoice::Fine,
    )
    .unwrap()
}

#[test]
fn a_local_archive_is_fetched_in_place_and_preprocessed_with_views() {
    let tmp = tempfile::tempdir().unwrap();
    let arch = tmp.path().join("cifar-10-python.tar.gz");
    cifar10_python(&arch);
    let (f, p) = (tmp.path().join("f"), tmp.path().join("p"));
    std::fs::create_dir_all(&f).unwrap();
    std::fs::create_dir_all(&p).unwrap();
    let cfg = FetchConfig {
        dataset: DatasetName::Cifar10,
        source: Source::Local { path: arch.clone() },
    };
    fetch::run(&cfg, &f, &Silent).unwrap();
    assert!(
        !f.join(fetch::FILES_DIR).exists(),
        "a local source is read in place, not copied"
    );
    let pre = PreprocessConfig {
        dataset: DatasetName::Cifar10,
        format: DataFormat::CifarPython,
        label: LabelChoice::Fine,
    };
    let stats = preprocess::run(&pre, &f, &p, &Silent).unwrap();
    assert_eq!(
        (stats.classes, stats.train_count, stats.test_count),
        (10, 10, 3)
    );
    // Per-channel statistics of the training pixels, computed independently.
    let train = ten_train();
    for ch in 0..3 {
        let vals: Vec<f64> = train
            .iter()
            .flat_map(|&k| (ch * 1024..(ch + 1) * 1024).map(move |j| pixel(k, j) as f64 / 255.0))
            .collect();
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        let std = (vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64).sqrt();
        assert!((stats.channel_mean[ch] - mean).abs() < 1e-9);
        assert!((stats.channel_std[ch] - std).abs() < 1e-9);
    }

    // Views: a validation split drawn by its seed, disjoint from train, same images overall.
    let view = DataView {
        validation: 4,
        validation_seed: 3,
        ..DataView::default()
    };
    let a = preprocess::load(&p, &view).unwrap();
    let b = preprocess::load(&p, &view).unwrap();
    let v = a.validation.as_ref().unwrap();
    assert_eq!((a.train.len(), v.len()), (6, 4));
    assert_eq!(Some(v), b.validation.as_ref(), "the seed decides the split");
    let other = preprocess::load(
        &p,
        &DataView {
            validation_seed: 4,
            ..view.clone()
        },
    )
    .unwrap();
    assert_ne!(
        other.validation.as_ref(),
        Some(v),
        "another seed, another split"
    );
    let mut all: Vec<Vec<u8>> = (0..6)
        .map(|i| a.train.image(i).to_vec())
        .chain((0..4).map(|i| v.image(i).to_vec()))
        .collect();
    all.sort();
    let mut want: Vec<Vec<u8>> = train.iter().map(|&k| image(k)).collect();
    want.sort();
    assert_eq!(all, want);
    // Per-channel normalisation is fitted on the training images the view keeps, never on
    // the validation ones: x ↦ (x/255 − mean)/std with the kept images' population statistics.
    let per_channel = preprocess::load(
        &p,
        &DataView {
            normalization: preprocess::Normalization::PerChannel,
            ..view.clone()
        },
    )
    .unwrap();
    assert_eq!(
        per_channel.train, a.train,
        "normalisation does not change the split"
    );
    for ch in 0..3 {
        let vals: Vec<f64> = (0..a.train.len())
            .flat_map(|i| a.train.image(i)[ch * 1024..(ch + 1) * 1024].to_vec())
            .map(|x| x as f64 / 255.0)
            .collect();
        let mean = vals.iter().sum::<f64>() / vals.len() as f64;
        let std = (vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64).sqrt();
        for x in [0u8, 77, 255] {
            let want = (x as f64 / 255.0 - mean) / std;
            let got = per_channel.normalizer.apply(ch, x) as f64;
            assert!(
                (got - want).abs() < 1e-4,
                "channel {ch}, pixel {x}: {got} vs {want}"
            );
        }
    }
    assert!(preprocess::load(
        &p,
        &DataView {
            validation: 10,
            ..view
        }
    )
    .is_err());

    // Changing the archive after fetch is caught, not silently read.
    std::fs::write(&arch, b"changed").unwrap();
    let e = preprocess::run(&pre, &f, &tmp.path().join("p2"), &Silent)
        .expect_err("changed data must not be read")
        .to_string();
    assert!(e.contains("changed"), "{e}");
}

#[test]
fn the_hub_source_feeds_preprocess_the_same_images_as_the_official_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let [train, test] = write_hub_files(tmp.path(), false);
    let server = common::Server::start();
    let names = [
        "cifar100/train-00000-of-00001.parquet",
        "cifar100/test-00000-of-00001.parquet",
    ];
    server.put(names[0], std::fs::read(train).unwrap());
    server.put(names[1], std::fs::read(test).unwrap());
    let cache = tmp.path().join("hf");
    let (f, p) = (tmp.path().join("f"), tmp.path().join("p"));
    std::fs::create_dir_all(&f).unwrap();
    std::fs::create_dir_all(&p).unwrap();
    let cfg = FetchConfig {
        dataset: DatasetName::Cifar100,
        source: Source::Hub {
            endpoint: format!("{}/ok", server.base),
            repo: "uoft-cs/cifar100".into(),
            revision: "main".into(),
            files: names.iter().map(|s| s.to_string()).collect(),
            cache_dir: Some(cache),
        },
    };
    fetch::run(&cfg, &f, &Silent).unwrap();
    let pre = PreprocessConfig {
        dataset: DatasetName::Cifar100,
        format: DataFormat::Parquet,
        label: LabelChoice::Fine,
    };
    let stats = preprocess::run(&pre, &f, &p, &Silent).unwrap();
    assert_eq!(stats.class_names[7], "fine7");
    let data = preprocess::load(&p, &DataView::default()).unwrap();
    let official = t_cifar100_binary();
    assert_eq!((data.train, data.test), (official.train, official.test));
}

/// An MNIST-shaped hub parquet file: an `image` struct of grayscale PNGs and a `label`.
fn mnist_parquet(path: &Path, ks: &[usize]) {
    use parquet::data_type::ByteArray;
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use std::sync::Arc;
    let schema = parquet::schema::parser::parse_message_type(
        "message schema {
            optional group image {
                optional binary bytes;
                optional binary path (STRING);
            }
            optional int64 label;
        }",
    )
    .unwrap();
    let file = std::fs::File::create(path).unwrap();
    let props = Arc::new(WriterProperties::builder().build());
    let mut w = SerializedFileWriter::new(file, Arc::new(schema), props).unwrap();
    let mut rg = w.next_row_group().unwrap();
    let n = ks.len();
    let pngs: Vec<ByteArray> = ks
        .iter()
        .map(|&k| ByteArray::from(png(k, 28, 28, true)))
        .collect();
    let paths: Vec<ByteArray> = ks.iter().map(|_| ByteArray::from("x.png")).collect();
    let labels: Vec<i64> = ks.iter().map(|&k| (k % 10) as i64).collect();
    let mut col = 0;
    while let Some(mut c) = rg.next_column().unwrap() {
        use parquet::column::writer::ColumnWriter;
        match (col, c.untyped()) {
            (0, ColumnWriter::ByteArrayColumnWriter(cw)) => {
                cw.write_batch(&pngs, Some(&vec![2; n]), None).unwrap();
            }
            (1, ColumnWriter::ByteArrayColumnWriter(cw)) => {
                cw.write_batch(&paths, Some(&vec![2; n]), None).unwrap();
            }
            (2, ColumnWriter::Int64ColumnWriter(cw)) => {
                cw.write_batch(&labels, Some(&vec![1; n]), None).unwrap();
            }
            _ => panic!("unexpected column {col}"),
        }
        c.close().unwrap();
        col += 1;
    }
    rg.close().unwrap();
    w.close().unwrap();
}

#[test]
fn mnist_hub_parquet_decodes_to_one_channel() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("mnist");
    std::fs::create_dir_all(&d).unwrap();
    mnist_parquet(&d.join("train-00000-of-00001.parquet"), &[3, 4, 5, 6]);
    mnist_parquet(&d.join("test-00000-of-00001.parquet"), &[7, 18]);
    let pre = PreprocessConfig {
        dataset: DatasetName::Mnist,
        format: DataFormat::Parquet,
        label: LabelChoice::Fine,
    };
    let dec = preprocess::decode(&pre, tmp.path()).unwrap();
    assert_eq!(dec.train.shape, (1, 28, 28));
    assert_eq!(dec.train.labels, vec![3, 4, 5, 6]);
    assert_eq!(dec.test.labels, vec![7, 8]);
    assert_eq!(dec.test.image(1), &chw(18, 28, 28)[..28 * 28]);
}

// The pickle reader against the writer (moved from the library with the writer).
#[test]
fn written_cifar_dicts_read_back() {
    let data: Vec<u8> = (0..2 * 6).map(|i| i as u8 * 20).collect();
    let labels: Vec<i64> = (0..1500).map(|i| i % 7).collect();
    let bytes = dict(&[
        ("batch_label", W::Bytes(b"training batch 1 of 5")),
        ("labels", W::Ints(&labels)),
        ("data", W::U8Array(&[2, 6], &data)),
        ("filenames", W::BytesList(vec![b"a.png", b"b.png"])),
    ]);
    let v = pickle::parse(&bytes).unwrap();
    match v.get("data").unwrap() {
        pickle::Value::Array { shape, data: d, .. } => {
            assert_eq!(shape, &vec![2, 6]);
            assert_eq!(d.as_slice(), data.as_slice());
        }
        other => panic!("{other:?}"),
    }
    match v.get("labels").unwrap() {
        pickle::Value::List(l) => {
            assert_eq!(l.len(), 1500);
            assert_eq!(l[1499], pickle::Value::Int(1499 % 7));
        }
        other => panic!("{other:?}"),
    }
    // Truncation anywhere is an error, never a partial value.
    for cut in [1, bytes.len() / 2, bytes.len() - 1] {
        assert!(pickle::parse(&bytes[..cut]).is_err(), "cut at {cut}");
    }
}

#[test]
fn foreign_globals_and_wide_dtypes_are_refused() {
    let evil = b"\x80\x02cos\nsystem\nU\x02lsq\x00\x85R.";
    let e = pickle::parse(evil).unwrap_err();
    assert!(e.contains("os.system"), "{e}");
    let data = [0u8; 4];
    let mut bytes = dict(&[("data", W::U8Array(&[4], &data))]);
    let at = bytes.windows(2).position(|w| w == b"u1").unwrap();
    bytes[at..at + 2].copy_from_slice(b"f4");
    let e = pickle::parse(&bytes).unwrap_err();
    assert!(e.contains("f4"), "{e}");
}
