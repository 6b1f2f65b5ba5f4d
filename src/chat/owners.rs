//! Who owns the name a message came under, as the rendezvous node said.
//!
//! A message that arrives without a valid name certificate makes the
//! recipient ask the node who owns its `from` name. The recipient asks,
//! but the question is the sender's, and anyone who knows a screen name
//! can send: so what the node answers is kept for every sender (a name's
//! owner is the same whoever writes under it), a name nobody owns or that
//! another key owns is remembered too, and look-ups are budgeted, per
//! sender and in all, far below what the node grants the user's own
//! requests. A stranger sending messages under made-up or other people's
//! names then spends its own time (its streams are closed), not the
//! user's budget at the node; and the node charges what is left of those
//! look-ups to a budget of their own (`sender_check`, docs/protocol.md
//! §5.3).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use libp2p::PeerId;
use messenger_proto::name::ScreenName;
use messenger_proto::rate::{Rate, TokenBucket};
use tokio::time::Instant;

/// How long the node's word that a name is the sender's own is used.
pub const OWNED_FOR: Duration = Duration::from_secs(300);

/// How long "nobody owns it" or "another key owns it" is used: shorter,
/// since a name may change hands and a new owner deserves to be asked
/// about again soon.
pub const DOUBTED_FOR: Duration = Duration::from_secs(60);

/// Names whose owner is remembered at most.
const MAX_NAMES: usize = 4096;

/// Look-ups one sender may cause.
pub const PER_SENDER: Rate = Rate::new(0.5, 5);

/// Look-ups all senders together may cause: a quarter of what the node
/// grants a peer's own requests by default, and half of its budget for
/// such look-ups (docs/security.md).
pub const IN_ALL: Rate = Rate::new(5.0, 20);

/// What the node said of a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// This key owns it.
    Key(PeerId),
    /// Nobody does.
    Nobody,
}

/// The node's answers, and the budget for asking it, shared by every
/// sender's task.
#[derive(Debug)]
pub struct Owners {
    inner: Mutex<Inner>,
    epoch: Instant,
}

#[derive(Debug)]
struct Inner {
    answers: HashMap<ScreenName, (Owner, Instant)>,
    budget: TokenBucket,
}

impl Default for Owners {
    fn default() -> Self {
        Self::new()
    }
}

impl Owners {
    /// Nothing known; a full budget.
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                answers: HashMap::new(),
                budget: TokenBucket::new(IN_ALL, 0),
            }),
            epoch: Instant::now(),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the node said of `name`, while it still holds for a message
    /// from `peer`.
    pub fn known(&self, name: &ScreenName, peer: &PeerId) -> Option<Owner> {
        let inner = self.inner();
        let (owner, at) = inner.answers.get(name)?;
        let good_for = match owner {
            Owner::Key(key) if key == peer => OWNED_FOR,
            _ => DOUBTED_FOR,
        };
        (at.elapsed() < good_for).then_some(*owner)
    }

    /// Keeps what the node said of `name`.
    pub fn remember(&self, name: &ScreenName, owner: Owner) {
        let mut inner = self.inner();
        if inner.answers.len() >= MAX_NAMES && !inner.answers.contains_key(name) {
            inner
                .answers
                .retain(|_, (_, at)| at.elapsed() < DOUBTED_FOR);
            if inner.answers.len() >= MAX_NAMES {
                inner.answers.clear();
            }
        }
        inner.answers.insert(name.clone(), (owner, Instant::now()));
    }

    /// Takes one look-up from the budget all senders share; false when it
    /// is spent.
    pub fn spend(&self) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.inner().budget.take(now).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ScreenName {
        ScreenName::parse(s).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn answers_are_kept_for_every_sender_and_doubts_for_less_long() {
        let owners = Owners::new();
        let (alice, mallory) = (PeerId::random(), PeerId::random());
        owners.remember(&name("alice"), Owner::Key(alice));
        owners.remember(&name("ghost"), Owner::Nobody);
        assert_eq!(
            owners.known(&name("alice"), &alice),
            Some(Owner::Key(alice))
        );
        assert_eq!(
            owners.known(&name("alice"), &mallory),
            Some(Owner::Key(alice)),
            "mallory writing as alice is answered without asking"
        );
        assert_eq!(owners.known(&name("ghost"), &mallory), Some(Owner::Nobody));
        tokio::time::advance(DOUBTED_FOR).await;
        assert_eq!(
            owners.known(&name("alice"), &alice),
            Some(Owner::Key(alice))
        );
        assert_eq!(owners.known(&name("alice"), &mallory), None, "asked again");
        assert_eq!(owners.known(&name("ghost"), &mallory), None);
        tokio::time::advance(OWNED_FOR).await;
        assert_eq!(owners.known(&name("alice"), &alice), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_for_all_senders_is_bounded() {
        let owners = Owners::new();
        let granted = (0..100).filter(|_| owners.spend()).count();
        assert_eq!(granted, IN_ALL.burst as usize);
        tokio::time::advance(Duration::from_secs(2)).await;
        let granted = (0..100).filter(|_| owners.spend()).count();
        assert_eq!(granted, (IN_ALL.per_second * 2.0) as usize);
    }

    #[test]
    fn the_names_remembered_are_bounded() {
        let owners = Owners::new();
        for i in 0..(MAX_NAMES + 10) {
            owners.remember(&name(&format!("name{i}")), Owner::Nobody);
        }
        assert!(owners.inner().answers.len() <= MAX_NAMES);
    }
}
