//! Compressed streams, recognised by their magic bytes: stage3 tarballs and snapshots (xz, in
//! one or many blocks), gpkg members (zstd by default, any of Portage's codecs), xpak tarballs
//! (bzip2). One place decides which decoder reads a stream.

use std::io::{self, BufRead, BufReader, Read};

/// Compression of a stream, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Xz,
    Gzip,
    Bzip2,
    Zstd,
    None,
}

/// Read size of the buffered reader in front of a decoder.
pub const CHUNK: usize = 1 << 20;

pub fn sniff(head: &[u8]) -> Codec {
    if head.starts_with(&[0xFD, b'7', b'z', b'X', b'Z', 0]) {
        Codec::Xz
    } else if head.starts_with(&[0x1F, 0x8B]) {
        Codec::Gzip
    } else if head.starts_with(b"BZh") {
        Codec::Bzip2
    } else if head.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]) {
        Codec::Zstd
    } else {
        Codec::None
    }
}

/// A reader of the decompressed content of `r`, codec chosen by magic bytes (uncompressed
/// input is passed through). Multi-block xz is decoded on every core; concatenated gzip,
/// bzip2 and zstd frames are read to the end. The decoder is `Send` when `r` is.
pub fn decoder<R: Read>(r: R) -> io::Result<Decoder<BufReader<R>>> {
    let mut br = BufReader::with_capacity(CHUNK, r);
    let codec = sniff(br.fill_buf()?);
    Ok(match codec {
        Codec::Xz => {
            let threads = std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1);
            let stream = liblzma::stream::MtStreamBuilder::new()
                .threads(threads)
                .memlimit_threading(1 << 30)
                .memlimit_stop(u64::MAX)
                .decoder()
                .map_err(io::Error::other)?;
            Decoder::Xz(liblzma::bufread::XzDecoder::new_stream(br, stream))
        }
        Codec::Gzip => Decoder::Gzip(flate2::bufread::MultiGzDecoder::new(br)),
        Codec::Bzip2 => Decoder::Bzip2(bzip2::bufread::MultiBzDecoder::new(br)),
        Codec::Zstd => Decoder::Zstd(zstd::stream::read::Decoder::with_buffer(br)?),
        Codec::None => Decoder::None(br),
    })
}

/// The decompressing reader `decoder` picked.
pub enum Decoder<R: BufRead> {
    Xz(liblzma::bufread::XzDecoder<R>),
    Gzip(flate2::bufread::MultiGzDecoder<R>),
    Bzip2(bzip2::bufread::MultiBzDecoder<R>),
    Zstd(zstd::stream::read::Decoder<'static, R>),
    None(R),
}

impl<R: BufRead> Decoder<R> {
    /// The reader under the decoder, positioned somewhere after the last byte it consumed
    /// (buffered input is lost): for reading what follows the compressed stream.
    pub fn into_inner(self) -> R {
        match self {
            Decoder::Xz(d) => d.into_inner(),
            Decoder::Gzip(d) => d.into_inner(),
            Decoder::Bzip2(d) => d.into_inner(),
            Decoder::Zstd(d) => d.finish(),
            Decoder::None(d) => d,
        }
    }
}

impl<R: BufRead> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Xz(d) => d.read(buf),
            Decoder::Gzip(d) => d.read(buf),
            Decoder::Bzip2(d) => d.read(buf),
            Decoder::Zstd(d) => d.read(buf),
            Decoder::None(d) => d.read(buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs_sniffed() {
        assert_eq!(sniff(&[0xFD, b'7', b'z', b'X', b'Z', 0, 1]), Codec::Xz);
        assert_eq!(sniff(&[0x1F, 0x8B, 8]), Codec::Gzip);
        assert_eq!(sniff(b"BZh91AY"), Codec::Bzip2);
        assert_eq!(sniff(&[0x28, 0xB5, 0x2F, 0xFD]), Codec::Zstd);
        assert_eq!(sniff(b"usr/"), Codec::None);
    }

    #[test]
    fn every_codec_round_trips() {
        use std::io::Write;
        let data = b"metadata/timestamp.chk\n".repeat(1000);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(&data).unwrap();
        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        bz.write_all(&data).unwrap();
        let zs = zstd::encode_all(&data[..], 1).unwrap();
        for packed in [
            gz.finish().unwrap(),
            xz.finish().unwrap(),
            bz.finish().unwrap(),
            zs,
            data.clone(),
        ] {
            let mut out = Vec::new();
            decoder(&packed[..]).unwrap().read_to_end(&mut out).unwrap();
            assert_eq!(out, data);
        }
    }
}
