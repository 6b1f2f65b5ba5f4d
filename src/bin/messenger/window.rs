//! `messenger ui`: the buddy-list window in this terminal. It is the
//! home's running client, like `online`: registration and presence live,
//! peers accepted, the outbox delivered, and the other commands on the
//! home go through it while it runs.
//!
//! The window's state and drawing are the library's (`messenger::ui`);
//! this runs them: the terminal (raw mode, the alternate screen, pasting),
//! restored on every way out, and one loop over keys, the client's events,
//! answers, and the moments the window changes by itself. It sleeps when
//! nothing happens.

use std::io::Write;
use std::time::Instant;

use anyhow::anyhow;
use futures::StreamExt;
use libp2p::Multiaddr;
use messenger::agent::Agent;
use messenger::api::{Event, Response};
use messenger::home::Home;
use messenger::proto::name::ScreenName;
use messenger::ui::{self, Action, App, Connection, Me, Tag, Theme};
use ratatui::DefaultTerminal;
use ratatui::crossterm::event::{DisableBracketedPaste, EnableBracketedPaste, EventStream};
use ratatui::crossterm::{self, execute};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::running::{Running, Signals};
use crate::{Failure, exit};

/// The terminal in the window's modes; put back as it was when dropped,
/// and by the panic hook if the window panics.
struct Screen {
    terminal: DefaultTerminal,
}

impl Screen {
    fn enter() -> Result<Self, Failure> {
        // ratatui's init: raw mode, the alternate screen, and a panic hook
        // that restores the terminal before the panic is printed.
        let terminal = ratatui::try_init()
            .map_err(|e| Failure::new(exit::FAILURE, anyhow!("cannot set up the terminal: {e}")))?;
        let _ = execute!(std::io::stdout(), EnableBracketedPaste);
        Ok(Self { terminal })
    }

    fn draw(&mut self, app: &mut App) -> Result<(), Failure> {
        self.terminal
            .draw(|frame| ui::draw(app, frame, Instant::now()))
            .map(|_| ())
            .map_err(|e| Failure::new(exit::FAILURE, anyhow!("cannot draw the window: {e}")))
    }

    fn bell(&mut self) {
        let mut out = std::io::stdout();
        let _ = out.write_all(b"\x07");
        let _ = out.flush();
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = execute!(std::io::stdout(), DisableBracketedPaste);
        ratatui::restore();
    }
}

/// How a try at signing in went.
enum SignedIn {
    /// The agent, registered under this name.
    Yes(Agent, mpsc::Receiver<Event>, ScreenName),
    /// Why not, to show in the form.
    No(String),
}

/// Opens the window on `home`; `rendezvous`, unless empty, overrides the
/// remembered nodes.
pub(crate) async fn run(
    home: Home,
    rendezvous: Vec<Multiaddr>,
    listen: Vec<Multiaddr>,
) -> Result<(), Failure> {
    let config = home.config()?;
    let nodes = if rendezvous.is_empty() {
        &config.rendezvous
    } else {
        &rendezvous
    };
    let node = (!nodes.is_empty()).then(|| {
        nodes
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(",")
    });
    let me = Me {
        name: config.name.clone(),
        status: config.status.unwrap_or_default(),
        text: config.status_text.clone().unwrap_or_default(),
        connection: Connection::Connecting,
    };
    let mut app = App::new(me, node, Theme::from_env());
    app.bell = config.rings_bell();
    app.send_typing = config.sends_typing();
    let mut signals = Signals::new()?;
    let mut screen = Screen::enter()?;
    let mut keys = EventStream::new();

    // First run: the form, until a name is ours.
    let running = if app.sign_in.is_some() {
        let Some((agent, events, name)) =
            sign_in(&home, &mut app, &mut screen, &mut keys, &mut signals).await?
        else {
            return Ok(());
        };
        app.signed_in(name);
        Running::adopt(&home, agent, events, listen).await?
    } else {
        Running::start(&home, rendezvous, listen, None).await?
    };
    let result = run_window(&mut app, &mut screen, &mut keys, &mut signals, running).await;
    drop(screen);
    result
}

/// The first-run form; `None` when the user quit.
async fn sign_in(
    home: &Home,
    app: &mut App,
    screen: &mut Screen,
    keys: &mut EventStream,
    signals: &mut Signals,
) -> Result<Option<(Agent, mpsc::Receiver<Event>, ScreenName)>, Failure> {
    let mut trying: JoinSet<SignedIn> = JoinSet::new();
    loop {
        screen.draw(app)?;
        let actions = tokio::select! {
            key = keys.next() => match key {
                Some(Ok(event)) => on_terminal(app, event),
                Some(Err(e)) => return Err(Failure::new(exit::FAILURE, anyhow!("cannot read the terminal: {e}"))),
                None => return Ok(None),
            },
            Some(done) = trying.join_next(), if !trying.is_empty() => match done {
                Ok(SignedIn::Yes(agent, events, name)) => return Ok(Some((agent, events, name))),
                Ok(SignedIn::No(why)) => {
                    app.sign_in_failed(why);
                    Vec::new()
                }
                Err(e) => {
                    app.sign_in_failed(format!("signing in failed: {e}"));
                    Vec::new()
                }
            },
            _ = signals.recv() => return Ok(None),
        };
        for action in actions {
            match action {
                Action::Quit => return Ok(None),
                Action::SignIn { rendezvous, name } => {
                    trying.spawn(try_sign_in(home.clone(), rendezvous, name));
                }
                _ => {}
            }
        }
    }
}

/// Claims `name` at the node `rendezvous` (or the nodes, separated by
/// commas), with an agent of the home.
async fn try_sign_in(home: Home, rendezvous: String, name: String) -> SignedIn {
    match messenger::agent::sign_in(home, &rendezvous, &name).await {
        Ok(signed) => SignedIn::Yes(signed.agent, signed.events, signed.name),
        Err(failure) => SignedIn::No(failure.message),
    }
}

/// A terminal event, as the window's actions.
fn on_terminal(app: &mut App, event: crossterm::event::Event) -> Vec<Action> {
    use crossterm::event::Event as T;
    let now = Instant::now();
    match event {
        T::Key(key) => app.on_key(key, now),
        T::Paste(text) => app.on_paste(&text, now),
        // A resize is drawn by the loop like anything else.
        _ => Vec::new(),
    }
}

/// The window, online, until the user quits or a signal comes.
async fn run_window(
    app: &mut App,
    screen: &mut Screen,
    keys: &mut EventStream,
    signals: &mut Signals,
    mut running: Running,
) -> Result<(), Failure> {
    let mut calls: JoinSet<(Tag, Response)> = JoinSet::new();
    let mut pending = app.start();
    let result = loop {
        let mut quit = false;
        for action in pending.drain(..) {
            match action {
                Action::Call(tag, request) => {
                    let agent = running.agent.clone();
                    calls.spawn(async move { (tag, agent.call(request).await) });
                }
                Action::Bell => screen.bell(),
                Action::Quit => quit = true,
                Action::SignIn { .. } => {}
            }
        }
        if quit {
            break Ok(());
        }
        if let Err(e) = screen.draw(app) {
            break Err(e);
        }
        let wake = app.next_change(Instant::now());
        let timer = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        pending = tokio::select! {
            key = keys.next() => match key {
                Some(Ok(event)) => on_terminal(app, event),
                Some(Err(e)) => break Err(Failure::new(exit::FAILURE, anyhow!("cannot read the terminal: {e}"))),
                None => break Ok(()),
            },
            event = running.events.recv() => match event {
                Some(event) => app.on_event(event, Instant::now()),
                None => break Ok(()),
            },
            Some(done) = calls.join_next(), if !calls.is_empty() => match done {
                Ok((tag, response)) => app.on_reply(tag, response),
                Err(_) => Vec::new(),
            },
            () = timer => {
                app.tick(Instant::now());
                Vec::new()
            }
            _ = signals.recv() => break Ok(()),
        };
    };
    calls.abort_all();
    while calls.join_next().await.is_some() {}
    running.stop().await;
    result
}
