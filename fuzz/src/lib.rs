//! The bodies of walkie's fuzz targets, shared by the cargo-fuzz binaries in `fuzz_targets/` and
//! by the corpus replay in `tests/fuzz_corpus.rs` (which includes this file with `#[path]`, so
//! it may use only `walkie-proto`, `walkie-media` without default features, `serde` and
//! `std`). Nothing here links libopus, audio devices or the desktop app: the relay's checks
//! of untrusted bytes are pure Rust (`walkie_proto::toc`), and so is the WAV reader.
//!
//! Each function takes untrusted bytes, runs them through one parser of the library and then
//! checks properties the parser promises; a broken promise is a panic, which libFuzzer reports
//! as a crash. Each returns a verdict so that the replay test can hold known-good seeds
//! (`ok-*`) to being accepted and known-bad ones (`bad-*`) to being refused.

use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;
use walkie_media::audio::{self, resample, wav};
use walkie_proto::assemble::{ClipAssembler, check_header, ogg_serial};
use walkie_proto::clip::{ClipHeader, ClipId, CodecParams, MAX_SAMPLES, Target};
use walkie_proto::live::{DATAGRAM_WINDOW, LiveForward};
use walkie_proto::ogg;
use walkie_proto::toc::packet_samples;
use walkie_proto::wire::{
    self as proto, ClientMsg, ErrorCode, FrameError, LiveBody, LiveDatagram, MAX_CONTROL_FRAME,
    MAX_STREAM_FRAME, ServerMsg, StreamFrame,
};

/// Whether a parser accepted an input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Parsed (and, for streams, nothing was left over).
    Accepted,
    /// Refused with an error.
    Refused,
    /// Needs more bytes (a frame stream that stops inside a frame).
    Incomplete,
    /// The fuzz input is too short to build the parser's arguments from (clip ingest only).
    Short,
}

// ---------------------------------------------------------------------------------------------
// wire_frames
// ---------------------------------------------------------------------------------------------

/// How a byte stream decodes as a sequence of frames of one message type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamReport {
    /// Complete frames decoded before the stream stopped.
    pub frames: usize,
    /// How it stopped: `Accepted` (every byte used), `Incomplete` or `Refused`.
    pub verdict: Verdict,
}

/// The input decoded as control frames from a client, from the relay, and as clip/file stream frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireReport {
    /// As [`ClientMsg`] frames capped at [`MAX_CONTROL_FRAME`].
    pub client: StreamReport,
    /// As [`ServerMsg`] frames capped at [`MAX_CONTROL_FRAME`].
    pub server: StreamReport,
    /// As [`StreamFrame`]s capped at [`MAX_STREAM_FRAME`].
    pub stream: StreamReport,
}

/// Fuzz target `wire_frames`: the bytes as a stream of frames of each message type, decoded
/// whole and fed in pieces split at input-dependent points.
pub fn wire_frames(data: &[u8]) -> WireReport {
    let client = frames::<ClientMsg>(data, MAX_CONTROL_FRAME);
    let server = frames::<ServerMsg>(data, MAX_CONTROL_FRAME);
    let stream = frames::<StreamFrame>(data, MAX_STREAM_FRAME);
    // A stream frame within the stream cap decodes the same under the larger control cap.
    let first_small = proto::decode_frame::<StreamFrame>(data, MAX_STREAM_FRAME);
    if let Ok(Some(small)) = first_small {
        let big = proto::decode_frame::<StreamFrame>(data, MAX_CONTROL_FRAME);
        assert_eq!(
            big,
            Ok(Some(small)),
            "a frame under the stream cap decodes differently under the control cap"
        );
    }
    WireReport {
        client,
        server,
        stream,
    }
}

/// How decoding a whole buffer frame after frame ended.
#[derive(Debug, PartialEq)]
enum Tail {
    /// Every byte was used.
    Clean,
    /// These many bytes at the end do not hold a complete frame yet.
    Partial(usize),
    /// Decoding failed.
    Failed(FrameError),
}

fn frames<T>(data: &[u8], cap: usize) -> StreamReport
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    // Decoded all at once.
    let mut whole = Vec::new();
    let mut off = 0;
    let tail = loop {
        if off == data.len() {
            break Tail::Clean;
        }
        match proto::decode_frame::<T>(&data[off..], cap) {
            Ok(Some((msg, used))) => {
                check_frame(&data[off..], cap, &msg, used);
                whole.push(msg);
                off += used;
            }
            Ok(None) => {
                let rest = &data[off..];
                if let Some(prefix) = rest.get(..4) {
                    let len = u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize;
                    assert!(
                        len <= cap && 4 + len > rest.len(),
                        "incomplete, yet {len} of {} bytes are there",
                        rest.len()
                    );
                }
                break Tail::Partial(rest.len());
            }
            Err(e) => {
                if let FrameError::TooLarge { len, cap: c } = &e {
                    assert!(
                        *len > cap && *c == cap,
                        "TooLarge for {len} under cap {cap}"
                    );
                }
                break Tail::Failed(e);
            }
        }
    };

    // Fed in pieces, as a QUIC stream delivers it: every piece ends somewhere arbitrary.
    let mut pieces = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut rest = data;
    let mut rng = Rng::from_bytes(data);
    let mut failed = None;
    'feed: while !rest.is_empty() {
        let n = rng.piece_len().min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            match proto::decode_frame::<T>(&buf, cap) {
                Ok(Some((msg, used))) => {
                    pieces.push(msg);
                    buf.drain(..used);
                }
                Ok(None) => break,
                Err(e) => {
                    failed = Some(e);
                    break 'feed;
                }
            }
        }
    }
    let piece_tail = match failed {
        Some(e) => Tail::Failed(e),
        None if buf.is_empty() => Tail::Clean,
        None => Tail::Partial(buf.len()),
    };
    assert_eq!(
        pieces, whole,
        "decoding in pieces gave other messages than decoding at once"
    );
    assert_eq!(
        piece_tail, tail,
        "decoding in pieces stopped differently than decoding at once"
    );

    let verdict = match tail {
        Tail::Clean => Verdict::Accepted,
        Tail::Partial(_) => Verdict::Incomplete,
        Tail::Failed(_) => Verdict::Refused,
    };
    StreamReport {
        frames: whole.len(),
        verdict,
    }
}

/// Properties of one frame that decoded from the start of `buf`, using `used` bytes.
fn check_frame<T>(buf: &[u8], cap: usize, msg: &T, used: usize)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    assert!(
        (4..=buf.len()).contains(&used) && used - 4 <= cap,
        "used {used} of {} bytes, cap {cap}",
        buf.len()
    );
    // Every strict prefix of the frame asks for more bytes: never an error, never a message.
    for cut in 0..used {
        assert_eq!(
            proto::decode_frame::<T>(&buf[..cut], cap),
            Ok(None),
            "prefix of {cut} bytes"
        );
    }
    // The message encodes again, no longer than it came, and decodes to itself.
    let again =
        proto::encode_frame(msg, cap).expect("a decoded message encodes again within its cap");
    assert!(
        again.len() <= used,
        "re-encoding grew from {used} to {} bytes",
        again.len()
    );
    let (back, n) = proto::decode_frame::<T>(&again, cap)
        .expect("re-encoded frame decodes")
        .expect("complete");
    assert_eq!(
        (&back, n),
        (msg, again.len()),
        "re-encoded frame decodes to something else"
    );
}

// ---------------------------------------------------------------------------------------------
// ogg_reader
// ---------------------------------------------------------------------------------------------

/// Fuzz target `ogg_reader`: [`ogg::read_ogg`] and the promises it makes of what it accepts;
/// the same again for a copy of the input with every page checksum made right, so that
/// mutations reach past the Ogg layer into the Opus checks. The verdict is the one for the
/// input as it is. (Decoding what it read through libopus is covered by the media crate's
/// tests; fuzzing stays free of C code.)
pub fn ogg_reader(data: &[u8]) -> Verdict {
    let fixed = fix_ogg_checksums(data);
    if fixed != data {
        check_ogg(&fixed);
    }
    check_ogg(data)
}

fn check_ogg(data: &[u8]) -> Verdict {
    let Ok(file) = ogg::read_ogg(data) else {
        return Verdict::Refused;
    };
    assert!(
        !file.packets.is_empty(),
        "a file without audio packets was accepted"
    );
    let mut decoded = 0u64;
    for (i, p) in file.packets.iter().enumerate() {
        let n = packet_samples(p).unwrap_or_else(|e| panic!("accepted packet {i} is invalid: {e}"));
        decoded += u64::from(n);
    }
    let pre_skip = u64::from(file.params.pre_skip);
    assert!(
        file.samples + pre_skip <= decoded,
        "{} samples after pre-skip {pre_skip} claimed, the packets hold {decoded}",
        file.samples
    );
    assert!(
        file.samples <= MAX_SAMPLES,
        "{} samples is over the cap",
        file.samples
    );
    let first = packet_samples(&file.packets[0]).expect("checked above");
    assert_eq!(
        file.params.frame_samples, first,
        "frame_samples is not the first packet's duration"
    );
    Verdict::Accepted
}

/// The Ogg CRC-32 of a page (polynomial 0x04c11db7, not reflected, starting at zero), computed
/// with its checksum field as it is: zero it first.
pub fn ogg_crc(page: &[u8]) -> u32 {
    page.iter().fold(0u32, |mut crc, &b| {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
        crc
    })
}

/// A copy of `data` in which every complete page, read back to back from the start, carries
/// the right checksum; bytes after the last complete page are left as they are.
pub fn fix_ogg_checksums(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    let mut at = 0;
    while let Some(header) = out.get(at..at + 27) {
        let nseg = usize::from(header[26]);
        let Some(lacing) = out.get(at + 27..at + 27 + nseg) else {
            break;
        };
        let end = at + 27 + nseg + lacing.iter().map(|&l| usize::from(l)).sum::<usize>();
        let Some(page) = out.get_mut(at..end) else {
            break;
        };
        page[22..26].fill(0);
        let crc = ogg_crc(page);
        page[22..26].copy_from_slice(&crc.to_le_bytes());
        at = end;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// wav_reader
// ---------------------------------------------------------------------------------------------

/// Longest mono signal (in samples) that is also resampled to 48 kHz.
pub const RESAMPLE_LIMIT: usize = 2_048;

/// Fuzz target `wav_reader`: [`wav::read_wav_bytes`], then [`audio::mix_to_mono`] and, for short
/// signals, [`resample::to_48k`].
pub fn wav_reader(data: &[u8]) -> Verdict {
    let Ok(pcm) = wav::read_wav_bytes(data) else {
        return Verdict::Refused;
    };
    assert!(
        (1..=2).contains(&pcm.channels),
        "{} channels accepted",
        pcm.channels
    );
    assert!(
        (audio::MIN_RATE..=audio::MAX_RATE).contains(&pcm.sample_rate),
        "{} Hz accepted",
        pcm.sample_rate
    );
    assert!(
        pcm.samples.iter().all(|s| s.is_finite()),
        "a non-finite sample was read"
    );
    let mono = audio::mix_to_mono(&pcm);
    assert_eq!(
        mono.len(),
        pcm.samples.len() / usize::from(pcm.channels),
        "mixing lost or invented frames"
    );
    if mono.len() <= RESAMPLE_LIMIT {
        let out = resample::to_48k(&mono, pcm.sample_rate).expect("an accepted rate resamples");
        let want = resample::output_len(mono.len(), pcm.sample_rate, resample::RATE_48K);
        assert_eq!(
            out.len(),
            want,
            "resampled {} samples at {} Hz",
            mono.len(),
            pcm.sample_rate
        );
    }
    Verdict::Accepted
}

// ---------------------------------------------------------------------------------------------
// clip_ingest
// ---------------------------------------------------------------------------------------------

/// The relay's upload checks fed from a fuzz input, laid out as (integers little-endian):
///
/// ```text
/// u32 frame_samples | u16 pre_skip | u32 max_clip_ms | u8 target (bit 7: user, bits 0-5: name
/// length n) | n bytes name (lossy UTF-8) | u32 end.packets | u64 end.samples |
/// then packets until the input ends, each u16 length + bytes (the last may be short)
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestInput {
    /// The header as the sender announced it.
    pub header: ClipHeader,
    /// The relay's maximum clip duration.
    pub max_clip_ms: u32,
    /// The packets, in order.
    pub packets: Vec<Vec<u8>>,
    /// The end marker: packet count.
    pub end_packets: u32,
    /// The end marker: decoded length in 48 kHz samples.
    pub end_samples: u64,
}

impl IngestInput {
    /// Reads the layout above; `None` when the input ends before the end marker.
    pub fn parse(data: &[u8]) -> Option<Self> {
        let mut r = Reader(data);
        let frame_samples = u32::from_le_bytes(r.take(4)?.try_into().ok()?);
        let pre_skip = u16::from_le_bytes(r.take(2)?.try_into().ok()?);
        let max_clip_ms = u32::from_le_bytes(r.take(4)?.try_into().ok()?);
        let target = r.take(1)?[0];
        let name = String::from_utf8_lossy(r.take(usize::from(target & 0x3f))?).into_owned();
        let to = if target & 0x80 != 0 {
            Target::User(name)
        } else {
            Target::Channel(name)
        };
        let end_packets = u32::from_le_bytes(r.take(4)?.try_into().ok()?);
        let end_samples = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
        let mut packets = Vec::new();
        while let Some(len) = r.take(2) {
            let len = usize::from(u16::from_le_bytes(len.try_into().ok()?));
            let body = r
                .take(len)
                .unwrap_or_else(|| r.take(r.0.len()).expect("the rest"));
            packets.push(body.to_vec());
        }
        let codec = CodecParams {
            frame_samples,
            bitrate: 24_000,
            pre_skip,
        };
        let header = ClipHeader {
            id: ClipId([7; 16]),
            to,
            started_at_ms: 0,
            codec,
        };
        Some(Self {
            header,
            max_clip_ms,
            packets,
            end_packets,
            end_samples,
        })
    }

    /// The bytes [`IngestInput::parse`] reads back as `self` (packets must be under 64 KiB).
    pub fn to_bytes(&self) -> Vec<u8> {
        let name = self.header.to.name().as_bytes();
        assert!(name.len() <= 0x3f, "name too long for the layout");
        let mut out = Vec::new();
        out.extend_from_slice(&self.header.codec.frame_samples.to_le_bytes());
        out.extend_from_slice(&self.header.codec.pre_skip.to_le_bytes());
        out.extend_from_slice(&self.max_clip_ms.to_le_bytes());
        let user = if matches!(self.header.to, Target::User(_)) {
            0x80
        } else {
            0
        };
        out.push(user | name.len() as u8);
        out.extend_from_slice(name);
        out.extend_from_slice(&self.end_packets.to_le_bytes());
        out.extend_from_slice(&self.end_samples.to_le_bytes());
        for p in &self.packets {
            out.extend_from_slice(
                &u16::try_from(p.len())
                    .expect("packet under 64 KiB")
                    .to_le_bytes(),
            );
            out.extend_from_slice(p);
        }
        out
    }
}

/// Fuzz target `clip_ingest`: [`check_header`], a [`ClipAssembler`] fed every packet, the end
/// marker; a clip it accepts must also make a valid Ogg Opus file, as the relay stores it.
pub fn clip_ingest(data: &[u8]) -> Verdict {
    let Some(input) = IngestInput::parse(data) else {
        return Verdict::Short;
    };
    if let Err(e) = check_header(&input.header) {
        assert_eq!(e.code, ErrorCode::BadRequest, "header refused with {e:?}");
        return Verdict::Refused;
    }
    let pre_skip = u64::from(input.header.codec.pre_skip);
    let mut asm = ClipAssembler::new(&input.header, input.max_clip_ms);
    let (mut decoded, mut last) = (0u64, 0u64);
    for p in &input.packets {
        let before = asm.samples_so_far();
        if let Err(e) = asm.push(p) {
            let codes = [
                ErrorCode::BadRequest,
                ErrorCode::TooLarge,
                ErrorCode::TooLong,
            ];
            assert!(codes.contains(&e.code), "packet refused with {e:?}");
            return Verdict::Refused;
        }
        last = u64::from(packet_samples(p).expect("an accepted packet is valid Opus"));
        decoded += last;
        assert!(asm.samples_so_far() >= before, "the clip got shorter");
        assert_eq!(asm.samples_so_far(), decoded.saturating_sub(pre_skip));
    }
    let done = match asm.finish(input.end_packets, input.end_samples) {
        Ok(done) => done,
        Err(e) => {
            assert!(
                [ErrorCode::BadRequest, ErrorCode::TooLong].contains(&e.code),
                "end refused with {e:?}"
            );
            return Verdict::Refused;
        }
    };
    assert_eq!(
        done.packets as usize,
        input.packets.len(),
        "the assembled packet count differs from those sent"
    );
    assert_eq!(done.samples, input.end_samples);
    assert!(
        done.samples >= 1 && done.samples <= u64::from(input.max_clip_ms) * 48,
        "{} samples accepted",
        done.samples
    );
    // RFC 7845 end trimming: the end falls inside the last packet.
    let end = done.samples + pre_skip;
    assert!(
        end <= decoded && end > decoded - last,
        "end {end} outside the last packet {}..={decoded}",
        decoded - last
    );
    // The assembler wrote what it accepted as the Ogg Opus file the relay stores: it must read
    // back as the same clip, and be what writing the clip at once gives.
    let back = ogg::read_ogg(&done.ogg)
        .unwrap_or_else(|e| panic!("the relay's Ogg file of an accepted clip is unreadable: {e}"));
    assert_eq!(
        back.packets, input.packets,
        "the stored packets differ from those sent"
    );
    assert_eq!(
        (back.samples, back.params.pre_skip),
        (done.samples, input.header.codec.pre_skip)
    );
    let serial = ogg_serial(&input.header.id);
    let whole = ogg::write_ogg(&input.header.codec, &input.packets, done.samples, serial)
        .unwrap_or_else(|e| panic!("an accepted clip cannot be written at once: {e}"));
    assert_eq!(done.ogg, whole, "streamed and whole files differ");
    Verdict::Accepted
}

// ---------------------------------------------------------------------------------------------
// upload_core
// ---------------------------------------------------------------------------------------------

/// What the world answers the relay's upload core in `upload_core`, from the input's first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UploadWorld(pub u8);

impl UploadWorld {
    /// The clip's id is stored already.
    pub const STORED: u8 = 1;
    /// ... by another sender than the talker.
    pub const STORED_BY_OTHER: u8 = 2;
    /// The talker may not send there.
    pub const FORBIDDEN: u8 = 4;
    /// The talker is over their clips-per-minute.
    pub const BUSY: u8 = 8;
    /// Someone else holds the channel's floor.
    pub const FLOOR_TAKEN: u8 = 16;
    /// The commit fails (a full disk).
    pub const COMMIT_FAILS: u8 = 32;
    /// The clock jumps past every deadline between frames.
    pub const SLOW: u8 = 64;

    fn has(self, flag: u8) -> bool {
        self.0 & flag != 0
    }
}

/// Fuzz target `upload_core`: the relay's upload state machine
/// ([`walkie_proto::upload::RelayUpload`]) fed the bytes after the first as a clip stream (one
/// frame after another, as the relay reads them), the first byte choosing the world's answers
/// ([`UploadWorld`]). Checks that whatever a hostile talker sends, the machine keeps its
/// promises: it ends once the stream ends; live copies open before any packet is forwarded and
/// end once; only checked packets are forwarded; at most one commit, whose file holds exactly the
/// forwarded packets; "stored" only after a commit succeeded (or for a resend of a stored clip);
/// nothing more once it has ended.
pub fn upload_core(data: &[u8]) -> Verdict {
    use std::time::{Duration, Instant};
    use walkie_proto::upload::{
        Action, Checked, CommitFailure, FloorRefusal, Input, Outcome, RelayUpload, UploadLimits,
    };

    let Some((&flags, stream)) = data.split_first() else {
        return Verdict::Short;
    };
    let world = UploadWorld(flags);
    let limits = UploadLimits::new(2_000, Duration::from_secs(10), 60);
    let start = Instant::now();
    let mut now = start;
    let mut core = RelayUpload::new("alice", limits, now, walkie_proto::clip::now_ms());
    let (mut opened, mut ended, mut committed, mut commit_ok, mut answered) =
        (false, false, false, false, false);
    let mut forwarded: Vec<Vec<u8>> = Vec::new();
    let mut checked_stored = false;
    let mut drain = |core: &mut RelayUpload, now: Instant| {
        while let Some(action) = core.poll_action() {
            assert!(
                !answered || matches!(action, Action::EndLive { .. } | Action::Wake(_)),
                "{action:?} after the talker was answered"
            );
            let input = match action {
                Action::Check { .. } => {
                    let stored = world.has(UploadWorld::STORED).then(|| {
                        checked_stored = !world.has(UploadWorld::STORED_BY_OTHER);
                        (
                            if world.has(UploadWorld::STORED_BY_OTHER) {
                                "mallory"
                            } else {
                                "alice"
                            }
                            .to_string(),
                            7,
                        )
                    });
                    Some(Input::Checked(if world.has(UploadWorld::FORBIDDEN) {
                        Err(walkie_proto::assemble::Refusal::new(
                            ErrorCode::Forbidden,
                            "not a member",
                        ))
                    } else {
                        Ok(Checked {
                            recipients: vec!["alice".into(), "bob".into()],
                            stored,
                            in_flight: None,
                        })
                    }))
                }
                Action::Admit => Some(Input::Admitted(if world.has(UploadWorld::BUSY) {
                    Err(Duration::from_millis(1234))
                } else {
                    Ok(())
                })),
                Action::TakeFloor { .. } => {
                    Some(Input::Floor(if world.has(UploadWorld::FLOOR_TAKEN) {
                        Err(FloorRefusal::Taken { user: "bob".into() })
                    } else {
                        Ok(())
                    }))
                }
                Action::OpenLive { recipients, header } => {
                    assert!(!opened, "live copies opened twice");
                    assert_eq!(recipients, ["bob"], "the talker is not a recipient");
                    assert!(header.live && header.from == "alice");
                    opened = true;
                    None
                }
                Action::Forward(p) => {
                    assert!(
                        opened && !ended && !committed,
                        "a packet forwarded outside the live copies' lifetime"
                    );
                    packet_samples(&p).expect("only checked packets are forwarded");
                    forwarded.push(p);
                    None
                }
                Action::Commit {
                    meta,
                    ogg,
                    recipients,
                } => {
                    assert!(!committed, "committed twice");
                    committed = true;
                    assert_eq!(recipients, ["bob"]);
                    let file = ogg::read_ogg(&ogg).expect("the committed file is valid Ogg Opus");
                    assert_eq!(
                        file.packets, forwarded,
                        "the committed file holds exactly the packets heard live"
                    );
                    assert_eq!(meta.bytes, ogg.len() as u64);
                    assert!(
                        meta.duration_ms <= 2_000,
                        "a {} ms clip over the 2 s maximum was committed",
                        meta.duration_ms
                    );
                    commit_ok = !world.has(UploadWorld::COMMIT_FAILS);
                    Some(Input::Committed(if commit_ok {
                        Ok(8)
                    } else {
                        Err(CommitFailure::Storage("disk full".into()))
                    }))
                }
                Action::Stored { duplicate, seq, .. } => {
                    assert!(
                        if duplicate {
                            checked_stored && seq == 7
                        } else {
                            commit_ok && seq == 8
                        },
                        "stored without a commit"
                    );
                    answered = true;
                    None
                }
                Action::Refuse(e) => {
                    let allowed = [
                        ErrorCode::BadRequest,
                        ErrorCode::Forbidden,
                        ErrorCode::Busy {
                            retry_after_ms: 1234,
                        },
                        ErrorCode::FloorTaken,
                        ErrorCode::NotFound,
                        ErrorCode::Conflict,
                        ErrorCode::TooLarge,
                        ErrorCode::TooLong,
                        ErrorCode::Timeout,
                        ErrorCode::Storage,
                    ];
                    assert!(allowed.contains(&e.code), "refused with {e:?}");
                    answered = true;
                    None
                }
                Action::AbortLive(_) | Action::EndLive { .. } => {
                    assert!(opened && !ended, "live copies ended twice or never opened");
                    ended = true;
                    None
                }
                Action::ReleaseFloor { .. } | Action::StopReading(_) | Action::Wake(_) => None,
            };
            if let Some(input) = input {
                core.handle(input, now);
            }
        }
    };
    let mut off = 0;
    loop {
        drain(&mut core, now);
        if core.outcome().is_some() {
            break;
        }
        let input = match proto::decode_frame::<StreamFrame>(&stream[off..], MAX_STREAM_FRAME) {
            Ok(Some((frame, used))) => {
                off += used;
                Input::Frame(frame)
            }
            Ok(None) if off < stream.len() => {
                Input::Broken("the stream ended inside a frame".into())
            }
            Ok(None) => Input::Finished,
            Err(e) => Input::Broken(e.to_string()),
        };
        core.handle(input, now);
        if world.has(UploadWorld::SLOW) {
            // The talker goes quiet after each frame: every deadline passes.
            drain(&mut core, now);
            now += Duration::from_secs(11);
            core.handle_timeout(now);
        }
    }
    // Once it has ended, nothing moves it.
    core.handle(
        Input::Frame(StreamFrame::End {
            packets: 1,
            samples: 1,
        }),
        now,
    );
    core.handle(Input::Finished, now);
    core.handle_timeout(now + Duration::from_secs(3600));
    assert_eq!(core.poll_action(), None, "an ended upload acted again");
    assert!(start <= now);
    match core.outcome() {
        Some(Outcome::Stored { .. }) => {
            assert!(answered);
            Verdict::Accepted
        }
        _ => Verdict::Refused,
    }
}

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

/// Takes bytes off the front of a slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, &self.0[n..]);
        self.0 = rest;
        Some(head)
    }
}

/// A small deterministic generator (xorshift64*), seeded from the input so that each input
/// is split its own way and a crash reproduces from the input alone.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a fixed seed.
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// A generator seeded with the FNV-1a hash of `data`.
    pub fn from_bytes(data: &[u8]) -> Self {
        let h = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        Self::new(h)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// The length of the next piece of a split stream: mostly short, sometimes long.
    fn piece_len(&mut self) -> usize {
        match self.below(8) {
            0 => 1 + self.below(4096),
            1..=3 => 1,
            _ => 1 + self.below(16),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// message
// ---------------------------------------------------------------------------------------------

/// Fuzz target `message`: the decoders of messages beside clips. The first byte picks one:
/// `0` a text through [`message::check_text`]; `1` doodle JSON through [`Doodle::parse`] (an
/// accepted doodle must pass its own checks and read back equal from its canonical JSON);
/// `2` a stored payload cut by [`message::parts`] under a content built from the next bytes;
/// `3` upload chunks (each a `u16` length and bytes) through [`message::MessageAssembler`].
pub fn message(data: &[u8]) -> Verdict {
    use walkie_proto::message::{
        self, Content, Kind, MessageAssembler, Parts, PictureFormat, doodle::Doodle,
    };
    let Some((&which, rest)) = data.split_first() else {
        return Verdict::Short;
    };
    match which % 4 {
        0 => match message::check_text(rest) {
            Ok(chars) => {
                let text = std::str::from_utf8(rest).expect("accepted text is UTF-8");
                assert_eq!(chars as usize, text.chars().count());
                assert!(chars as usize <= message::MAX_TEXT_CHARS && chars > 0);
                let line = message::detail(&Content::Text { chars }, rest);
                assert!(
                    !line.contains('\n') && !line.chars().any(|c| c.is_control()),
                    "a detail line stays one line: {line:?}"
                );
                Verdict::Accepted
            }
            Err(_) => Verdict::Refused,
        },
        1 => match Doodle::parse(rest) {
            Ok(d) => {
                d.check().expect("a parsed doodle passes its checks");
                assert!(
                    d.points() <= message::doodle::MAX_POINTS
                        && d.strokes.len() <= message::doodle::MAX_STROKES
                );
                assert_eq!(
                    Doodle::parse(&d.to_json()).as_ref(),
                    Ok(&d),
                    "canonical JSON reads back equal"
                );
                Verdict::Accepted
            }
            Err(_) => Verdict::Refused,
        },
        2 => {
            if rest.len() < 5 {
                return Verdict::Short;
            }
            let n = u32::from_le_bytes([rest[1], rest[2], rest[3], rest[4]]);
            let content = match rest[0] % 5 {
                0 => Content::Voice,
                1 => Content::Text { chars: n },
                2 => Content::Picture {
                    width: 1,
                    height: 1,
                    format: PictureFormat::Jpeg,
                    thumb: n,
                },
                3 => Content::Doodle {
                    width: 16,
                    height: 16,
                    strokes: 1,
                    points: 1,
                    png: n,
                },
                _ => Content::Recalled,
            };
            let payload = &rest[5..];
            match message::parts(&content, payload) {
                Ok(Parts::Picture { full, thumb }) => {
                    assert_eq!(full.len() + thumb.len(), payload.len())
                }
                Ok(Parts::Doodle { strokes, png }) => {
                    assert_eq!(strokes.len() + png.len(), payload.len())
                }
                Ok(_) => {}
                Err(_) => return Verdict::Refused,
            }
            let _ = message::detail(&content, payload);
            Verdict::Accepted
        }
        _ => {
            let kind = [Kind::Text, Kind::Picture, Kind::Doodle][usize::from(which / 4) % 3];
            let mut asm = MessageAssembler::new(kind);
            let mut kept = 0usize;
            let mut rest = rest;
            while rest.len() >= 2 {
                let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
                let chunk = &rest[2..2 + len];
                rest = &rest[2 + len..];
                if asm.push(chunk).is_err() {
                    return Verdict::Refused;
                }
                kept += chunk.len();
                assert!(kept <= kind.max_upload(), "kept past the cap");
            }
            let count = rest.first().map_or(0, |&b| u32::from(b));
            match asm.finish(count) {
                Ok(payload) => {
                    assert_eq!(payload.len(), kept);
                    Verdict::Accepted
                }
                Err(_) => Verdict::Refused,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// picture
// ---------------------------------------------------------------------------------------------

/// The relay's own picture intake (the same file, compiled here).
#[path = "../../crates/walkie-relay/src/picture.rs"]
#[allow(dead_code)]
mod relay_picture;

/// Fuzz target `picture`: bytes through the relay's picture intake (format sniffed, size
/// read from the header before any pixel, decoding capped, encoded again with a thumbnail).
/// An accepted picture must keep its size within the limits and cut into a picture and a
/// thumbnail that both decode.
pub fn picture(data: &[u8]) -> Verdict {
    use walkie_proto::message::{Content, MAX_PICTURE_SIDE, Parts, THUMB_SIDE, parts};
    match relay_picture::accept(data) {
        Ok((payload, content)) => {
            let Content::Picture { width, height, .. } = content else {
                panic!("a picture's content is {content:?}")
            };
            assert!(
                width <= MAX_PICTURE_SIDE && height <= MAX_PICTURE_SIDE && width > 0 && height > 0
            );
            let Ok(Parts::Picture { full, thumb }) = parts(&content, &payload) else {
                panic!("the payload does not cut")
            };
            let f = image::load_from_memory(full).expect("the stored picture decodes");
            let t = image::load_from_memory(thumb).expect("the thumbnail decodes");
            assert_eq!((f.width(), f.height()), (width, height));
            assert!(t.width() <= THUMB_SIDE && t.height() <= THUMB_SIDE);
            Verdict::Accepted
        }
        Err(_) => Verdict::Refused,
    }
}

// ---------------------------------------------------------------------------------------------
// live_datagram
// ---------------------------------------------------------------------------------------------

/// Fuzz target `live_datagram`: a live datagram as a relay or a listener reads it
/// ([`LiveDatagram::decode`]). What decodes encodes again to a datagram with the same packets;
/// a relay's fast path ([`LiveForward`]) fed its packets, then the same packets by the stream,
/// forwards each index at most once, never one outside the window ahead of the stream, and
/// refuses a stream copy that differs from the datagram that went first.
pub fn live_datagram(data: &[u8]) -> Verdict {
    let Ok(d) = LiveDatagram::decode(data) else {
        return Verdict::Refused;
    };
    let again = LiveBody::new(d.packets().iter().copied())
        .expect("decoded packets make a body")
        .for_stream(d.stream);
    assert_eq!(
        LiveDatagram::decode(&again).expect("a re-encoded datagram decodes"),
        d
    );
    let mut fast = LiveForward::new(1_000);
    let mut sent = std::collections::HashSet::new();
    let mut early = std::collections::HashMap::new();
    for &(index, packet) in d.packets() {
        if let Some(out) = fast.from_datagram(index, packet) {
            assert!(
                index < DATAGRAM_WINDOW,
                "{index} forwarded ahead of the window"
            );
            assert!(sent.insert(out.index), "{index} forwarded twice");
            assert!(out.body(2).is_some());
            early.insert(index, packet.to_vec());
        }
    }
    // The stream brings packets 0, 1, ... : each the datagram's bytes, or other bytes.
    let last = early.keys().max().copied().unwrap_or(0);
    for index in 0..=last {
        let stream_copy = early
            .get(&index)
            .cloned()
            .unwrap_or_else(|| vec![0xf8, 0xff]);
        match fast.from_stream(&stream_copy) {
            Ok(Some(out)) => assert!(sent.insert(out.index), "{index} forwarded twice"),
            Ok(None) => {}
            Err(e) => panic!("the stream copy of {index} matches its datagram but: {e}"),
        }
    }
    if let Some((&index, packet)) = early.iter().next() {
        let mut other = LiveForward::new(1_000);
        other.from_datagram(index, packet);
        for _ in 0..index {
            let _ = other.from_stream(&[0xf8, 0xff]);
        }
        let mut changed = packet.clone();
        changed.push(0);
        assert!(
            other.from_stream(&changed).is_err(),
            "a stream copy unlike its datagram was taken"
        );
    }
    Verdict::Accepted
}
