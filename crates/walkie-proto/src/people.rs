//! People, as the relay and clients agree on them, with no I/O: display names, invite links
//! and codes, contacts (requests, acceptance, blocking, who may send you direct clips) and
//! groups users make. The relay keeps the records; these are the rules it applies to them,
//! driven by tests with a simulated clock.
//!
//! | file | owns |
//! |---|---|
//! | `names.rs` | display names: NFC, 1-64 characters, nothing that hides or reorders text |
//! | `invite.rs` | invite links (`walkie://HOST:PORT/join/CODE#sha256:FP`), codes and redeeming them |
//! | `contacts.rs` | the contact states two users hold of each other and how actions change them |
//! | `groups.rs` | who may do what to a channel users made |
//! | `nearby.rs` | people nearby: 5 km geohash cells, distances between cells, places for desktops |

mod contacts;
mod groups;
mod invite;
mod names;
mod nearby;

pub use contacts::{
    ContactAction, ContactRefusal, ContactState, DirectFrom, Pair, contact_step, may_send_direct,
};
pub use groups::{GroupAction, GroupRefusal, GroupRole, group_may};
pub use invite::{CODE_HEX, Invite, InviteLink, InviteRefusal, LinkError, new_code};
pub use names::{MAX_DISPLAY_CHARS, NameError, validate_display_name};
pub use nearby::{
    CELL_CHARS, NEARBY_KM, PlaceError, cell_center, cell_of, cells_around, check_cell, km_between,
    parse_place,
};
