//! [`ClientError`]: what can go wrong in a client's work with a relay, and whether trying again
//! later may help.

use std::time::Duration;

use walkie_net::NetError;
use walkie_proto::upload::UploadFailure;
use walkie_proto::wire::{ErrorCode, ErrorMsg};

/// Errors of a client's work with a relay: connecting, requests, uploads, local files.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Network, TLS or framing failure.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The relay address does not resolve.
    #[error("cannot resolve relay address {0:?}; give HOST:PORT")]
    Resolve(String),
    /// The relay refused something, with its code.
    #[error("the relay refused: {} ({})", .0.message, .0.code.name())]
    Refused(ErrorMsg),
    /// The connection closed.
    #[error("connection to the relay lost: {0}")]
    Closed(String),
    /// The relay did not answer in time.
    #[error("the relay did not answer within {0:?}")]
    Timeout(Duration),
    /// The relay sent something the protocol does not allow here.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// Which file.
        path: std::path::PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Encoding or decoding audio failed.
    #[error(transparent)]
    Codec(#[from] walkie_media::codec::CodecError),
    /// An Ogg Opus file could not be read or written.
    #[error(transparent)]
    Ogg(#[from] walkie_proto::ogg::OggError),
    /// Settings are missing or invalid.
    #[error("{0}")]
    Config(String),
}

impl ClientError {
    /// True if retrying later may succeed (network trouble, a busy or failing relay); false
    /// when the relay refused the request for good (not a member, too long, …).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Refused(e) => matches!(
                e.code,
                ErrorCode::Busy { .. }
                    | ErrorCode::FloorTaken
                    | ErrorCode::Storage
                    | ErrorCode::Timeout
                    | ErrorCode::Internal
            ),
            // A relay whose certificate is not trusted stays so; a bad local file too.
            ClientError::Net(
                NetError::Untrusted { .. }
                | NetError::BadPem { .. }
                | NetError::BadFingerprint(_)
                | NetError::Io { .. },
            ) => false,
            ClientError::Net(_)
            | ClientError::Closed(_)
            | ClientError::Timeout(_)
            | ClientError::Resolve(_) => true,
            _ => false,
        }
    }
}

impl From<UploadFailure> for ClientError {
    fn from(f: UploadFailure) -> Self {
        match f {
            UploadFailure::Refused(e) => ClientError::Refused(e),
            UploadFailure::Stream(why) => ClientError::Net(NetError::Stream(why)),
            UploadFailure::Timeout(d) => ClientError::Timeout(d),
            UploadFailure::Cancelled => ClientError::Closed("the clip was cancelled".into()),
        }
    }
}
