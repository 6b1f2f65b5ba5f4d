//! Look-ups of names held on other nodes, kept for a moment: a name many
//! ask for is read from the live table once per [`FRESH_FOR`], not once per
//! resolve. Names this node's sessions watch never come here (NATS keeps
//! them up to date), so what a moment's staleness costs is a resolve of an
//! unwatched name that lags its owner's change by at most that moment.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use messenger_proto::name::ScreenName;

use crate::shared::Held;

/// How long a look-up is used again.
pub(super) const FRESH_FOR: Duration = Duration::from_secs(1);

/// The most look-ups kept (past it, the stale ones go, then all).
const MAX_KEPT: usize = 65_536;

/// Recent look-ups by name: what the live table said, and when.
#[derive(Debug, Default)]
pub(super) struct RecentLookups {
    kept: Mutex<HashMap<ScreenName, (Instant, Option<Held>)>>,
}

impl RecentLookups {
    fn lock(&self) -> MutexGuard<'_, HashMap<ScreenName, (Instant, Option<Held>)>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the live table said of `name` less than [`FRESH_FOR`] ago.
    pub(super) fn get(&self, name: &ScreenName, now: Instant) -> Option<Option<Held>> {
        let kept = self.lock();
        let (at, held) = kept.get(name)?;
        (now.saturating_duration_since(*at) < FRESH_FOR).then(|| held.clone())
    }

    /// Keeps what the live table said of `name` at `at`.
    pub(super) fn put(&self, name: &ScreenName, held: Option<Held>, at: Instant) {
        let mut kept = self.lock();
        if kept.len() >= MAX_KEPT && !kept.contains_key(name) {
            kept.retain(|_, (when, _)| at.saturating_duration_since(*when) < FRESH_FOR);
            if kept.len() >= MAX_KEPT {
                kept.clear();
            }
        }
        kept.insert(name.clone(), (at, held));
    }

    /// Forgets `name`: this node learnt that it changed.
    pub(super) fn forget(&self, name: &ScreenName) {
        self.lock().remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::SharedLive;
    use messenger_proto::Identity;
    use messenger_proto::presence::Status;
    use messenger_proto::record::Registration;

    fn held() -> Held {
        let owner = Identity::from_seed([3; 32]);
        let record = Registration {
            name: ScreenName::parse("alice").unwrap(),
            peer_id: owner.peer_id(),
            addrs: vec![],
            seq: 1,
            expires_at: 1,
            status: Status::Online,
            status_text: String::new(),
        }
        .sign(&owner);
        Held {
            node: "a".to_owned(),
            live: SharedLive {
                record,
                visible_to: vec![],
                hidden_since: None,
            },
        }
    }

    #[test]
    fn a_look_up_is_used_again_for_a_moment_and_forgotten_on_change() {
        let recent = RecentLookups::default();
        let name = ScreenName::parse("alice").unwrap();
        let t0 = Instant::now();
        assert_eq!(recent.get(&name, t0), None);
        recent.put(&name, Some(held()), t0);
        assert_eq!(recent.get(&name, t0 + FRESH_FOR / 2), Some(Some(held())));
        assert_eq!(recent.get(&name, t0 + FRESH_FOR), None, "stale");
        recent.put(&name, None, t0);
        assert_eq!(
            recent.get(&name, t0),
            Some(None),
            "nobody there is kept too"
        );
        recent.forget(&name);
        assert_eq!(recent.get(&name, t0), None);
    }

    #[test]
    fn it_holds_at_most_its_bound() {
        let recent = RecentLookups::default();
        let t0 = Instant::now();
        for i in 0..MAX_KEPT + 10 {
            let name = ScreenName::parse(&format!("name{i}")).unwrap();
            recent.put(&name, None, t0 + FRESH_FOR * 2 * u32::from(i >= MAX_KEPT));
        }
        assert!(recent.lock().len() <= MAX_KEPT);
    }
}
