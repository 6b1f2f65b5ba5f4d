//! The journal: each event numbered, the last few thousand kept for the
//! front ends that follow.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{mpsc, watch};

use super::event::Event;
use crate::metrics::ClientMetrics;

/// How many of the latest events the journal keeps for followers.
pub const JOURNAL_LEN: usize = 4096;

/// How many bytes of events it keeps at most (about: what the events'
/// texts and lists take): a message may carry 64 KiB of text and its
/// signed copy, so a count alone would let those who write to the user
/// pin half a gigabyte here.
pub const JOURNAL_BYTES: usize = 8 * 1024 * 1024;

/// About what an event takes in the journal: its texts, payloads and
/// lists; a fixed share for the rest.
fn weight(event: &Event) -> usize {
    const BASE: usize = 256;
    let message = |m: &crate::store::StoredMessage| {
        m.message.text.len() + m.signed.as_ref().map_or(0, |s| s.payload.len())
    };
    BASE + match event {
        Event::Message { message: m, .. } => message(m),
        Event::Sent(m) | Event::Delivered(m) | Event::Failed(m) | Event::Queued(m) => message(m),
        Event::Contacts { contacts } => contacts.len() * BASE,
        Event::Blocked { names } => names.len() * 40,
        Event::Requests { requests } => requests.len() * BASE,
        Event::Invitations {
            invitations,
            invited_me,
        } => (invitations.len() + invited_me.len()) * BASE,
        _ => 0,
    }
}

/// The sending side of the stream of [`Event`]s: each event is numbered in
/// the journal, counted (if the client keeps metrics) and queued for the
/// front end that started the client.
#[derive(Debug, Clone)]
pub struct EventSender {
    tx: mpsc::Sender<Event>,
    journal: Arc<Journal>,
    metrics: Option<Arc<ClientMetrics>>,
}

impl EventSender {
    /// Events go to `tx`, into a new journal, and are counted in `metrics`.
    pub fn new(tx: mpsc::Sender<Event>, metrics: Option<Arc<ClientMetrics>>) -> Self {
        Self {
            tx,
            journal: Arc::new(Journal::new()),
            metrics,
        }
    }

    /// The journal the events are numbered in.
    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    fn record(&self, event: &Event) {
        if let Some(metrics) = &self.metrics {
            count(metrics, event);
        }
        self.journal.push(event.clone());
    }

    /// Sends, waiting for room; false if the front end is gone. The
    /// event is journalled and counted either way: it happened.
    pub async fn send(&self, event: Event) -> bool {
        self.record(&event);
        self.tx.send(event).await.is_ok()
    }

    /// Sends if there is room now; false if the front end's queue was full
    /// (the event is in the journal all the same).
    pub fn try_send(&self, event: Event) -> bool {
        self.record(&event);
        self.tx.try_send(event).is_ok()
    }
}

/// What the metrics count of an event.
fn count(metrics: &ClientMetrics, event: &Event) {
    match event {
        Event::Online { .. } => metrics.set_online(true),
        Event::Reconnecting { .. } => metrics.reconnecting(),
        Event::RegistrationRefused { .. } => metrics.set_online(false),
        Event::Message { .. } => metrics.message_received(),
        Event::Presence(_) => metrics.presence_changed(),
        Event::Sent(_) => metrics.message_sent(),
        Event::Delivered(_) => metrics.message_delivered(),
        Event::Failed(_) => metrics.message_failed(),
        _ => {}
    }
}

/// Why a follower cannot go on from where it asked: it must take a new
/// snapshot and follow from there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Missed {
    /// The number belongs to another run of the client (it restarted).
    #[error("the client restarted (run {asked} is over, this is run {now}): take a new snapshot")]
    OtherRun {
        /// The run asked for.
        asked: String,
        /// This run.
        now: String,
    },
    /// Events after the number are gone from the journal (it keeps the
    /// last few thousand), or the number was never given out.
    #[error(
        "events after {after} are not kept (the journal holds {first} to {last}): take a new snapshot"
    )]
    NotKept {
        /// The number asked for.
        after: u64,
        /// The first number still kept.
        first: u64,
        /// The last number given out.
        last: u64,
    },
}

/// The last events, numbered from 1 in the order they happened.
#[derive(Debug)]
pub struct Journal {
    /// Names this run of the client: numbers mean nothing across runs.
    run: String,
    events: Mutex<Kept>,
    /// The last number given out, for followers to wait on.
    last: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Kept {
    /// Oldest first, with their weight; the number of each is its
    /// position from `first`.
    events: VecDeque<(Event, usize)>,
    /// The number of `events[0]`.
    first: u64,
    /// The weight of all of them.
    bytes: usize,
}

impl Journal {
    fn new() -> Self {
        Self {
            run: format!("{:016x}", rand_u64()),
            events: Mutex::new(Kept {
                events: VecDeque::with_capacity(64),
                first: 1,
                bytes: 0,
            }),
            last: watch::Sender::new(0),
        }
    }

    /// This run of the client.
    pub fn run(&self) -> &str {
        &self.run
    }

    /// The number of the last event so far (0 before the first).
    pub fn last(&self) -> u64 {
        *self.last.borrow()
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        // Nothing panics while holding it; a poisoned lock still holds
        // consistent events.
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, event: Event) -> u64 {
        let weight = weight(&event);
        let mut kept = self.kept();
        while !kept.events.is_empty()
            && (kept.events.len() == JOURNAL_LEN || kept.bytes + weight > JOURNAL_BYTES)
        {
            if let Some((_, gone)) = kept.events.pop_front() {
                kept.bytes -= gone;
            }
            kept.first += 1;
        }
        kept.bytes += weight;
        kept.events.push_back((event, weight));
        let seq = kept.first + kept.events.len() as u64 - 1;
        // Published under the lock: followers see numbers in order.
        self.last.send_replace(seq);
        seq
    }

    /// Follows the events after `after` of run `run`.
    pub fn follow(self: &Arc<Self>, run: &str, after: u64) -> Result<Follower, Missed> {
        if run != self.run {
            return Err(Missed::OtherRun {
                asked: run.to_owned(),
                now: self.run.clone(),
            });
        }
        let follower = Follower {
            journal: Arc::clone(self),
            next: after.saturating_add(1),
            last: self.last.subscribe(),
        };
        follower.check()?;
        Ok(follower)
    }
}

/// Events of the journal, in order, from a number on.
#[derive(Debug)]
pub struct Follower {
    journal: Arc<Journal>,
    /// The number of the next event to hand out.
    next: u64,
    last: watch::Receiver<u64>,
}

impl Follower {
    /// Whether the next event is still kept, or still to come.
    fn check(&self) -> Result<(), Missed> {
        let kept = self.journal.kept();
        let last = kept.first + kept.events.len() as u64 - 1;
        if self.next < kept.first || self.next > last + 1 {
            return Err(Missed::NotKept {
                after: self.next - 1,
                first: kept.first,
                last,
            });
        }
        Ok(())
    }

    /// The next event and its number, once there is one. Ends in `Err`
    /// when the follower fell so far behind that the event is gone.
    pub async fn next(&mut self) -> Result<(u64, Event), Missed> {
        loop {
            {
                let kept = self.journal.kept();
                if self.next < kept.first {
                    return Err(Missed::NotKept {
                        after: self.next - 1,
                        first: kept.first,
                        last: kept.first + kept.events.len() as u64 - 1,
                    });
                }
                let index = (self.next - kept.first) as usize;
                if let Some((event, _)) = kept.events.get(index) {
                    let seq = self.next;
                    self.next += 1;
                    return Ok((seq, event.clone()));
                }
            }
            // The journal lives as long as we hold it: its sender does too.
            if self.last.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// A random number naming a run: distinct runs of one home must differ.
fn rand_u64() -> u64 {
    // The OS's generator; failing that, the clock is distinct enough
    // between runs of one home.
    getrandom::u64().unwrap_or_else(|_| messenger_proto::time::now_ms())
}

#[cfg(test)]
mod tests {
    use super::*;
    use messenger_proto::name::ScreenName;

    fn nudge(name: &str) -> Event {
        Event::Nudge {
            name: ScreenName::parse(&format!("user{name}")).unwrap(),
        }
    }

    fn sender() -> (EventSender, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(JOURNAL_LEN * 2);
        (EventSender::new(tx, None), rx)
    }

    #[tokio::test]
    async fn a_follower_gets_every_event_after_its_number_in_order() {
        let (events, _rx) = sender();
        let journal = Arc::clone(events.journal());
        events.try_send(nudge("a"));
        let after = journal.last();
        assert_eq!(after, 1);
        let mut follower = journal.follow(journal.run(), after).unwrap();
        events.try_send(nudge("b"));
        events.try_send(nudge("c"));
        assert_eq!(follower.next().await.unwrap(), (2, nudge("b")));
        assert_eq!(follower.next().await.unwrap(), (3, nudge("c")));

        // The next one is waited for.
        let waiting = tokio::spawn(async move { follower.next().await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        events.try_send(nudge("d"));
        assert_eq!(waiting.await.unwrap().unwrap(), (4, nudge("d")));
    }

    #[tokio::test]
    async fn a_follower_from_zero_gets_all_and_the_front_end_gets_them_too() {
        let (events, mut rx) = sender();
        events.send(nudge("a")).await;
        let journal = events.journal();
        let mut follower = journal.follow(journal.run(), 0).unwrap();
        assert_eq!(follower.next().await.unwrap(), (1, nudge("a")));
        assert_eq!(rx.recv().await.unwrap(), nudge("a"));
    }

    #[test]
    fn big_messages_are_kept_within_the_byte_bound() {
        use crate::store::{Direction, MessageState, StoredMessage};
        let (events, _rx) = sender();
        let journal = Arc::clone(events.journal());
        let big = |seq| {
            let mut message = crate::testing::message("alice", "bob", "x");
            message.text = "x".repeat(64 * 1024);
            Event::Queued(StoredMessage {
                seq,
                message,
                direction: Direction::Out,
                state: MessageState::Queued,
                updated_at: 0,
                error: None,
                peer_id: None,
                signed: None,
            })
        };
        for seq in 0..300 {
            events.try_send(big(seq));
        }
        let kept = journal.kept();
        assert!(kept.bytes <= JOURNAL_BYTES, "{} bytes kept", kept.bytes);
        assert!(
            kept.events.len() < 130,
            "{} messages of 64 KiB kept: the bytes bound them, not the count",
            kept.events.len()
        );
        assert_eq!(kept.first + kept.events.len() as u64 - 1, 300);
    }

    #[tokio::test]
    async fn one_who_fell_behind_or_asks_another_run_is_told_to_start_again() {
        let (events, _rx) = sender();
        let journal = Arc::clone(events.journal());
        let mut slow = journal.follow(journal.run(), 0).unwrap();
        for i in 0..JOURNAL_LEN + 1 {
            events.try_send(nudge(&format!("n{i}")));
        }
        assert!(matches!(
            slow.next().await,
            Err(Missed::NotKept {
                after: 0,
                first: 2,
                ..
            })
        ));
        assert!(matches!(
            journal.follow(journal.run(), 0),
            Err(Missed::NotKept { .. })
        ));
        let last = journal.last();
        assert!(journal.follow(journal.run(), last).is_ok());
        assert!(
            matches!(
                journal.follow(journal.run(), last + 1),
                Err(Missed::NotKept { .. })
            ),
            "a number never given out"
        );
        assert!(matches!(
            journal.follow("0000000000000000", last),
            Err(Missed::OtherRun { .. })
        ));
    }
}
