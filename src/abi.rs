//! Kernel ABI check of binary packages: which ELF files in a binpkg carry an `NT_GNU_ABI_TAG`
//! note (the minimum kernel the binary's C library was built for: glibc refuses to start such a
//! program on an older kernel), so the build loop can hold back packages a host's kernel could not
//! run. Reads gpkg (`.gpkg.tar`: `<PF>-<BUILD_ID>/image.tar.<zst|xz|gz|bz2>` holding `image/...`)
//! and legacy xpak (`.tbz2`: a compressed tar followed by the xpak block), compression detected
//! by magic. The ELF note parser is our own: 32- and 64-bit, little and big endian, notes from
//! `PT_NOTE` segments and from `SHT_NOTE` / `.note.ABI-tag` sections.

use std::fmt;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// One ABI tag found in a binpkg.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AbiNote {
    /// Path of the ELF file as installed, e.g. `/usr/bin/x`.
    pub file: String,
    /// OS field of the note: 0 Linux, 1 GNU (Hurd), 2 Solaris, 3 FreeBSD.
    pub os: u32,
    /// Minimum kernel version (major, minor, patch).
    pub version: (u32, u32, u32),
}

impl AbiNote {
    pub fn os_name(&self) -> &'static str {
        match self.os {
            0 => "Linux",
            1 => "GNU",
            2 => "Solaris",
            3 => "FreeBSD",
            _ => "unknown",
        }
    }

    /// `major.minor.patch`.
    pub fn version_string(&self) -> String {
        let (a, b, c) = self.version;
        format!("{a}.{b}.{c}")
    }
}

impl fmt::Display for AbiNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} {}",
            self.file,
            self.os_name(),
            self.version_string()
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AbiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },
}

/// Whether a kernel release (`uname -r` style, e.g. `6.1.0-13-amd64`) is older than `required`.
/// A release that does not start with a version number is not judged (false).
pub fn kernel_too_old(required: (u32, u32, u32), kernel: &str) -> bool {
    match parse_kernel(kernel) {
        Some(k) => k < required,
        None => false,
    }
}

/// The leading `major[.minor[.patch]]` of a kernel release; missing parts are 0.
pub fn parse_kernel(kernel: &str) -> Option<(u32, u32, u32)> {
    let mut parts = [0u32; 3];
    let mut rest = kernel.trim();
    for (i, slot) in parts.iter_mut().enumerate() {
        let n = rest.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            if i == 0 {
                return None;
            }
            break;
        }
        *slot = rest[..n].parse().ok()?;
        rest = &rest[n..];
        match rest.strip_prefix('.') {
            Some(r) => rest = r,
            None => break,
        }
    }
    Some((parts[0], parts[1], parts[2]))
}

/// Scan every ELF file of a binpkg (gpkg or xpak) for ABI tags.
pub fn scan_binpkg(path: &Path) -> Result<Vec<AbiNote>, AbiError> {
    let io = |source| AbiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let name = name.unwrap_or_default();
    if name.ends_with(".tbz2") || name.ends_with(".xpak") {
        let data = std::fs::read(path).map_err(io)?;
        let end = xpak_tar_len(&data).ok_or_else(|| AbiError::Format {
            path: path.to_path_buf(),
            reason: "no xpak trailer (XPAKSTOP...STOP)".into(),
        })?;
        let r = crate::compress::decoder(&data[..end]).map_err(io)?;
        return scan_image_tar(r, "").map_err(io);
    }
    let f = std::fs::File::open(path).map_err(io)?;
    let mut outer = tar::Archive::new(BufReader::new(f));
    let mut notes = Vec::new();
    let mut found = false;
    for entry in outer.entries().map_err(io)? {
        let entry = entry.map_err(io)?;
        let p = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let mut comps = p.split('/').filter(|c| !c.is_empty());
        let (Some(_dir), Some(file), None) = (comps.next(), comps.next(), comps.next()) else {
            continue;
        };
        if !file.starts_with("image.tar") || file.ends_with(".sig") {
            continue;
        }
        found = true;
        let r = crate::compress::decoder(entry).map_err(io)?;
        notes.extend(scan_image_tar(r, "image/").map_err(io)?);
    }
    if !found {
        return Err(AbiError::Format {
            path: path.to_path_buf(),
            reason: "no <PF>-<BUILD_ID>/image.tar.* member (not a gpkg?)".into(),
        });
    }
    Ok(notes)
}

/// Length of the tarball in front of an xpak block: the file ends with
/// `XPAKSTOP<u32be length of the xpak block>STOP`.
fn xpak_tar_len(data: &[u8]) -> Option<usize> {
    let n = data.len();
    if n < 16 || &data[n - 4..] != b"STOP" {
        return None;
    }
    let len = u32::from_be_bytes(data[n - 8..n - 4].try_into().ok()?) as usize;
    let start = n.checked_sub(8 + len)?;
    (data.get(start..start + 8)? == b"XPAKPACK").then_some(start)
}

/// ABI tags of the ELF files of an image tar; `strip` is the prefix (`image/`) removed from
/// member names before they become installed paths.
fn scan_image_tar(r: impl Read, strip: &str) -> std::io::Result<Vec<AbiNote>> {
    let mut ar = tar::Archive::new(r);
    let mut out = Vec::new();
    for entry in ar.entries()? {
        let mut entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let p = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let p = p.strip_prefix("./").unwrap_or(&p);
        let rel = p.strip_prefix(strip).unwrap_or(p);
        let mut head = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            let n = entry.read(&mut head[got..])?;
            if n == 0 {
                break;
            }
            got += n;
        }
        if got < 4 || head != *b"\x7fELF" {
            continue;
        }
        let mut data = head.to_vec();
        entry.read_to_end(&mut data)?;
        for (os, version) in elf_abi_tags(&data) {
            out.push(AbiNote {
                file: format!("/{}", rel.trim_start_matches('/')),
                os,
                version,
            });
        }
    }
    Ok(out)
}

/// Reads fields of an ELF file of either class and byte order, bounds-checked.
struct Elf<'a> {
    d: &'a [u8],
    is64: bool,
    be: bool,
}

impl Elf<'_> {
    fn u16(&self, off: usize) -> Option<u64> {
        let b: [u8; 2] = self.d.get(off..off + 2)?.try_into().ok()?;
        Some(if self.be {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        } as u64)
    }
    fn u32(&self, off: usize) -> Option<u64> {
        let b: [u8; 4] = self.d.get(off..off + 4)?.try_into().ok()?;
        Some(if self.be {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        } as u64)
    }
    fn u64(&self, off: usize) -> Option<u64> {
        let b: [u8; 8] = self.d.get(off..off + 8)?.try_into().ok()?;
        Some(if self.be {
            u64::from_be_bytes(b)
        } else {
            u64::from_le_bytes(b)
        })
    }
    /// A word: 8 bytes in 64-bit files, 4 in 32-bit ones.
    fn word(&self, off: usize) -> Option<u64> {
        if self.is64 {
            self.u64(off)
        } else {
            self.u32(off)
        }
    }

    /// ABI tags in a note area.
    fn notes(&self, off: u64, size: u64, align: u64, out: &mut Vec<(u32, (u32, u32, u32))>) {
        let align = if align == 8 { 8 } else { 4 };
        let pad = |n: u64| n.div_ceil(align) * align;
        let (Ok(mut pos), Ok(size)) = (usize::try_from(off), usize::try_from(size)) else {
            return;
        };
        let Some(end) = pos.checked_add(size).filter(|e| *e <= self.d.len()) else {
            return;
        };
        while pos + 12 <= end {
            let (Some(namesz), Some(descsz), Some(ty)) =
                (self.u32(pos), self.u32(pos + 4), self.u32(pos + 8))
            else {
                return;
            };
            let name_at = pos + 12;
            let Some(desc_at) = (name_at as u64).checked_add(pad(namesz)) else {
                return;
            };
            let Some(next) = desc_at.checked_add(pad(descsz)) else {
                return;
            };
            if next > end as u64 {
                return;
            }
            let desc_at = desc_at as usize;
            let name = &self.d[name_at..name_at + namesz as usize];
            if ty == 1 && name == b"GNU\0" && descsz >= 16 {
                let f = |i: usize| self.u32(desc_at + 4 * i).unwrap_or(0) as u32;
                out.push((f(0), (f(1), f(2), f(3))));
            }
            pos = next as usize;
        }
    }
}

/// Every `NT_GNU_ABI_TAG` note of an ELF file: (os, (major, minor, patch)), without repeats (a
/// note is usually both in a `PT_NOTE` segment and in its section). Not an ELF file: none.
pub fn elf_abi_tags(data: &[u8]) -> Vec<(u32, (u32, u32, u32))> {
    let mut out = Vec::new();
    if data.len() < 0x34 || &data[..4] != b"\x7fELF" {
        return out;
    }
    let is64 = match data[4] {
        1 => false,
        2 => true,
        _ => return out,
    };
    let be = match data[5] {
        1 => false,
        2 => true,
        _ => return out,
    };
    let e = Elf { d: data, is64, be };
    let (phoff, shoff, phentsize, phnum, shentsize, shnum, shstrndx) = if is64 {
        (
            e.u64(0x20),
            e.u64(0x28),
            e.u16(0x36),
            e.u16(0x38),
            e.u16(0x3a),
            e.u16(0x3c),
            e.u16(0x3e),
        )
    } else {
        (
            e.u32(0x1c),
            e.u32(0x20),
            e.u16(0x2a),
            e.u16(0x2c),
            e.u16(0x2e),
            e.u16(0x30),
            e.u16(0x32),
        )
    };
    // Program headers: PT_NOTE (4).
    if let (Some(phoff), Some(phentsize), Some(phnum)) = (phoff, phentsize, phnum) {
        for i in 0..phnum {
            let Some(h) = phoff
                .checked_add(i * phentsize)
                .and_then(|h| usize::try_from(h).ok())
            else {
                break;
            };
            if e.u32(h) != Some(4) {
                continue;
            }
            let (off, size, align) = if is64 {
                (e.u64(h + 8), e.u64(h + 32), e.u64(h + 48))
            } else {
                (e.u32(h + 4), e.u32(h + 16), e.u32(h + 28))
            };
            if let (Some(off), Some(size)) = (off, size) {
                e.notes(off, size, align.unwrap_or(4), &mut out);
            }
        }
    }
    // Section headers: SHT_NOTE (7), or a section named .note.ABI-tag of any type.
    if let (Some(shoff), Some(shentsize), Some(shnum)) = (shoff, shentsize, shnum) {
        let sh = |i: u64| {
            shoff
                .checked_add(i * shentsize)
                .and_then(|h| usize::try_from(h).ok())
        };
        let (off_at, size_at, align_at) = if is64 { (24, 32, 48) } else { (16, 20, 32) };
        let strtab = shstrndx
            .and_then(sh)
            .and_then(|h| Some((e.word(h + off_at)?, e.word(h + size_at)?)));
        let name_of = |h: usize| -> Option<&[u8]> {
            let (so, ss) = strtab?;
            let n = e.u32(h)?;
            if n >= ss {
                return None;
            }
            let start = usize::try_from(so.checked_add(n)?).ok()?;
            let rest = data.get(start..)?;
            let len = rest.iter().position(|b| *b == 0)?;
            Some(&rest[..len])
        };
        for i in 0..shnum {
            let Some(h) = sh(i) else { break };
            let ty = e.u32(h + 4);
            if ty != Some(7) && name_of(h) != Some(b".note.ABI-tag".as_slice()) {
                continue;
            }
            if ty == Some(8) {
                continue; // SHT_NOBITS: nothing in the file
            }
            if let (Some(off), Some(size)) = (e.word(h + off_at), e.word(h + size_at)) {
                e.notes(off, size, e.word(h + align_at).unwrap_or(4), &mut out);
            }
        }
    }
    let mut seen = Vec::new();
    out.retain(|n| {
        if seen.contains(n) {
            false
        } else {
            seen.push(*n);
            true
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF with one PT_NOTE segment holding an ABI tag, of either class and order.
    fn elf(is64: bool, be: bool, version: (u32, u32, u32)) -> Vec<u8> {
        let w16 = |v: u16| if be { v.to_be_bytes() } else { v.to_le_bytes() };
        let w32 = |v: u32| if be { v.to_be_bytes() } else { v.to_le_bytes() };
        let w64 = |v: u64| if be { v.to_be_bytes() } else { v.to_le_bytes() };
        let (ehsize, phentsize) = if is64 { (64usize, 56usize) } else { (52, 32) };
        let note_off = ehsize + phentsize;
        let mut note = Vec::new();
        note.extend(w32(4));
        note.extend(w32(16));
        note.extend(w32(1));
        note.extend(b"GNU\0");
        for v in [0, version.0, version.1, version.2] {
            note.extend(w32(v));
        }
        let mut d = vec![
            0x7f,
            b'E',
            b'L',
            b'F',
            if is64 { 2 } else { 1 },
            if be { 2 } else { 1 },
            1,
        ];
        d.resize(16, 0);
        d.extend(w16(2)); // e_type EXEC
        d.extend(w16(if is64 { 62 } else { 20 }));
        d.extend(w32(1));
        if is64 {
            d.extend(w64(0)); // entry
            d.extend(w64(ehsize as u64)); // phoff
            d.extend(w64(0)); // shoff
        } else {
            d.extend(w32(0));
            d.extend(w32(ehsize as u32));
            d.extend(w32(0));
        }
        d.extend(w32(0)); // flags
        d.extend(w16(ehsize as u16));
        d.extend(w16(phentsize as u16));
        d.extend(w16(1)); // phnum
        d.extend(w16(0));
        d.extend(w16(0));
        d.extend(w16(0));
        assert_eq!(d.len(), ehsize);
        if is64 {
            d.extend(w32(4));
            d.extend(w32(4)); // flags
            d.extend(w64(note_off as u64));
            d.extend(w64(0));
            d.extend(w64(0));
            d.extend(w64(note.len() as u64));
            d.extend(w64(note.len() as u64));
            d.extend(w64(4));
        } else {
            d.extend(w32(4));
            d.extend(w32(note_off as u32));
            d.extend(w32(0));
            d.extend(w32(0));
            d.extend(w32(note.len() as u32));
            d.extend(w32(note.len() as u32));
            d.extend(w32(4));
            d.extend(w32(4));
        }
        assert_eq!(d.len(), note_off);
        d.extend(note);
        d
    }

    #[test]
    fn all_classes_and_orders() {
        for is64 in [false, true] {
            for be in [false, true] {
                let d = elf(is64, be, (3, 2, 1));
                assert_eq!(elf_abi_tags(&d), [(0, (3, 2, 1))], "is64={is64} be={be}");
            }
        }
    }

    #[test]
    fn garbage_is_not_an_error() {
        assert!(elf_abi_tags(b"\x7fELF").is_empty());
        assert!(elf_abi_tags(b"#!/bin/sh\n").is_empty());
        let mut d = elf(true, false, (1, 2, 3));
        d.truncate(d.len() - 8);
        assert!(elf_abi_tags(&d).is_empty());
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_kernel("6.1.0-13-amd64"), Some((6, 1, 0)));
        assert_eq!(parse_kernel("5.15"), Some((5, 15, 0)));
        assert_eq!(parse_kernel("6.6.30-gentoo-dist"), Some((6, 6, 30)));
        assert_eq!(parse_kernel("4.19.0+"), Some((4, 19, 0)));
        assert_eq!(parse_kernel("unknown"), None);
        assert!(kernel_too_old((9, 0, 0), "6.1.0-13-amd64"));
        assert!(!kernel_too_old((3, 2, 0), "6.1.0-13-amd64"));
        assert!(!kernel_too_old((6, 1, 0), "6.1.0"));
        assert!(kernel_too_old((6, 1, 1), "6.1"));
        assert!(!kernel_too_old((9, 0, 0), "weird"));
    }

    #[test]
    fn xpak_trailer() {
        let mut d = b"TARBALL".to_vec();
        let xpak = b"XPAKPACK\0\0\0\0\0\0\0\0XPAKSTOP";
        d.extend(xpak);
        d.extend((xpak.len() as u32).to_be_bytes());
        d.extend(b"STOP");
        assert_eq!(xpak_tar_len(&d), Some(7));
        assert_eq!(xpak_tar_len(b"no trailer here at all"), None);
    }
}
