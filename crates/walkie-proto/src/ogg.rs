//! Ogg Opus files (RFC 7845): writing clips as standard `.opus` files and reading them back, with caps.
//!
//! Layout written: page 1 holds `OpusHead` (version 1, mono, pre-skip, input rate 48000 since the
//! packets always encode 48 kHz audio, gain 0, mapping family 0); page 2 holds `OpusTags`
//! (vendor `walkie <version>`, comments `ENCODER=walkie <version>` and `WALKIE_BITRATE=<b/s>`);
//! audio pages follow, flushed about every second of audio or 4 KiB. A page's granule position
//! counts every sample decoded up to its last completed packet, pre-skip included; the last
//! page has the end-of-stream flag and granule `pre_skip + samples` (end trimming).
//!
//! Reading accepts mono and refuses stereo (walkie decodes mono only), needs both headers and an
//! end-of-stream page, and caps the file size, packet length and total duration.

use std::io::{Cursor, Read, Write};
use std::path::Path;

use ::ogg::{OggReadError, PacketReader, PageParsingOptions};

use self::pages::PageWriter;

use crate::clip::{CodecParams, MAX_SAMPLES};
use crate::toc::{MAX_PACKET_SAMPLES, TocError, packet_samples};

mod pages;

/// Errors reading or writing Ogg Opus.
#[derive(Debug, thiserror::Error)]
pub enum OggError {
    /// An audio packet is not valid Opus (see [`crate::toc`]).
    #[error("invalid Opus packet: {0}")]
    Packet(#[from] TocError),
    /// Ogg data is not Ogg Opus at all (wrong magic, other codec, missing header).
    #[error("not an Ogg Opus file: {0}")]
    NotOpus(String),
    /// Ogg Opus data is corrupt or truncated.
    #[error("corrupt Ogg Opus file: {0}")]
    Corrupt(String),
    /// Ogg Opus data is valid but uses a feature walkie does not support.
    #[error("unsupported Ogg Opus file: {0}")]
    Unsupported(String),
    /// A clip or file exceeds one of walkie's size or duration caps.
    #[error("too large: {0}")]
    TooLarge(String),
    /// A clip's sample count does not fit its packets.
    #[error("inconsistent clip: {0}")]
    Inconsistent(String),
    /// A file could not be read or written.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// "read" or "write".
        action: &'static str,
        /// The file path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An error in the Ogg Opus file at `path`.
    #[error("{path}: {source}")]
    InFile {
        /// The file path.
        path: String,
        /// The error found in it.
        #[source]
        source: Box<OggError>,
    },
}

/// Largest Ogg Opus file walkie reads.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Most samples the packets of a file may decode to: the duration cap plus pre-skip and padding.
const MAX_DECODED: u64 = MAX_SAMPLES + u16::MAX as u64 + MAX_PACKET_SAMPLES as u64;
/// Audio per page before it is flushed (1 s at 48 kHz).
const PAGE_SAMPLES: u64 = 48_000;
/// Packet bytes per page before it is flushed.
const PAGE_BYTES: usize = 4_096;
/// The comment carrying the encoder's target bitrate.
const BITRATE_TAG: &str = "WALKIE_BITRATE=";

/// An Ogg Opus file as read: its codec parameters and packets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OggOpus {
    /// `frame_samples` from the first audio packet, `bitrate` from a `WALKIE_BITRATE` tag (0 if
    /// absent), `pre_skip` from `OpusHead`.
    pub params: CodecParams,
    /// The original input rate recorded in `OpusHead` (informational; audio is always 48 kHz).
    pub input_sample_rate: u32,
    /// The audio packets, in order.
    pub packets: Vec<Vec<u8>>,
    /// Decoded length after pre-skip and end trimming: final granule minus pre-skip.
    pub samples: u64,
}

/// Writes Ogg Opus to any `Write` as packets arrive; [`OggOpusWriter::finish`] ends the stream.
/// Each packet is copied once, onto its page (the newest into a buffer reused for every
/// packet, as it waits to learn whether it is the last).
pub struct OggOpusWriter<W: Write> {
    inner: PageWriter<W>,
    pre_skip: u64,
    /// The newest packet, held back until we know if it is the last ...
    held: Vec<u8>,
    /// ... and the granule at its end (`None` before the first packet).
    held_end: Option<u64>,
    /// Granule at the start of the held packet (end of everything written before it).
    written: u64,
    page_samples: u64,
    page_bytes: usize,
}

impl<W: Write> OggOpusWriter<W> {
    /// Starts a stream: writes the `OpusHead` and `OpusTags` pages.
    pub fn new(
        out: W,
        params: &CodecParams,
        serial: u32,
        input_sample_rate: u32,
    ) -> Result<Self, OggError> {
        let mut inner = PageWriter::new(out, serial);
        let mut head = Vec::with_capacity(19);
        head.extend_from_slice(b"OpusHead");
        head.extend_from_slice(&[1, 1]);
        head.extend_from_slice(&params.pre_skip.to_le_bytes());
        head.extend_from_slice(&input_sample_rate.to_le_bytes());
        head.extend_from_slice(&[0, 0, 0]);
        let vendor = format!("walkie {}", env!("CARGO_PKG_VERSION"));
        let comments = [
            format!("ENCODER={vendor}"),
            format!("{BITRATE_TAG}{}", params.bitrate),
        ];
        let mut tags = b"OpusTags".to_vec();
        put_field(&mut tags, &vendor);
        tags.extend_from_slice(&(comments.len() as u32).to_le_bytes());
        for c in &comments {
            put_field(&mut tags, c);
        }
        for packet in [head, tags] {
            if packet.len() > pages::MAX_PACKET {
                return Err(OggError::TooLarge(format!(
                    "an Ogg Opus header of {} bytes",
                    packet.len()
                )));
            }
            inner.add(&packet, 0);
            inner.flush(false).map_err(write_err)?;
        }
        let pre_skip = u64::from(params.pre_skip);
        Ok(Self {
            inner,
            pre_skip,
            held: Vec::new(),
            held_end: None,
            written: 0,
            page_samples: 0,
            page_bytes: 0,
        })
    }

    /// Adds the next audio packet (checked with [`packet_samples`]).
    pub fn write_packet(&mut self, packet: &[u8]) -> Result<(), OggError> {
        let n = packet_samples(packet)?;
        self.write_counted(packet, n)
    }

    /// [`Self::write_packet`] for a packet whose samples `n` the caller has just counted
    /// with [`packet_samples`] (the relay's assembler: a packet's TOC is read once).
    pub(crate) fn write_counted(&mut self, packet: &[u8], n: u32) -> Result<(), OggError> {
        if packet.len() > pages::MAX_PACKET {
            return Err(OggError::TooLarge(format!(
                "an audio packet of {} bytes (at most {} fit an Ogg page)",
                packet.len(),
                pages::MAX_PACKET
            )));
        }
        let end = self.held_end.unwrap_or(0) + u64::from(n);
        if end > MAX_DECODED {
            return Err(OggError::TooLarge(
                "the packets exceed the 10-minute clip limit".into(),
            ));
        }
        if let Some(granule) = self.held_end.replace(end) {
            let prev = self.held.len();
            if !self.inner.fits(prev) {
                // A full page ends early: packets are never split across pages.
                self.inner.flush(false).map_err(write_err)?;
                (self.page_samples, self.page_bytes) = (0, 0);
            }
            self.page_samples += granule - self.written;
            self.page_bytes += prev;
            self.inner.add(&self.held, granule);
            self.written = granule;
            if self.page_samples >= PAGE_SAMPLES || self.page_bytes >= PAGE_BYTES {
                self.inner.flush(false).map_err(write_err)?;
                (self.page_samples, self.page_bytes) = (0, 0);
            }
        }
        self.held.clear();
        self.held.extend_from_slice(packet);
        Ok(())
    }

    /// Ends the stream: the last packet goes on a page flagged end-of-stream with granule
    /// `pre_skip + samples`, which must fall within the last packet. Returns the writer.
    pub fn finish(mut self, samples: u64) -> Result<W, OggError> {
        let Some(end) = self.held_end else {
            return Err(OggError::Inconsistent(
                "an Ogg Opus stream needs at least one audio packet".into(),
            ));
        };
        if samples > MAX_SAMPLES {
            return Err(OggError::TooLarge(format!(
                "{samples} samples is longer than the 10-minute limit"
            )));
        }
        let granule = self.pre_skip + samples;
        if granule < self.written || granule > end {
            return Err(OggError::Inconsistent(format!(
                "{samples} samples after a pre-skip of {} do not end within the last packet (samples {}..={end})",
                self.pre_skip, self.written
            )));
        }
        if !self.inner.fits(self.held.len()) && !self.inner.is_empty() {
            self.inner.flush(false).map_err(write_err)?;
        }
        self.inner.add(&self.held, granule);
        self.inner.flush(true).map_err(write_err)?;
        let mut out = self.inner.into_inner();
        out.flush().map_err(write_err)?;
        Ok(out)
    }
}

/// Writes a whole clip as an Ogg Opus file in memory (input rate recorded as 48000).
pub fn write_ogg(
    params: &CodecParams,
    packets: &[Vec<u8>],
    samples: u64,
    serial: u32,
) -> Result<Vec<u8>, OggError> {
    let bytes: usize = packets.iter().map(Vec::len).sum();
    let mut w = OggOpusWriter::new(
        Vec::with_capacity(bytes + bytes / 8 + 256),
        params,
        serial,
        48_000,
    )?;
    for p in packets {
        w.write_packet(p.as_slice())?;
    }
    w.finish(samples)
}

/// Reads and validates an Ogg Opus file held in memory.
pub fn read_ogg(bytes: &[u8]) -> Result<OggOpus, OggError> {
    read_with(bytes, PageParsingOptions::default())
}

/// [`read_ogg`] with explicit page parsing options (tests turn CRC checks off to reach deeper).
fn read_with(bytes: &[u8], opts: PageParsingOptions) -> Result<OggOpus, OggError> {
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(OggError::TooLarge(format!(
            "{} bytes is over the {MAX_FILE_BYTES}-byte limit",
            bytes.len()
        )));
    }
    let mut rdr = PacketReader::new_with_page_parse_opts(Cursor::new(bytes), opts);
    let not_opus = |what: &str| OggError::NotOpus(what.to_string());
    let head = next(&mut rdr)?.ok_or_else(|| not_opus("no Ogg pages found"))?;
    let serial = head.stream_serial();
    let (pre_skip, input_sample_rate) = parse_head(&head.data)?;
    let tags = next(&mut rdr)?.ok_or_else(|| not_opus("missing OpusTags"))?;
    if tags.stream_serial() != serial || !tags.data.starts_with(b"OpusTags") {
        return Err(not_opus("missing OpusTags"));
    }
    let bitrate = parse_tags(&tags.data)?;
    let (mut packets, mut decoded, mut end) =
        (Vec::new(), 0u64, tags.last_in_stream().then_some(0));
    while let Some(p) = next(&mut rdr)? {
        if p.stream_serial() != serial || end.is_some() {
            return Err(OggError::Unsupported(
                "chained or multiplexed Ogg streams are not supported".into(),
            ));
        }
        let n = packet_samples(&p.data)
            .map_err(|e| OggError::Corrupt(format!("audio packet {}: {e}", packets.len() + 1)))?;
        decoded += u64::from(n);
        if decoded > MAX_DECODED {
            return Err(OggError::TooLarge(
                "the audio is longer than the 10-minute limit".into(),
            ));
        }
        if p.last_in_stream() {
            end = Some(p.absgp_page());
        }
        packets.push(p.data);
    }
    let granule = end
        .ok_or_else(|| OggError::Corrupt("no end-of-stream page: the file is truncated".into()))?;
    let first = packets
        .first()
        .ok_or_else(|| OggError::Corrupt("the stream has no audio packets".into()))?;
    if granule < u64::from(pre_skip) || granule > decoded {
        return Err(OggError::Corrupt(format!(
            "final granule position {granule} is outside pre-skip {pre_skip} ..= {decoded} decoded samples"
        )));
    }
    let samples = granule - u64::from(pre_skip);
    if samples > MAX_SAMPLES {
        return Err(OggError::TooLarge(
            "the audio is longer than the 10-minute limit".into(),
        ));
    }
    let params = CodecParams {
        frame_samples: packet_samples(first)?,
        bitrate,
        pre_skip,
    };
    Ok(OggOpus {
        params,
        input_sample_rate,
        packets,
        samples,
    })
}

/// Reads and validates an Ogg Opus file; errors name the path.
pub fn read_ogg_file(path: &Path) -> Result<OggOpus, OggError> {
    let name = path.display().to_string();
    let io = |source| OggError::Io {
        action: "read",
        path: name.clone(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(io)?;
    read_ogg(&bytes).map_err(|e| OggError::InFile {
        path: name.clone(),
        source: Box::new(e),
    })
}

/// The next packet, with Ogg-level errors turned into clear sentences.
fn next(rdr: &mut PacketReader<Cursor<&[u8]>>) -> Result<Option<::ogg::Packet>, OggError> {
    rdr.read_packet().map_err(|e| match e {
        OggReadError::NoCapturePatternFound => OggError::NotOpus("no Ogg page found".into()),
        OggReadError::HashMismatch(..) => {
            OggError::Corrupt("a page checksum does not match".into())
        }
        OggReadError::InvalidStreamStructVer(v) => {
            OggError::Corrupt(format!("unknown Ogg page version {v}"))
        }
        OggReadError::InvalidData => {
            OggError::Corrupt("pages are out of order or inconsistent".into())
        }
        OggReadError::ReadError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            OggError::Corrupt("the file ends in the middle of a page".into())
        }
        OggReadError::ReadError(e) => OggError::Corrupt(format!("reading failed: {e}")),
    })
}

/// Checks `OpusHead`; returns (pre-skip, input sample rate).
fn parse_head(d: &[u8]) -> Result<(u16, u32), OggError> {
    if !d.starts_with(b"OpusHead") {
        return Err(OggError::NotOpus("missing OpusHead".into()));
    }
    if d.len() < 19 {
        return Err(OggError::Corrupt(format!(
            "OpusHead is {} bytes, fewer than 19",
            d.len()
        )));
    }
    // RFC 7845 §5.1: versions 1..=15 are compatible with version 1.
    if !(1..=15).contains(&d[8]) {
        return Err(OggError::Unsupported(format!("OpusHead version {}", d[8])));
    }
    match (d[9], d[18]) {
        (1, 0) => {}
        (2, 0) => {
            return Err(OggError::Unsupported(
                "stereo audio; walkie clips are mono".into(),
            ));
        }
        (0, _) => return Err(OggError::Corrupt("OpusHead declares 0 channels".into())),
        (ch, family) => {
            return Err(OggError::Unsupported(format!(
                "{ch} channels with mapping family {family}"
            )));
        }
    }
    let pre_skip = u16::from_le_bytes([d[10], d[11]]);
    let rate = u32::from_le_bytes([d[12], d[13], d[14], d[15]]);
    Ok((pre_skip, rate))
}

/// Checks the structure of `OpusTags`; returns the `WALKIE_BITRATE` value, or 0.
fn parse_tags(d: &[u8]) -> Result<u32, OggError> {
    let bad = || OggError::Corrupt("OpusTags is malformed".into());
    let mut pos = 8;
    let field = |pos: &mut usize| -> Result<&[u8], OggError> {
        let len_bytes = d.get(*pos..*pos + 4).ok_or_else(bad)?;
        let len =
            u32::from_le_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]) as usize;
        let body = d
            .get(*pos + 4..(*pos + 4).checked_add(len).ok_or_else(bad)?)
            .ok_or_else(bad)?;
        *pos += 4 + len;
        Ok(body)
    };
    field(&mut pos)?;
    let count = d.get(pos..pos + 4).ok_or_else(bad)?;
    let count = u32::from_le_bytes([count[0], count[1], count[2], count[3]]);
    pos += 4;
    let mut bitrate = 0;
    for _ in 0..count {
        let c = field(&mut pos)?;
        if c.len() > BITRATE_TAG.len()
            && c[..BITRATE_TAG.len()].eq_ignore_ascii_case(BITRATE_TAG.as_bytes())
        {
            bitrate = std::str::from_utf8(&c[BITRATE_TAG.len()..])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
        }
    }
    Ok(bitrate)
}

/// Appends a length-prefixed string (the `OpusTags` field layout).
fn put_field(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Turns a write error into a [`OggError`].
fn write_err(source: std::io::Error) -> OggError {
    OggError::Io {
        action: "write",
        path: "Ogg Opus output".into(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::ogg::reading::PageParser;
    use proptest::prelude::*;

    /// A page as the test sees it: header flags, granule, serial, sequence, packet lengths.
    struct Page {
        flags: u8,
        granule: u64,
        serial: u32,
        seq: u32,
        body_len: usize,
        packet_ends: usize,
        /// Header, lacing and body: the page's whole size.
        len: usize,
    }

    /// Splits a file into pages, checking each CRC with the ogg crate's page parser.
    fn pages(mut b: &[u8]) -> Vec<Page> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let header: [u8; 27] = b[..27].try_into().unwrap();
            let (mut parser, nseg) = PageParser::new(header).unwrap();
            let lacing = b[27..27 + nseg].to_vec();
            let body_len = parser.parse_segments(lacing.clone());
            let body = b[27 + nseg..27 + nseg + body_len].to_vec();
            parser
                .parse_packet_data(body)
                .unwrap_or_else(|_| panic!("bad CRC on page {}", out.len()));
            out.push(Page {
                flags: header[5],
                granule: u64::from_le_bytes(header[6..14].try_into().unwrap()),
                serial: u32::from_le_bytes(header[14..18].try_into().unwrap()),
                seq: u32::from_le_bytes(header[18..22].try_into().unwrap()),
                body_len,
                packet_ends: lacing.iter().filter(|&&l| l < 255).count(),
                len: 27 + nseg + body_len,
            });
            b = &b[27 + nseg + body_len..];
        }
        out
    }

    /// A clip of `len` samples with valid framing (see [`crate::testing`]).
    fn clip(len: usize) -> (CodecParams, Vec<Vec<u8>>, u64) {
        let c = crate::testing::synthetic_clip(len as u64);
        (c.params, c.packets, c.samples)
    }

    /// The writer as it was on the `ogg` crate's `PacketWriter`, to compare bytes with.
    fn write_with_ogg_crate(
        params: &CodecParams,
        packets: &[Vec<u8>],
        samples: u64,
        serial: u32,
    ) -> Vec<u8> {
        use ::ogg::{PacketWriteEndInfo as Info, PacketWriter};
        let ours = write_ogg(params, &packets[..1], 1, serial).unwrap();
        let headers = pages(&ours);
        let (head_len, tags_len) = (headers[0].len, headers[1].len);
        let mut w = PacketWriter::new(Vec::new());
        for p in [
            &ours[28..head_len],
            &ours[head_len + 28..head_len + tags_len],
        ] {
            w.write_packet(p.to_vec(), serial, Info::EndPage, 0)
                .unwrap();
        }
        let pre_skip = u64::from(params.pre_skip);
        let (mut end, mut page_samples, mut page_bytes) = (0u64, 0u64, 0usize);
        for (i, p) in packets.iter().enumerate() {
            let start = end;
            end += u64::from(packet_samples(p).unwrap());
            if i + 1 == packets.len() {
                w.write_packet(p.clone(), serial, Info::EndStream, pre_skip + samples)
                    .unwrap();
                break;
            }
            page_samples += end - start;
            page_bytes += p.len();
            let flush = page_samples >= PAGE_SAMPLES || page_bytes >= PAGE_BYTES;
            let info = if flush {
                Info::EndPage
            } else {
                Info::NormalPacket
            };
            w.write_packet(p.clone(), serial, info, end).unwrap();
            if flush {
                (page_samples, page_bytes) = (0, 0);
            }
        }
        w.into_inner()
    }

    #[test]
    fn pages_are_byte_for_byte_what_the_ogg_crate_wrote() {
        for len in [960, 3 * 48_000 + 77, 5 * 48_000 + 500] {
            let (params, packets, samples) = clip(len);
            let samples = samples.min(params.pre_skip as u64 + samples) - params.pre_skip as u64;
            assert_eq!(
                write_ogg(&params, &packets, samples, 9).unwrap(),
                write_with_ogg_crate(&params, &packets, samples, 9),
                "{len} samples"
            );
        }
    }

    #[test]
    fn a_page_full_of_lacing_values_ends_early_and_no_packet_is_split() {
        // 2.5 ms CELT packets (TOC config 16): 400 a second, more than a page's 255 values.
        let packets: Vec<Vec<u8>> = (0..1_000u32).map(|i| vec![0x80, (i % 251) as u8]).collect();
        let params = CodecParams {
            frame_samples: 120,
            bitrate: 6_000,
            pre_skip: 312,
        };
        let samples = 1_000 * 120 - 312 - 50;
        let bytes = write_ogg(&params, &packets, samples, 5).unwrap();
        let pages = pages(&bytes);
        assert!(pages.iter().all(|p| p.body_len <= 255 * 2));
        assert!(pages.iter().any(|p| p.packet_ends == 255), "a full page");
        let got = read_ogg(&bytes).unwrap();
        assert_eq!((got.packets, got.samples), (packets, samples));
        // One packet longer than a page can hold is refused (by Opus's own limits first).
        let mut huge = vec![0x80];
        huge.resize(pages::MAX_PACKET + 1, 0);
        assert!(matches!(
            write_ogg(&params, &[huge], 100, 5),
            Err(OggError::TooLarge(_) | OggError::Packet(_))
        ));
    }

    #[test]
    fn write_then_read_round_trips() {
        let (params, packets, samples) = clip(3 * 48_000 + 77);
        let bytes = write_ogg(&params, &packets, samples, 0xdead_beef).unwrap();
        let got = read_ogg(&bytes).unwrap();
        assert_eq!(got.packets, packets);
        assert_eq!(got.samples, samples);
        assert_eq!(got.params, params);
        assert_eq!(got.input_sample_rate, 48_000);
    }

    #[test]
    fn pages_follow_rfc_7845() {
        let (params, packets, samples) = clip(5 * 48_000 + 500);
        let bytes = write_ogg(&params, &packets, samples, 42).unwrap();
        let pages = pages(&bytes);
        assert!(pages.len() >= 7, "{} pages", pages.len());
        assert_eq!(
            (pages[0].flags, pages[0].granule, pages[0].packet_ends),
            (0x02, 0, 1)
        );
        assert_eq!(
            (pages[1].flags, pages[1].granule, pages[1].packet_ends),
            (0x00, 0, 1)
        );
        let mut decoded = 0u64;
        let mut done = 0usize;
        for (i, p) in pages.iter().enumerate() {
            assert_eq!((p.serial, p.seq), (42, i as u32));
            assert!(
                p.body_len <= PAGE_BYTES + 1_000,
                "page {i} has {} bytes",
                p.body_len
            );
            if i < 2 {
                continue;
            }
            let prev = decoded;
            decoded += packets[done..done + p.packet_ends]
                .iter()
                .map(|q| u64::from(packet_samples(q).unwrap()))
                .sum::<u64>();
            done += p.packet_ends;
            assert!(p.granule > prev || i == 2, "granules must increase");
            if i + 1 < pages.len() {
                assert_eq!(p.flags, 0, "page {i}");
                assert_eq!(p.granule, decoded, "page {i}");
                assert!(decoded - prev <= PAGE_SAMPLES);
            }
        }
        let last = pages.last().unwrap();
        assert_eq!(
            last.flags & 0x04,
            0x04,
            "the last page is flagged end-of-stream"
        );
        assert_eq!(last.granule, u64::from(params.pre_skip) + samples);
        assert!(last.granule <= decoded && decoded - last.granule < 960);
        assert_eq!(done, packets.len());
    }

    #[test]
    fn writer_refuses_inconsistent_clips() {
        let (params, packets, samples) = clip(4_800);
        assert!(write_ogg(&params, &[], 0, 1).is_err());
        assert!(write_ogg(&params, &packets, samples + 2_000, 1).is_err());
        assert!(write_ogg(&params, &packets, 0, 1).is_err());
        assert!(write_ogg(&params, &[vec![]], 0, 1).is_err());
        let mut w = OggOpusWriter::new(Vec::new(), &params, 1, 48_000).unwrap();
        w.write_packet(&packets[0]).unwrap();
        assert!(w.finish(MAX_SAMPLES + 1).is_err());
    }

    /// An Ogg stream with valid pages holding `packets`, one per page, every page at `granule`.
    fn ogg_stream_at(packets: &[&[u8]], granule: u64) -> Vec<u8> {
        let mut w = ::ogg::PacketWriter::new(Vec::new());
        for (i, p) in packets.iter().enumerate() {
            let info = if i + 1 == packets.len() {
                ::ogg::PacketWriteEndInfo::EndStream
            } else {
                ::ogg::PacketWriteEndInfo::EndPage
            };
            w.write_packet(p.to_vec(), 9, info, granule).unwrap();
        }
        w.into_inner()
    }

    fn ogg_stream(packets: &[&[u8]]) -> Vec<u8> {
        ogg_stream_at(packets, 2_000)
    }

    #[test]
    fn corrupt_and_foreign_inputs_are_errors() {
        let (params, packets, samples) = clip(9_600);
        let good = write_ogg(&params, &packets, samples, 3).unwrap();
        for cut in [0, 1, 26, 27, 40, good.len() / 2, good.len() - 1] {
            assert!(read_ogg(&good[..cut]).is_err(), "cut at {cut}");
        }
        let last_page_len = pages(&good).last().map(|p| p.len).unwrap();
        let err = read_ogg(&good[..good.len() - last_page_len]).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x41;
            assert!(read_ogg(&bad).is_err(), "flipped byte {i} went unnoticed");
        }
        let mut seed = 7u32;
        let soup: Vec<u8> = (0..5_000)
            .map(|_| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (seed >> 16) as u8
            })
            .collect();
        assert!(matches!(read_ogg(&soup), Err(OggError::NotOpus(_))));

        let vorbis = ogg_stream(&[
            b"\x01vorbis\0\0\0\0\x01\x44\xac\0\0",
            b"\x03vorbis",
            b"\x05vorbis",
        ]);
        let err = read_ogg(&vorbis).unwrap_err();
        assert!(err.to_string().contains("missing OpusHead"), "{err}");

        let head = &good[28..47];
        assert!(head.starts_with(b"OpusHead"));
        let no_tags = ogg_stream(&[head, &packets[0], &packets[1]]);
        assert!(
            read_ogg(&no_tags)
                .unwrap_err()
                .to_string()
                .contains("missing OpusTags")
        );

        let mut stereo = head.to_vec();
        stereo[9] = 2;
        let tags = b"OpusTags\x01\0\0\0x\0\0\0\0";
        let err = read_ogg(&ogg_stream(&[&stereo, tags, &packets[0]])).unwrap_err();
        assert!(matches!(err, OggError::Unsupported(_)), "{err}");
        let only_headers = ogg_stream(&[head, tags]);
        assert!(read_ogg(&only_headers).is_err());
        let bad_tags = ogg_stream(&[head, b"OpusTags\xff\0\0\0x", &packets[0]]);
        assert!(
            read_ogg(&bad_tags)
                .unwrap_err()
                .to_string()
                .contains("OpusTags")
        );
        // ogg_stream ends on granule 2000: beyond one packet's 960 samples, within three packets' 2880.
        assert!(read_ogg(&ogg_stream(&[head, tags, &packets[0]])).is_err());
        assert!(
            read_ogg(&ogg_stream(&[
                head,
                tags,
                &packets[0],
                &packets[1],
                &packets[2]
            ]))
            .is_ok()
        );
    }

    #[test]
    fn files_are_read_with_their_name_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.opus");
        let (params, packets, samples) = clip(1_000);
        std::fs::write(&path, write_ogg(&params, &packets, samples, 5).unwrap()).unwrap();
        assert_eq!(read_ogg_file(&path).unwrap().samples, 1_000);
        std::fs::write(&path, b"not ogg at all").unwrap();
        let err = read_ogg_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("x.opus") && err.contains("not an Ogg Opus file"),
            "{err}"
        );
        let err = read_ogg_file(&dir.path().join("gone.opus"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("gone.opus"), "{err}");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2_048)) {
            let _ = read_ogg(&bytes);
            let mut ogg = b"OggS\0\x02".to_vec();
            ogg.extend_from_slice(&bytes);
            let _ = read_ogg(&ogg);
            let mut no_crc = PageParsingOptions::default();
            no_crc.verify_checksum = false;
            let _ = read_with(&ogg, no_crc);
        }

        #[test]
        fn arbitrary_packets_in_valid_pages_never_panic(
            packets in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..400), 0..6),
            granule in prop_oneof![any::<u64>(), 0..4_000u64],
            pre_skip in any::<u16>(),
        ) {
            let mut head = b"OpusHead\x01\x01".to_vec();
            head.extend_from_slice(&pre_skip.to_le_bytes());
            head.extend_from_slice(&[0x80, 0xbb, 0, 0, 0, 0, 0]);
            let mut all: Vec<&[u8]> = vec![&head, b"OpusTags\0\0\0\0\0\0\0\0"];
            all.extend(packets.iter().map(Vec::as_slice));
            if let Ok(file) = read_ogg(&ogg_stream_at(&all, granule)) {
                prop_assert!(file.samples <= file.packets.len() as u64 * 5_760);
            }
        }

        #[test]
        fn mutated_files_never_panic(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>()) {
            let (params, packets, samples) = clip(2_000);
            let mut bytes = write_ogg(&params, &packets, samples, 11).unwrap();
            for (at, v) in edits {
                let n = bytes.len();
                bytes[at % n] = v;
            }
            bytes.truncate(cut % (bytes.len() + 1));
            let _ = read_ogg(&bytes);
            let mut no_crc = PageParsingOptions::default();
            no_crc.verify_checksum = false;
            let _ = read_with(&bytes, no_crc);
        }
    }
}
