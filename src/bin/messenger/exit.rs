//! Exit statuses: what scripts can rely on, mapped from the library's
//! failure kinds in this one place.

use messenger::api::FailureKind;

/// Success (for `send`: the recipient acknowledged).
pub(crate) const OK: u8 = 0;
/// Any other failure, e.g. the rendezvous node is unreachable.
pub(crate) const FAILURE: u8 = 1;
/// Invalid input: bad name, empty or oversized text, bad flags.
pub(crate) const INVALID: u8 = 2;
/// The name is not registered by anyone.
pub(crate) const NO_SUCH_NAME: u8 = 3;
/// The name is owned by another key.
pub(crate) const NAME_TAKEN: u8 = 4;
/// The recipient refused the message; it will not be retried.
pub(crate) const NOT_DELIVERED: u8 = 6;
/// Not delivered now but kept in the outbox: delivered when the recipient
/// is reachable while `messenger online` runs on this home.
pub(crate) const QUEUED: u8 = 7;
/// The recipient is a contact whose key changed: nothing was sent.
pub(crate) const KEY_CHANGED: u8 = 8;
/// The disk holding the home is full: nothing new was stored.
pub(crate) const DISK_FULL: u8 = 9;
/// The home's store is damaged: nothing in it was changed.
pub(crate) const STORE_DAMAGED: u8 = 10;
/// The other side refused a tunnel or pipe (not invited, withdrawn, busy,
/// nothing listening).
pub(crate) const REFUSED: u8 = 11;

/// The exit status of a failure of `kind`.
pub(crate) fn of(kind: FailureKind) -> u8 {
    match kind {
        FailureKind::Invalid
        | FailureKind::NotAContact
        | FailureKind::OverLimit
        | FailureKind::NoNode => INVALID,
        FailureKind::NoSuchName => NO_SUCH_NAME,
        FailureKind::NameTaken => NAME_TAKEN,
        FailureKind::NotDelivered => NOT_DELIVERED,
        FailureKind::KeyChanged => KEY_CHANGED,
        FailureKind::DiskFull => DISK_FULL,
        FailureKind::StoreDamaged => STORE_DAMAGED,
        FailureKind::Refused => REFUSED,
        _ => FAILURE,
    }
}

/// The command that puts a failure of `kind` right, if there is one.
pub(crate) fn hint(kind: FailureKind) -> Option<&'static str> {
    Some(match kind {
        FailureKind::NoName => "`messenger register NAME`",
        FailureKind::NotAContact => "`messenger contacts add NAME`",
        FailureKind::NotOnline => "start `messenger online` or the window on this home",
        FailureKind::OverLimit => "`messenger files --max-size SIZE`",
        FailureKind::NoNode => {
            "pass --rendezvous MULTIADDR (a line printed by `rendezvous`) or set MESSENGER_RENDEZVOUS"
        }
        FailureKind::KeyChanged => "`messenger contacts trust NAME`, only if you know why",
        FailureKind::StoreInUse => "is `messenger online` or the window running on this home?",
        _ => return None,
    })
}
