//! Ogg pages written directly (RFC 3533): lacing, the page header and its CRC, for the Ogg
//! Opus writer. The `ogg` crate's writer copied every packet into its own queue and built
//! each page byte by byte; at a relay's ingest rate that was a tenth of the relay's CPU.
//! Reading stays with the `ogg` crate.
//!
//! A page here never splits a packet: one that would take the page past 255 lacing values
//! starts a new page, and a packet longer than one page can hold (65,024 bytes, far beyond
//! any Opus packet) is refused.

use std::io::Write;

/// Lacing values a page can hold.
const MAX_SEGMENTS: usize = 255;
/// The longest packet one page can hold: 254 lacing values of 255 and a last one below it.
pub(super) const MAX_PACKET: usize = 255 * 255 - 1;
const BEGIN: u8 = 0x02;
const END: u8 = 0x04;

/// The CRC-32 of Ogg: polynomial 0x04c11db7, not reflected, initial value and final XOR 0
/// (the `crc` crate's slice-by-16 tables: a byte-at-a-time table was 6% of the relay's CPU
/// under durable ingest).
const OGG_CRC: crc::Crc<u32, crc::Table<16>> =
    crc::Crc::<u32, crc::Table<16>>::new(&crc::Algorithm {
        width: 32,
        poly: 0x04c1_1db7,
        init: 0,
        refin: false,
        refout: false,
        xorout: 0,
        check: 0x89a1_897f,
        residue: 0,
    });

fn crc(bytes: &[u8]) -> u32 {
    OGG_CRC.checksum(bytes)
}

/// Writes the pages of one logical stream to `out`.
pub(super) struct PageWriter<W: Write> {
    out: W,
    serial: u32,
    /// Sequence number of the next page.
    seq: u32,
    /// The page being filled: its lacing values and its packets' bytes.
    lacing: Vec<u8>,
    body: Vec<u8>,
    /// Granule position of the last packet put on the page.
    granule: u64,
    /// Scratch for a whole page, reused.
    page: Vec<u8>,
}

impl<W: Write> PageWriter<W> {
    pub(super) fn new(out: W, serial: u32) -> Self {
        PageWriter {
            out,
            serial,
            seq: 0,
            lacing: Vec::with_capacity(MAX_SEGMENTS),
            body: Vec::new(),
            granule: 0,
            page: Vec::new(),
        }
    }

    /// Whether a packet of `len` bytes still fits on the page being filled.
    pub(super) fn fits(&self, len: usize) -> bool {
        self.lacing.len() + len / 255 < MAX_SEGMENTS
    }

    /// Whether no packet is on the page being filled.
    pub(super) fn is_empty(&self) -> bool {
        self.lacing.is_empty()
    }

    /// Puts a packet ending at `granule` on the page being filled; the caller checked
    /// [`Self::fits`] (and flushed if not) and that it is at most [`MAX_PACKET`] bytes.
    pub(super) fn add(&mut self, packet: &[u8], granule: u64) {
        let full = packet.len() / 255;
        self.lacing.extend(std::iter::repeat_n(255u8, full));
        self.lacing.push((packet.len() % 255) as u8);
        self.body.extend_from_slice(packet);
        self.granule = granule;
    }

    /// Writes the page being filled (the first one flagged as the stream's beginning; `last`
    /// flags the end) and starts an empty one.
    pub(super) fn flush(&mut self, last: bool) -> std::io::Result<()> {
        let mut flags = 0;
        if self.seq == 0 {
            flags |= BEGIN;
        }
        if last {
            flags |= END;
        }
        let page = &mut self.page;
        page.clear();
        page.extend_from_slice(b"OggS");
        page.push(0);
        page.push(flags);
        page.extend_from_slice(&self.granule.to_le_bytes());
        page.extend_from_slice(&self.serial.to_le_bytes());
        page.extend_from_slice(&self.seq.to_le_bytes());
        page.extend_from_slice(&[0; 4]);
        page.push(self.lacing.len() as u8);
        page.extend_from_slice(&self.lacing);
        page.extend_from_slice(&self.body);
        let sum = crc(page);
        page[22..26].copy_from_slice(&sum.to_le_bytes());
        self.out.write_all(page)?;
        self.seq = self.seq.wrapping_add(1);
        self.lacing.clear();
        self.body.clear();
        Ok(())
    }

    pub(super) fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crc_is_oggs() {
        // A page the `ogg` crate wrote, its CRC field zeroed, against the CRC it wrote there.
        let mut w = ::ogg::PacketWriter::new(Vec::new());
        w.write_packet(
            b"OpusHead\x01\x01\x38\x01\x80\xbb\0\0\0\0\0".to_vec(),
            7,
            ::ogg::PacketWriteEndInfo::EndPage,
            0,
        )
        .unwrap();
        let mut page = w.into_inner();
        let want = u32::from_le_bytes(page[22..26].try_into().unwrap());
        page[22..26].fill(0);
        assert_eq!(crc(&page), want);
    }

    #[test]
    fn lacing_marks_a_multiple_of_255_with_a_zero() {
        let mut w = PageWriter::new(Vec::new(), 1);
        assert!(w.fits(MAX_PACKET));
        w.add(&[7; 510], 10);
        assert_eq!(w.lacing, [255, 255, 0]);
        assert!(w.fits(252 * 255 - 1) && !w.fits(252 * 255));
    }
}
