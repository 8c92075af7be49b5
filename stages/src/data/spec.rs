//! What a dataset *is*, independent of where its files come from or how they are decoded: its
//! name, the layouts its files come in, which labels become classes, and what is known of its
//! images before decoding. Fetch, preprocess and the format readers all speak these types;
//! none of them owns them.

use serde::{Deserialize, Serialize};

/// Datasets this stage knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetName {
    FashionMnist,
    Mnist,
    #[serde(rename = "cifar-100")]
    Cifar100,
    #[serde(rename = "cifar-10")]
    Cifar10,
    /// Any `train/<class>/…`, `test/<class>/…` image folder.
    ImageFolder,
}

impl DatasetName {
    pub const ALL: [DatasetName; 5] = [
        DatasetName::FashionMnist,
        DatasetName::Mnist,
        DatasetName::Cifar10,
        DatasetName::Cifar100,
        DatasetName::ImageFolder,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DatasetName::FashionMnist => "fashion-mnist",
            DatasetName::Mnist => "mnist",
            DatasetName::Cifar100 => "cifar-100",
            DatasetName::Cifar10 => "cifar-10",
            DatasetName::ImageFolder => "image-folder",
        }
    }
}

/// How the fetched files are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataFormat {
    /// MNIST-style IDX files (raw or gzip).
    Idx,
    /// The CIFAR "binary version" (`*.bin` records), loose or in a tarball.
    CifarBinary,
    /// The CIFAR "python version" (pickled dicts), loose or in a tarball.
    CifarPython,
    /// Hugging Face parquet files (`train-*.parquet`, `test-*.parquet`, PNG images).
    Parquet,
    /// `train/<class>/<image>` and `test/<class>/<image>`, loose or in a tarball.
    ImageFolder,
}

/// Which CIFAR-100 labels become the classes (CIFAR-10 has one kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LabelChoice {
    /// The 100 classes.
    #[default]
    Fine,
    /// The 20 superclasses.
    Coarse,
}

/// Image shape `(C, H, W)` and class count of a named dataset, known without decoding it;
/// `None` for image folders.
pub fn known_shape(
    dataset: DatasetName,
    label: LabelChoice,
) -> Option<((usize, usize, usize), usize)> {
    match (dataset, label) {
        (DatasetName::FashionMnist | DatasetName::Mnist, _) => Some(((1, 28, 28), 10)),
        (DatasetName::Cifar10, _) => Some(((3, 32, 32), 10)),
        (DatasetName::Cifar100, LabelChoice::Fine) => Some(((3, 32, 32), 100)),
        (DatasetName::Cifar100, LabelChoice::Coarse) => Some(((3, 32, 32), 20)),
        (DatasetName::ImageFolder, _) => None,
    }
}

/// The four files of an IDX dataset, by their official stems.
pub const IDX_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];
