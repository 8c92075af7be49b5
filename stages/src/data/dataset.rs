//! Decoded datasets in memory: uint8 images in NCHW order, u32 labels.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::format_err;
use crate::Result;
use std::path::Path;

/// One split of a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// `n · c · h · w` bytes, image-major, then channel planes (NCHW).
    pub images: Vec<u8>,
    pub labels: Vec<u32>,
    /// `(channels, height, width)`.
    pub shape: (usize, usize, usize),
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn image_len(&self) -> usize {
        self.shape.0 * self.shape.1 * self.shape.2
    }

    pub fn image(&self, i: usize) -> &[u8] {
        let l = self.image_len();
        &self.images[i * l..(i + 1) * l]
    }

    pub fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.labels.truncate(n);
            self.images.truncate(n * self.image_len());
        }
    }

    /// The images at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Split {
        let mut images = Vec::with_capacity(indices.len() * self.image_len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        Split {
            images,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            shape: self.shape,
        }
    }

    pub fn to_tensors(&self, device: &Device) -> Result<(Tensor, Tensor)> {
        let (c, h, w) = self.shape;
        let images = Tensor::from_slice(&self.images, (self.len(), c, h, w), device)?;
        let labels = Tensor::from_slice(&self.labels, self.len(), device)?;
        Ok((images, labels))
    }

    pub fn from_tensors(images: &Tensor, labels: &Tensor, path: &Path) -> Result<Self> {
        let (n, c, h, w) = images
            .dims4()
            .map_err(|_| format_err(path, "images tensor is not 4-D"))?;
        if images.dtype() != DType::U8 || labels.dtype() != DType::U32 || labels.dims() != [n] {
            return Err(format_err(
                path,
                "unexpected image/label tensor types or shapes",
            ));
        }
        Ok(Self {
            images: images.flatten_all()?.to_vec1()?,
            labels: labels.to_vec1()?,
            shape: (c, h, w),
        })
    }
}

/// Per-channel affine normalisation `x ↦ x·scale[c] + shift[c]` applied to raw pixel values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalizer {
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
}

impl Normalizer {
    pub fn apply(&self, channel: usize, pixel: u8) -> f32 {
        pixel as f32 * self.scale[channel] + self.shift[channel]
    }

    /// Normalises a whole split into an f32 tensor `[n, c, h, w]`.
    pub fn tensor(
        &self,
        split: &Split,
        range: std::ops::Range<usize>,
        device: &Device,
    ) -> Result<Tensor> {
        let (c, h, w) = split.shape;
        let plane = h * w;
        let mut out = Vec::with_capacity(range.len() * c * plane);
        for i in range.clone() {
            for (ch, pixels) in split.image(i).chunks(plane).enumerate() {
                out.extend(pixels.iter().map(|&p| self.apply(ch, p)));
            }
        }
        Ok(Tensor::from_vec(out, (range.len(), c, h, w), device)?)
    }
}

/// A dataset as a format reader returns it: both splits and the class names (index order).
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub train: Split,
    pub test: Split,
    pub class_names: Vec<String>,
}

/// Appends a decoded image's pixels in the artifacts' layout: one plane for grayscale, else
/// RGB planes (HWC → CHW), so every image format decodes to the same tensors.
pub fn push_chw(img: &image::DynamicImage, gray: bool, out: &mut Vec<u8>) {
    if gray {
        out.extend_from_slice(img.to_luma8().as_raw());
    } else {
        let rgb = img.to_rgb8();
        let raw = rgb.as_raw();
        for ch in 0..3 {
            out.extend(raw.iter().skip(ch).step_by(3));
        }
    }
}

/// What an encoded image's header says, read without decoding its pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    pub width: u32,
    pub height: u32,
    /// Whether the image has colour (else it decodes to one plane).
    pub color: bool,
}

impl ImageHeader {
    /// Bytes the image takes in the artifacts' layout with `channels` planes.
    pub fn pixels_bytes(&self, channels: u64) -> u64 {
        self.width as u64 * self.height as u64 * channels
    }
}

fn image_reader(
    bytes: &[u8],
) -> std::result::Result<image::ImageReader<std::io::Cursor<&[u8]>>, String> {
    image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read the image: {e}"))
}

/// Reads an encoded image's header: its size is known before anything is decoded.
pub fn image_header(bytes: &[u8]) -> std::result::Result<ImageHeader, String> {
    use image::ImageDecoder;
    let decoder = image_reader(bytes)?
        .into_decoder()
        .map_err(|e| format!("cannot decode image: {e}"))?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(format!("image of {width}×{height} pixels"));
    }
    Ok(ImageHeader {
        width,
        height,
        color: decoder.color_type().has_color(),
    })
}

/// Decodes an image whose header was checked, holding the decoder to that header's size.
pub fn decode_image(
    bytes: &[u8],
    header: &ImageHeader,
) -> std::result::Result<image::DynamicImage, String> {
    let mut reader = image_reader(bytes)?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(header.width);
    limits.max_image_height = Some(header.height);
    reader.limits(limits);
    reader
        .decode()
        .map_err(|e| format!("cannot decode image: {e}"))
}
