use super::*;

fn source(ip: &str) -> Source {
    Source(ip.parse().unwrap())
}

fn shed(ticket: &Ticket) -> bool {
    ticket.signal.shed.load(Ordering::Acquire)
}

#[test]
fn one_source_over_its_limit_sheds_its_own_oldest_once_stale() {
    let gate = HandshakeGate::new(GateLimits {
        per_source: 2,
        total: 100,
        stale_after: Duration::ZERO,
    });
    let a1 = gate.admit(source("10.0.0.1")).unwrap();
    let a2 = gate.admit(source("10.0.0.1")).unwrap();
    let b = gate.admit(source("10.0.0.2")).unwrap();
    // Every handshake is stale at once here (stale_after zero).
    let a3 = gate.admit(source("10.0.0.1")).unwrap();
    assert!(shed(&a1), "the oldest of the flooding source goes");
    assert!(!shed(&a2) && !shed(&a3) && !shed(&b));
    assert_eq!(gate.pending(), 3);
    assert_eq!(gate.shed_counts().per_source.load(Ordering::Relaxed), 1);
    drop((a1, a2, a3, b));
    assert_eq!(gate.pending(), 0, "dropped tickets free their places");
}

#[test]
fn a_full_gate_sheds_from_the_busiest_source_not_the_newcomer() {
    let gate = HandshakeGate::new(GateLimits {
        per_source: 10,
        total: 4,
        stale_after: Duration::from_secs(3600),
    });
    let honest = gate.admit(source("192.0.2.7")).unwrap();
    let flood: Vec<Ticket> = (0..3)
        .map(|_| gate.admit(source("10.0.0.1")).unwrap())
        .collect();
    // Full: a newcomer from a third address pushes out the flood's
    // oldest, never the honest handshake nor itself.
    let newcomer = gate.admit(source("198.51.100.9")).unwrap();
    assert!(shed(&flood[0]));
    assert!(!shed(&honest) && !shed(&newcomer));
    assert!(!shed(&flood[1]) && !shed(&flood[2]));
    assert_eq!(gate.pending(), 4);
    // The flood's source, now no busier than the newcomer's by two,
    // keeps its young handshakes: a storm of sources with one each is
    // turned away while the places are held by handshakes in time.
    drop(flood);
    let _crowd: Vec<Ticket> = (1..=2)
        .map(|i| gate.admit(source(&format!("10.1.0.{i}"))).unwrap())
        .collect();
    assert_eq!(gate.pending(), 4);
    assert!(gate.admit(source("10.1.0.9")).is_none(), "turned away");
    assert_eq!(gate.shed_counts().turned_away.load(Ordering::Relaxed), 1);
    assert!(!shed(&honest) && !shed(&newcomer));
}

#[test]
fn a_storm_from_one_source_is_turned_away_not_shed_until_stale() {
    let gate = HandshakeGate::new(GateLimits {
        per_source: 3,
        total: 3,
        stale_after: Duration::from_millis(50),
    });
    let first: Vec<Ticket> = (0..3)
        .map(|_| gate.admit(source("10.0.0.1")).unwrap())
        .collect();
    assert!(gate.admit(source("10.0.0.1")).is_none());
    assert!(first.iter().all(|t| !shed(t)), "work in progress is kept");
    // Once the oldest has had its time, a newcomer takes its place.
    std::thread::sleep(Duration::from_millis(60));
    let late = gate.admit(source("10.0.0.1")).unwrap();
    assert!(shed(&first[0]) && !shed(&first[1]) && !shed(&late));
}

#[test]
fn quic_newcomers_at_a_bound_prove_their_address_first() {
    let gate = HandshakeGate::new(GateLimits {
        per_source: 2,
        total: 3,
        stale_after: Duration::from_secs(3600),
    });
    let admitted = |a: Admission| match a {
        Admission::Admitted(t) => t,
        other => panic!("{other:?}"),
    };
    let a1 = admitted(gate.try_admit(source("10.0.0.1"), false));
    let a2 = admitted(gate.try_admit(source("10.0.0.1"), false));
    // The flooding address at its bound: prove it, then be dropped.
    assert!(matches!(
        gate.try_admit(source("10.0.0.1"), false),
        Admission::ProveAddress
    ));
    assert!(matches!(
        gate.try_admit(source("10.0.0.1"), true),
        Admission::Refused
    ));
    assert!(
        !shed(&a1) && !shed(&a2),
        "nothing is shed for its own newcomers"
    );
    let b = admitted(gate.try_admit(source("10.0.0.2"), false));
    // Full: another address proves itself and takes the busiest's
    // oldest place.
    assert!(matches!(
        gate.try_admit(source("10.0.0.3"), false),
        Admission::ProveAddress
    ));
    let c = admitted(gate.try_admit(source("10.0.0.3"), true));
    assert!(shed(&a1) && !shed(&a2) && !shed(&b) && !shed(&c));
    let counts = gate.shed_counts();
    assert_eq!(counts.retried.load(Ordering::Relaxed), 2);
    assert_eq!(counts.refused.load(Ordering::Relaxed), 1);
}

#[test]
fn ipv4_on_a_dual_stack_socket_is_counted_as_ipv4() {
    let mapped: Multiaddr = "/ip6/::ffff:192.0.2.7/udp/1/quic-v1".parse().unwrap();
    let plain: Multiaddr = "/ip4/192.0.2.7/tcp/2".parse().unwrap();
    let other: Multiaddr = "/ip6/::ffff:192.0.2.8/udp/1/quic-v1".parse().unwrap();
    assert_eq!(Source::of(&mapped), Source::of(&plain));
    assert_ne!(
        Source::of(&mapped),
        Source::of(&other),
        "two IPv4 users are two sources, not one ::ffff:0:0/64"
    );
    assert_eq!(Source::of(&mapped).unwrap().to_string(), "192.0.2.7");
}

#[test]
fn the_pace_decays_when_handshakes_stop_finishing() {
    let mut pace = Pace::default();
    let t0 = Instant::now();
    for i in 0..200 {
        pace.finished(t0 + Duration::from_millis(i * 5));
    }
    pace.roll(t0 + Duration::from_secs(1));
    let busy = pace.per_second;
    assert!((150.0..=250.0).contains(&busy), "{busy}");
    // Nothing finishes for four seconds: the pace falls with time, as
    // newcomers arrive and roll the window, not only when one finishes.
    pace.roll(t0 + Duration::from_secs(5));
    assert!(
        pace.per_second < busy / 8.0,
        "{} of {busy}",
        pace.per_second
    );
    let gate = HandshakeGate::new(GateLimits {
        per_source: 8,
        total: 512,
        stale_after: Duration::from_secs(5),
    });
    gate.state().pace = pace;
    assert_eq!(gate.room_now(), MIN_PENDING);
}

#[test]
fn stale_follows_what_handshakes_take_lately() {
    let gate = HandshakeGate::new(GateLimits {
        per_source: 8,
        total: 512,
        stale_after: Duration::from_secs(5),
    });
    assert_eq!(gate.stale_after(), UNMEASURED_STALE, "nothing measured yet");
    let now = Instant::now();
    let took = |ms: u64| (now, Duration::from_millis(ms));
    // An idle node: handshakes take milliseconds.
    gate.state().durations = (0..64).map(|i| took(10 + i % 5)).collect();
    assert_eq!(gate.stale_after(), MIN_STALE);
    // A crowd: about a second's wait each.
    gate.state().durations = (0..64).map(|i| took(900 + i * 5)).collect();
    assert_eq!(gate.stale_after(), Duration::from_millis(4 * 1060));
    gate.state().durations = (0..64).map(|_| took(2000)).collect();
    assert_eq!(
        gate.stale_after(),
        Duration::from_secs(5),
        "at most the bound"
    );
    gate.state().durations = (0..64).map(|_| took(300)).collect();
    assert_eq!(gate.stale_after(), Duration::from_millis(1200));
    // What was measured long ago does not count.
    let Some(long_ago) = now.checked_sub(Duration::from_secs(120)) else {
        return;
    };
    gate.state().durations = (0..64)
        .map(|_| (long_ago, Duration::from_secs(2)))
        .collect();
    assert_eq!(gate.stale_after(), UNMEASURED_STALE);
}

#[test]
fn places_held_by_handshakes_recycled_to_look_young_go_to_newcomers() {
    let gate = HandshakeGate::new(GateLimits {
        per_source: 8,
        total: 4,
        stale_after: Duration::from_secs(5),
    });
    gate.state().durations = (0..64)
        .map(|_| (Instant::now(), Duration::from_millis(20)))
        .collect();
    // Four sources hold one place each (as 300 would hold 300); none
    // hoards, and they are young by the configured bound.
    let held: Vec<Ticket> = (1..=4)
        .map(|i| gate.admit(source(&format!("10.9.0.{i}"))).unwrap())
        .collect();
    assert!(
        gate.admit(source("192.0.2.1")).is_none(),
        "all young: turned away"
    );
    std::thread::sleep(MIN_STALE + Duration::from_millis(20));
    let honest = gate.admit(source("192.0.2.1"));
    assert!(
        honest.is_some(),
        "an idle node's handshake that lasted 0.5 s is stale"
    );
    assert!(shed(&held[0]) && !shed(&held[1]));
}

#[test]
fn ipv6_sources_are_their_64_prefix() {
    let a: Multiaddr = "/ip6/2001:db8:1:2:aaaa::1/tcp/1".parse().unwrap();
    let b: Multiaddr = "/ip6/2001:db8:1:2:bbbb::9/tcp/2".parse().unwrap();
    let c: Multiaddr = "/ip6/2001:db8:1:3::1/tcp/2".parse().unwrap();
    assert_eq!(Source::of(&a), Source::of(&b));
    assert_ne!(Source::of(&a), Source::of(&c));
    assert_eq!(Source::of(&a).unwrap().to_string(), "2001:db8:1:2::/64");
    let memory: Multiaddr = "/memory/5".parse().unwrap();
    assert_eq!(Source::of(&memory), None);
}

#[test]
fn a_shed_handshake_fails_and_wakes() {
    let gate = HandshakeGate::new(GateLimits {
        per_source: 1,
        total: 10,
        stale_after: Duration::ZERO,
    });
    let mut upgrade = GatedUpgrade {
        inner: Some(Box::pin(futures::future::pending::<Result<(), ()>>())),
        ticket: gate.admit(source("10.0.0.1")),
    };
    let waker = futures::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    assert!(Pin::new(&mut upgrade).poll(&mut cx).is_pending());
    let _next = gate.admit(source("10.0.0.1"));
    assert!(matches!(
        Pin::new(&mut upgrade).poll(&mut cx),
        Poll::Ready(Err(GateError::Shed))
    ));
    assert_eq!(gate.pending(), 1);
}
