//! Recognising an image from its first bytes (magic numbers), independent of what the server
//! claims in `Content-Type`.
//!
//! Known: PNG, JPEG, GIF, WebP, AVIF, HEIC/HEIF, BMP and TIFF. SVG is deliberately not an image
//! here: it is XML that can carry scripts and external references.

/// An image format recognised from its magic number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    /// `\x89PNG\r\n\x1a\n`
    Png,
    /// `FF D8 FF`
    Jpeg,
    /// `GIF87a` / `GIF89a`
    Gif,
    /// `RIFF....WEBP`
    Webp,
    /// ISO-BMFF `ftyp` box with an `avif`/`avis` brand
    Avif,
    /// ISO-BMFF `ftyp` box with a HEIF brand (`heic`, `heix`, `mif1`, …)
    Heic,
    /// `BM`
    Bmp,
    /// `II*\0` / `MM\0*`
    Tiff,
}

impl ImageFormat {
    /// The canonical MIME type, e.g. `image/png`.
    pub fn mime(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Gif => "image/gif",
            Self::Webp => "image/webp",
            Self::Avif => "image/avif",
            Self::Heic => "image/heic",
            Self::Bmp => "image/bmp",
            Self::Tiff => "image/tiff",
        }
    }

    /// The file extension used in storage keys, without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpg",
            Self::Gif => "gif",
            Self::Webp => "webp",
            Self::Avif => "avif",
            Self::Heic => "heic",
            Self::Bmp => "bmp",
            Self::Tiff => "tiff",
        }
    }

    /// The format whose [`extension`](Self::extension) is `ext` (also `jpeg`, `tif`).
    pub fn from_extension(ext: &str) -> Option<Self> {
        Some(match ext.to_ascii_lowercase().as_str() {
            "png" => Self::Png,
            "jpg" | "jpeg" => Self::Jpeg,
            "gif" => Self::Gif,
            "webp" => Self::Webp,
            "avif" => Self::Avif,
            "heic" | "heif" => Self::Heic,
            "bmp" => Self::Bmp,
            "tif" | "tiff" => Self::Tiff,
            _ => return None,
        })
    }
}

/// Bytes needed to recognise every format (the `ftyp` box with a few compatible brands).
pub(crate) const SNIFF_LEN: usize = 32;

/// Recognises an image format from the first bytes of a file.
///
/// # Example
///
/// ```
/// use images::{sniff, ImageFormat};
///
/// assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), Some(ImageFormat::Png));
/// assert_eq!(sniff(b"<!doctype html><html>"), None);
/// ```
pub fn sniff(bytes: &[u8]) -> Option<ImageFormat> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Some(ImageFormat::Png);
    }
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Some(ImageFormat::Jpeg);
    }
    if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        return Some(ImageFormat::Gif);
    }
    if bytes.len() >= 12 && bytes.starts_with(b"RIFF") && &bytes[8..12] == b"WEBP" {
        return Some(ImageFormat::Webp);
    }
    if bytes.len() >= 14 && bytes.starts_with(b"BM") {
        // The DIB header size (offset 14) is one of a few known values.
        if bytes.len() < 18 || matches!(bytes[14], 12 | 40 | 52 | 56 | 64 | 108 | 124) {
            return Some(ImageFormat::Bmp);
        }
    }
    if bytes.starts_with(b"II*\0") || bytes.starts_with(b"MM\0*") {
        return Some(ImageFormat::Tiff);
    }
    sniff_ftyp(bytes)
}

/// ISO base media file: `[size:4]ftyp[major:4][minor:4][compatible:4]*`.
fn sniff_ftyp(bytes: &[u8]) -> Option<ImageFormat> {
    if bytes.len() < 12 || &bytes[4..8] != b"ftyp" {
        return None;
    }
    let size = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let end = size.clamp(12, bytes.len());
    let brands: Vec<&[u8]> = std::iter::once(&bytes[8..12])
        .chain(bytes.get(16..end).unwrap_or_default().chunks_exact(4))
        .collect();
    if brands.iter().any(|b| *b == b"avif" || *b == b"avis") {
        return Some(ImageFormat::Avif);
    }
    let heif = [
        b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1",
    ];
    if brands.iter().any(|b| heif.iter().any(|h| b == h)) {
        return Some(ImageFormat::Heic);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn recognises_the_fixtures() {
        for (name, format) in [
            ("pixel.png", ImageFormat::Png),
            ("pixel.jpg", ImageFormat::Jpeg),
            ("pixel.gif", ImageFormat::Gif),
            ("pixel.webp", ImageFormat::Webp),
            ("pixel.avif", ImageFormat::Avif),
        ] {
            assert_eq!(sniff(&fixture(name)), Some(format), "{name}");
            assert_eq!(
                ImageFormat::from_extension(format.extension()),
                Some(format)
            );
        }
    }

    #[test]
    fn recognises_headers_and_refuses_others() {
        assert_eq!(sniff(b"II*\0\x08\0\0\0"), Some(ImageFormat::Tiff));
        assert_eq!(sniff(b"MM\0*\0\0\0\x08"), Some(ImageFormat::Tiff));
        let mut bmp = b"BM\0\0\0\0\0\0\0\0\x36\0\0\0\x28\0\0\0".to_vec();
        assert_eq!(sniff(&bmp), Some(ImageFormat::Bmp));
        bmp[14] = 0x99;
        assert_eq!(sniff(&bmp), None);
        assert_eq!(
            sniff(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic"),
            Some(ImageFormat::Heic)
        );
        assert_eq!(sniff(b"\0\0\0\x14ftypisom\0\0\0\0mp41"), None);
        assert_eq!(sniff(b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>"), None);
        assert_eq!(sniff(b"<!DOCTYPE html>"), None);
        assert_eq!(sniff(b""), None);
        assert_eq!(sniff(b"\x89PN"), None);
    }
}
