//! Headless Chromium under chromedriver, one per test, with a profile of
//! its own; and the ways a test finds what the page shows.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::{Element, ElementRef};
use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};

use super::processes::{self as support, Lines};

/// How long a test waits for the page to show something.
const PATIENCE: Duration = Duration::from_secs(30);

/// How often the page is looked at while waiting.
const LOOK_EVERY: Duration = Duration::from_millis(40);

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The WebDriver key of an element in a script's result.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A browser; its processes (chromedriver and the Chromium it started,
/// one process group) are killed when it is dropped.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts one, or says the test is skipped (failing under CI) when
    /// Chromium or chromedriver is missing.
    pub async fn start(test: &str) -> Option<Self> {
        if !std::path::Path::new(CHROMIUM).exists() || !std::path::Path::new(CHROMEDRIVER).exists()
        {
            support::skip(test, "Debian's chromium and chromium-driver");
            return None;
        }
        let profile = tempfile::tempdir().expect("a profile directory");
        let (driver, port) = start_driver();
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--window-size=1280,800".to_owned(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a WebDriver session with Chromium");
        Some(Self {
            client,
            driver,
            _profile: profile,
        })
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("open the page");
    }

    /// Runs `script` (a function body; `arguments` are `args`).
    pub async fn run(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .expect("run a script")
    }

    /// Waits until `script` returns something truthy, and returns it.
    pub async fn until(&self, what: &str, script: &str, args: Vec<Value>) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let value = self.run(script, args.clone()).await;
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            if Instant::now() > deadline {
                let shown = self.run("return document.body.innerText", vec![]).await;
                panic!(
                    "timed out waiting for {what}; the page shows:\n{}",
                    shown.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(LOOK_EVERY).await;
        }
    }

    /// Waits for the control of `role` whose accessible name is `name`,
    /// shown (a file input may be hidden behind its label).
    pub async fn control(&self, role: &str, name: &str) -> Element {
        let found = self
            .until(
                &format!("the {role} {name:?}"),
                FIND,
                vec![json!(role), json!(name)],
            )
            .await;
        self.element(found)
    }

    /// Waits until the page's text shows `text`.
    pub async fn shows(&self, text: &str) {
        self.until(
            &format!("{text:?} on the page"),
            "return document.body.innerText.includes(arguments[0])",
            vec![json!(text)],
        )
        .await;
    }

    /// The item of the list named "Contacts" for `name`: its accessible
    /// words ("bob, Online, lunch, 2 unread").
    pub async fn contact_words(&self, name: &str) -> String {
        self.run(CONTACT_WORDS, vec![json!(name)])
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits until `name`'s item in "Contacts" says `pred`.
    pub async fn contact_until(&self, name: &str, what: &str, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let words = self.contact_words(name).await;
            if pred(&words) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {name} to be {what} in Contacts; it says {words:?}"
            );
            tokio::time::sleep(LOOK_EVERY).await;
        }
    }

    fn element(&self, found: Value) -> Element {
        let id = found[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("a script returns an element, not {found}"))
            .to_owned();
        Element::from_element_id(self.client.clone(), ElementRef::from(id))
    }

    /// Types into the control named `name`.
    pub async fn fill(&self, role: &str, name: &str, text: &str) {
        let control = self.control(role, name).await;
        control.clear().await.expect("clear");
        control.send_keys(text).await.expect("type");
    }

    /// Clicks the button named `name`.
    pub async fn press(&self, name: &str) {
        self.control("button", name)
            .await
            .click()
            .await
            .expect("click");
    }

    /// Types `keys` where the focus is, as a keyboard does (WebDriver's
    /// key actions: what a keyboard sends, whatever has the focus).
    pub async fn keys(&self, keys: &str) {
        use fantoccini::actions::{InputSource, KeyAction, KeyActions};
        let mut typing = KeyActions::new("keyboard".to_owned());
        for key in keys.chars() {
            typing = typing
                .then(KeyAction::Down { value: key })
                .then(KeyAction::Up { value: key });
        }
        self.client.perform_actions(typing).await.expect("type");
    }

    /// The accessible name of what has the focus.
    pub async fn focused(&self) -> String {
        self.run(FOCUSED, vec![])
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Presses Tab until the focus is on a control whose accessible name
    /// `pred` accepts (at most 60 times); returns that name.
    pub async fn tab_to(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let tab = fantoccini::key::Key::Tab.to_string();
        let mut seen = Vec::new();
        for _ in 0..60 {
            let name = self.focused().await;
            if pred(&name) {
                return name;
            }
            seen.push(name);
            self.keys(&tab).await;
        }
        panic!("Tab never reached {what}; the focus went through {seen:?}");
    }

    pub async fn screenshot(&self, path: &std::path::Path) {
        let png = self.client.screenshot().await.expect("a screenshot");
        std::fs::write(path, png).expect("write the screenshot");
    }

    /// Ends the session (Chromium quits), then the driver.
    pub async fn close(mut self) {
        let client = self.client.clone();
        let _ = client.close().await;
        self.kill();
    }

    fn kill(&mut self) {
        let group = self.driver.id();
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{group}")])
            .status();
        let _ = self.driver.wait();
    }
}

/// chromedriver on a free port. With port 0 it picks one for IPv6 and
/// then tries the same number for IPv4, which another program (another
/// test's browser) may hold: then it says so and exits, and is started
/// again.
fn start_driver() -> (Child, u16) {
    for _ in 0..10 {
        let mut driver = Command::new(CHROMEDRIVER);
        driver
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            // Its own process group: Chromium joins it, and both go on drop.
            .process_group(0);
        let mut driver = driver.spawn().expect("start chromedriver");
        let mut lines = Lines::spawn(driver.stdout.take().expect("chromedriver's stdout"));
        let said = lines.expect("chromedriver's port", |l| {
            l.contains("started successfully on port") || l.contains("Exiting")
        });
        if said.contains("Exiting") {
            let _ = driver.kill();
            let _ = driver.wait();
            continue;
        }
        let port: u16 = said
            .trim_end_matches('.')
            .rsplit(' ')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a port in chromedriver's line");
        return (driver, port);
    }
    panic!("chromedriver found no free port in 10 tries");
}

impl Drop for Browser {
    fn drop(&mut self) {
        if self.driver.try_wait().ok().flatten().is_none() {
            self.kill();
        }
    }
}

/// Finds a shown control by role and accessible name (its `aria-label`,
/// else its label's text, else its own text), as assistive technology
/// and a user would.
const FIND: &str = r#"
const [role, name] = arguments;
const selectors = {
  button: 'button, [role="button"]',
  textbox: 'input:not([type]), input[type="text"], input[type="number"], textarea',
  combobox: 'select',
  file: 'input[type="file"]',
  tab: '[role="tab"]',
};
function accessibleName(e) {
  const label = e.getAttribute('aria-label');
  if (label) return label.trim();
  if (e.labels && e.labels.length) return e.labels[0].textContent.trim();
  return e.textContent.trim();
}
function shown(e) {
  return e.getClientRects().length > 0 && !e.closest('[hidden]');
}
return [...document.querySelectorAll(selectors[role])]
  .find((e) => accessibleName(e) === name && (role === 'file' || shown(e))) || null;
"#;

/// The accessible name of the focused element.
const FOCUSED: &str = r#"
const e = document.activeElement;
if (!e || e === document.body) return '';
const label = e.getAttribute('aria-label');
if (label) return label.trim();
if (e.labels && e.labels.length) return e.labels[0].textContent.trim();
return e.textContent.trim();
"#;

/// The accessible words of `name`'s item in the list named "Contacts".
const CONTACT_WORDS: &str = r#"
const list = document.querySelector('[aria-label="Contacts"]');
if (!list) return '';
for (const item of list.querySelectorAll('li')) {
  const open = item.querySelector('button');
  if (!open) continue;
  const words = open.getAttribute('aria-label') || open.textContent;
  if (words.split(', ')[0] === arguments[0]) return words;
}
return '';
"#;
