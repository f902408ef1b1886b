//! Turns Debian's compressed kernel (`vmlinuz`, a bzImage with an LZ4 payload) into the
//! uncompressed ELF `vmlinux` that QEMU boots through PVH, and checks the result really is a
//! complete x86-64 ELF with a PVH entry note. It does not download or cache anything.

use std::ffi::OsStr;
use std::fs;
use std::ops::Range;
use std::path::Path;

use super::ImageError;
use crate::cmd;

/// Magic number of an LZ4 legacy frame, as the kernel's build writes it.
pub const LZ4_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];

/// Where the LZ4 stream sits inside a bzImage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lz4Payload {
    /// Byte range of the LZ4 stream.
    pub range: Range<usize>,
    /// The uncompressed size the kernel build appended after the stream, when the setup
    /// header told us where the payload ends.
    pub expected_size: Option<u32>,
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|s| u16::from_le_bytes([s[0], s[1]]))
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8).map(|s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_le_bytes(a)
    })
}

/// Finds the LZ4 payload of a bzImage. The setup header's `payload_offset`/`payload_length`
/// give the exact stream (its last 4 bytes are the uncompressed size) when they point at the
/// LZ4 magic; otherwise the first occurrence of the magic up to the end of the file is used.
pub fn find_lz4_payload(bz: &[u8]) -> Option<Lz4Payload> {
    if let Some(p) = payload_from_header(bz) {
        return Some(p);
    }
    let start = bz.windows(4).position(|w| w == LZ4_MAGIC)?;
    Some(Lz4Payload {
        range: start..bz.len(),
        expected_size: None,
    })
}

fn payload_from_header(bz: &[u8]) -> Option<Lz4Payload> {
    // "HdrS" at 0x202 marks a boot-protocol header; payload fields exist from 2.08 on.
    if bz.get(0x202..0x206)? != b"HdrS" || le_u16(bz, 0x206)? < 0x0208 {
        return None;
    }
    let setup_sects = match *bz.get(0x1f1)? {
        0 => 4,
        n => n as usize,
    };
    let offset = le_u32(bz, 0x248)? as usize;
    let length = le_u32(bz, 0x24c)? as usize;
    let start = (setup_sects + 1) * 512 + offset;
    let end = start.checked_add(length)?;
    if length <= 8 || end > bz.len() || bz.get(start..start + 4)? != LZ4_MAGIC {
        return None;
    }
    Some(Lz4Payload {
        range: start..end - 4,
        expected_size: le_u32(bz, end - 4),
    })
}

/// Checks that `elf` is a complete 64-bit x86-64 ELF executable whose segments all lie inside
/// the file and that carries the Xen PVH entry note (needed to boot with `-kernel` PVH).
pub fn check_vmlinux(elf: &[u8]) -> Result<(), String> {
    if elf.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err("no ELF magic".into());
    }
    if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err("not a 64-bit little-endian ELF".into());
    }
    if le_u16(elf, 18) != Some(0x3e) {
        return Err("not an x86-64 ELF".into());
    }
    let phoff = le_u64(elf, 32).ok_or("truncated ELF header")? as usize;
    let phentsize = le_u16(elf, 54).ok_or("truncated ELF header")? as usize;
    let phnum = le_u16(elf, 56).ok_or("truncated ELF header")? as usize;
    if phnum == 0 || phentsize < 56 {
        return Err("no program headers".into());
    }
    let mut pvh = false;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let p_type = le_u32(elf, ph).ok_or("program headers past the end")?;
        let off = le_u64(elf, ph + 8).ok_or("program headers past the end")? as usize;
        let filesz = le_u64(elf, ph + 32).ok_or("program headers past the end")? as usize;
        let end = off.checked_add(filesz).ok_or("segment size overflows")?;
        if end > elf.len() {
            return Err(format!(
                "segment {i} ends at {end}, past the end of the file ({} bytes): truncated",
                elf.len()
            ));
        }
        if p_type == 4 && has_pvh_note(&elf[off..end]) {
            pvh = true;
        }
    }
    if !pvh {
        return Err("no Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)".into());
    }
    Ok(())
}

/// True when the note segment holds a `Xen` note of type 18 (PHYS32_ENTRY).
fn has_pvh_note(notes: &[u8]) -> bool {
    let align4 = |n: usize| (n + 3) & !3;
    let mut at = 0;
    while at + 12 <= notes.len() {
        let (Some(namesz), Some(descsz), Some(ty)) = (
            le_u32(notes, at),
            le_u32(notes, at + 4),
            le_u32(notes, at + 8),
        ) else {
            return false;
        };
        let name_start = at + 12;
        let name_end = name_start + namesz as usize;
        if name_end > notes.len() {
            return false;
        }
        if ty == 18 && notes[name_start..name_end].starts_with(b"Xen") {
            return true;
        }
        at = align4(name_end) + align4(descsz as usize);
    }
    false
}

/// Extracts `vmlinux` from the bzImage at `vmlinuz` into `out`, using `work` for the
/// intermediate LZ4 stream.
pub fn extract_vmlinux(vmlinuz: &Path, out: &Path, work: &Path) -> Result<(), ImageError> {
    let bz = fs::read(vmlinuz).map_err(|e| ImageError::io("read", vmlinuz, e))?;
    let payload = find_lz4_payload(&bz).ok_or_else(|| {
        ImageError::Kernel(format!(
            "{} holds no LZ4 payload (magic 02 21 4c 18)",
            vmlinuz.display()
        ))
    })?;
    let stream = work.join("vmlinux.lz4");
    fs::write(&stream, &bz[payload.range.clone()])
        .map_err(|e| ImageError::io("write", &stream, e))?;
    drop(bz);
    let args = [
        OsStr::new("-d"),
        OsStr::new("-f"),
        OsStr::new("-q"),
        stream.as_os_str(),
        out.as_os_str(),
    ];
    let run = cmd::run("lz4", args);
    let _ = fs::remove_file(&stream);
    let elf = fs::read(out).map_err(|e| ImageError::io("read", out, e));
    match (run, payload.expected_size) {
        (Ok(_), _) => {}
        // Without the exact range the stream runs to the end of the bzImage and lz4 reports
        // the trailing bytes; the ELF check below decides whether the output is whole.
        (Err(cmd::CmdError::Failed { stderr, .. }), None) if stderr.contains("followed by") => {}
        (Err(e), _) => return Err(ImageError::command(e)),
    }
    let elf = elf?;
    if let Some(size) = payload.expected_size {
        if elf.len() != size as usize {
            return Err(ImageError::Kernel(format!(
                "decompressed kernel is {} bytes, the bzImage says {size}",
                elf.len()
            )));
        }
    }
    check_vmlinux(&elf).map_err(|why| ImageError::Kernel(format!("extracted vmlinux: {why}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal bzImage: a setup header (2.08+) whose payload fields point at `payload`.
    fn bzimage(payload: &[u8], uncompressed: u32, header: bool) -> Vec<u8> {
        let mut b = vec![0u8; 5 * 512];
        b[0x1f1] = 4;
        if header {
            b[0x202..0x206].copy_from_slice(b"HdrS");
            b[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        }
        b.extend_from_slice(b"decompressor code");
        let offset = (b.len() - 5 * 512) as u32;
        b.extend_from_slice(payload);
        b.extend_from_slice(&uncompressed.to_le_bytes());
        let length = payload.len() as u32 + 4;
        b[0x248..0x24c].copy_from_slice(&offset.to_le_bytes());
        b[0x24c..0x250].copy_from_slice(&length.to_le_bytes());
        b.extend_from_slice(b"trailing setup data");
        b
    }

    #[test]
    fn payload_from_the_setup_header_is_exact() {
        let mut payload = LZ4_MAGIC.to_vec();
        payload.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
        let b = bzimage(&payload, 123_456, true);
        let p = find_lz4_payload(&b).unwrap();
        assert_eq!(&b[p.range.clone()], payload.as_slice());
        assert_eq!(p.expected_size, Some(123_456));
    }

    #[test]
    fn without_a_header_the_first_magic_is_used() {
        let mut payload = LZ4_MAGIC.to_vec();
        payload.extend_from_slice(&[9; 10]);
        let b = bzimage(&payload, 1, false);
        let p = find_lz4_payload(&b).unwrap();
        assert_eq!(p.range.start, 5 * 512 + "decompressor code".len());
        assert_eq!(p.range.end, b.len());
        assert_eq!(p.expected_size, None);
    }

    #[test]
    fn no_magic_no_payload() {
        assert_eq!(find_lz4_payload(b"\x02\x21\x4c no magic here"), None);
        assert_eq!(find_lz4_payload(&[]), None);
    }

    /// A 64-bit x86-64 ELF with one PT_NOTE segment holding `note`.
    fn elf_with_note(note_type: u32, truncate: usize) -> Vec<u8> {
        let mut e = vec![0u8; 64 + 56];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2;
        e[5] = 1;
        e[18..20].copy_from_slice(&0x3eu16.to_le_bytes());
        e[32..40].copy_from_slice(&64u64.to_le_bytes());
        e[54..56].copy_from_slice(&56u16.to_le_bytes());
        e[56..58].copy_from_slice(&1u16.to_le_bytes());
        let mut note = Vec::new();
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&8u32.to_le_bytes());
        note.extend_from_slice(&note_type.to_le_bytes());
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&0x0100_0000u64.to_le_bytes());
        let ph = 64;
        e[ph..ph + 4].copy_from_slice(&4u32.to_le_bytes());
        e[ph + 8..ph + 16].copy_from_slice(&((64 + 56) as u64).to_le_bytes());
        e[ph + 32..ph + 40].copy_from_slice(&(note.len() as u64).to_le_bytes());
        e.extend_from_slice(&note);
        e.truncate(e.len() - truncate);
        e
    }

    #[test]
    fn vmlinux_check_accepts_a_pvh_elf_and_rejects_the_rest() {
        assert_eq!(check_vmlinux(&elf_with_note(18, 0)), Ok(()));
        assert!(check_vmlinux(&elf_with_note(5, 0))
            .unwrap_err()
            .contains("PVH"));
        assert!(check_vmlinux(&elf_with_note(18, 3))
            .unwrap_err()
            .contains("truncated"));
        assert!(check_vmlinux(b"MZ not an elf").is_err());
    }
}
