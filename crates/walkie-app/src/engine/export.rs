//! Export of one conversation: every clip, fetched from the relay, as
//! `DIR/YYYYMMDD-HHMMSS-SENDER-CLIPID.opus` (standard Ogg Opus files, sorted by time when
//! listed by name) plus `DIR/index.json` in the form `walkie history --json` prints.

use std::path::Path;

use walkie_client::ops;
use walkie_client::{Client, ClientError};
use walkie_proto::clip::{ClipMeta, Target};
use walkie_proto::wire::MAX_HISTORY_PAGE;

/// Every clip of `target`, oldest first.
async fn all_clips(client: &Client, target: &Target) -> Result<Vec<ClipMeta>, ClientError> {
    let mut all = Vec::new();
    let mut before = None;
    loop {
        let page = client
            .history(Some(target.clone()), MAX_HISTORY_PAGE, before)
            .await?;
        let Some(first) = page.first() else { break };
        before = Some(first.seq);
        let full = page.len() as u32 >= MAX_HISTORY_PAGE;
        all.splice(0..0, page);
        if !full {
            break;
        }
    }
    Ok(all)
}

/// The file name of a clip in an export.
pub fn file_name(meta: &ClipMeta) -> String {
    let when = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(meta.started_at_ms)
        .map(|t| t.format("%Y%m%d-%H%M%S").to_string())
        .unwrap_or_else(|| "00000000-000000".into());
    format!("{when}-{}-{}.opus", meta.from, meta.id)
}

/// Writes the conversation to `dir`; returns how many clips (see [`ops::export_clips`]: a
/// purged clip is listed without a file, and `index.json` is always written).
pub async fn export(client: &Client, target: &Target, dir: &Path) -> Result<usize, ClientError> {
    let clips = all_clips(client, target).await?;
    ops::export_clips(client, &clips, dir, file_name).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use walkie_proto::clip::{ClipId, CodecParams};

    #[test]
    fn file_names_sort_by_time_and_name_the_sender() {
        let meta = ClipMeta {
            id: ClipId([0xab; 16]),
            from: "bob".into(),
            to: Target::Channel("crew".into()),
            started_at_ms: 1_700_000_000_000,
            duration_ms: 1,
            packets: 1,
            bytes: 1,
            codec: CodecParams {
                frame_samples: 960,
                bitrate: 24_000,
                pre_skip: 312,
            },
            seq: 1,
            content: Default::default(),
        };
        let name = file_name(&meta);
        assert!(name.starts_with("20231114-221320-bob-abab"), "{name}");
        assert!(name.ends_with(".opus"));
    }
}
