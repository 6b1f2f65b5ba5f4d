//! `messenger web`: the Messenger window as a page in the user's browser,
//! served on a loopback address by the home's client (this process's, or
//! the one already running on the home), until Ctrl-C or SIGTERM.
//!
//! The page and its doors are the library's (`messenger::web`); this picks
//! the client it talks to, prints the address to open and opens it.

use std::net::SocketAddr;

use anyhow::anyhow;
use libp2p::Multiaddr;
use messenger::api::Event;
use messenger::control;
use messenger::home::Home;
use messenger::web::{Backend, Serving, WebOptions, WebServer, sweep_uploads};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::output::Output;
use crate::running::{Running, Signals};
use crate::{Failure, exit};

/// What `messenger web` was asked.
#[derive(Debug)]
pub(crate) struct Options {
    /// Where to serve the page (`None`: loopback, a free port).
    pub(crate) listen: Option<SocketAddr>,
    /// Whether to open the user's browser.
    pub(crate) open: bool,
    /// Where the client accepts peers, when it runs here.
    pub(crate) peer_listen: Vec<Multiaddr>,
}

pub(crate) async fn run(
    home: Home,
    rendezvous: Vec<Multiaddr>,
    options: Options,
    out: &Output,
) -> Result<(), Failure> {
    let mut signals = Signals::new()?;
    let mut openers = JoinSet::new();

    // The home's client runs already: serve it.
    if control::is_running(home.dir()).await {
        let serving = Serving::Client(Backend::Control(home.dir().to_path_buf()));
        let web = serve(&home, options.listen, serving, out).await?;
        if options.open {
            openers.spawn(open_browser(home.clone(), web.url()));
        }
        tokio::select! {
            () = signals.recv() => {}
            () = told_when_opened(&web) => signals.recv().await,
        }
        web.stop().await;
        openers.abort_all();
        forget_launcher(&home);
        return Ok(());
    }

    // A home with a name: its client, online, as `online` runs it.
    let signed_up = home.config()?.name.is_some();
    let (running, web) = if signed_up {
        let running = Running::start(&home, rendezvous, options.peer_listen, None).await?;
        let serving = Serving::Client(Backend::Agent(running.agent.clone()));
        let web = match serve(&home, options.listen, serving, out).await {
            Ok(web) => web,
            Err(failure) => {
                running.stop().await;
                return Err(failure);
            }
        };
        if options.open {
            openers.spawn(open_browser(home.clone(), web.url()));
        }
        (running, web)
    } else {
        // A fresh home: the page signs in, and its client is taken online.
        let (signed_in, mut signing) = mpsc::channel(1);
        let serving = Serving::SignIn {
            home: home.clone(),
            signed_in,
        };
        let web = serve(&home, options.listen, serving, out).await?;
        if options.open {
            openers.spawn(open_browser(home.clone(), web.url()));
        }
        let signed = tokio::select! {
            signed = signing.recv() => signed,
            () = signals.recv() => None,
        };
        let Some(signed) = signed else {
            web.stop().await;
            openers.abort_all();
            forget_launcher(&home);
            return Ok(());
        };
        match Running::adopt(&home, signed.agent, signed.events, options.peer_listen).await {
            Ok(running) => (running, web),
            Err(failure) => {
                web.stop().await;
                return Err(failure);
            }
        }
    };
    let result = stay(running, &web, &mut signals).await;
    web.stop().await;
    openers.abort_all();
    forget_launcher(&home);
    result
}

/// Starts serving and prints the address to open.
pub(crate) async fn serve(
    home: &Home,
    listen: Option<SocketAddr>,
    serving: Serving,
    out: &Output,
) -> Result<WebServer, Failure> {
    let mut options = WebOptions::loopback(Some(home.dir().join("uploads")));
    if let Some(listen) = listen {
        options.listen = listen;
        options.any_address = true;
        if !listen.ip().is_loopback() {
            eprintln!(
                "warning: the web window is served on {listen}, beyond this machine: anyone who reaches it may knock on its door (the one-time token and the cookie still guard it, over plain HTTP)"
            );
        }
    }
    let uploads = options.uploads.clone();
    let backend = match &serving {
        Serving::Client(backend) => Some(backend.clone()),
        _ => None,
    };
    let web = WebServer::start(options, serving)
        .await
        .map_err(|e| Failure::new(exit::FAILURE, anyhow!(e)))?;
    // Copies of files the page offered that no offer needs any more.
    if let (Some(backend), Some(uploads)) = (backend, uploads) {
        sweep_uploads(&backend, &uploads).await;
    }
    let url = web.url();
    out.emit(
        format_args!("web {url}"),
        json!({"event": "web", "url": url}),
    );
    Ok(web)
}

/// Says (on stderr) when the page used the address's one-time token: the
/// user knows it is spent, and would notice if someone else spent it.
async fn told_when_opened(web: &WebServer) {
    web.opened().await;
    eprintln!("the page is open: its address worked once, and works no more");
}

/// Runs until a signal, or until the node refuses the registration.
async fn stay(mut running: Running, web: &WebServer, signals: &mut Signals) -> Result<(), Failure> {
    let mut told = false;
    let result = loop {
        tokio::select! {
            () = told_when_opened(web), if !told => told = true,
            event = running.events.recv() => match event {
                // The page shows everything else from its own follow.
                Some(Event::RegistrationRefused { reason }) => {
                    break Err(Failure::new(exit::FAILURE, anyhow!("the node refused the registration: {reason}")));
                }
                Some(_) => {}
                None => break Ok(()),
            },
            () = signals.recv() => break Ok(()),
        }
    };
    running.stop().await;
    result
}

/// The page that sends the browser on to the address with its token, in
/// the home (only its owner may read it).
fn launcher(home: &Home) -> std::path::PathBuf {
    home.dir().join("web-open.html")
}

fn forget_launcher(home: &Home) {
    let _ = std::fs::remove_file(launcher(home));
}

/// Opens `url` in the user's browser (`$BROWSER`, else `xdg-open`); says
/// so if it cannot, since the address was printed anyway. The browser is
/// given a file of the home that redirects to the address, never the
/// address itself: a command line is visible to every user of the machine
/// (`ps`), a file in the home only to its owner.
async fn open_browser(home: Home, url: String) {
    let path = launcher(&home);
    let page = format!(
        "<!doctype html><meta charset=\"utf-8\"><meta name=\"referrer\" content=\"no-referrer\"><meta http-equiv=\"refresh\" content=\"0;url={url}\"><title>Messenger</title><a href=\"{url}\">Open Messenger</a>\n"
    );
    let written = {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut file| file.write_all(page.as_bytes()))
    };
    if let Err(e) = written {
        eprintln!(
            "cannot write {} ({e}): open the address above yourself",
            path.display()
        );
        return;
    }
    let opener = std::env::var("BROWSER").unwrap_or_else(|_| "xdg-open".to_owned());
    let opened = tokio::process::Command::new(&opener)
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await;
    match opened {
        Ok(status) if status.success() => {}
        Ok(status) => eprintln!("{opener} ended with {status}: open the address above yourself"),
        Err(e) => eprintln!("cannot run {opener} ({e}): open the address above yourself"),
    }
}
