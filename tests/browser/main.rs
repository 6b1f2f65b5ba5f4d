//! The web window in a real browser: headless Chromium, driven through
//! chromedriver (WebDriver), against the real `messenger` and `rendezvous`
//! binaries as processes on 127.0.0.1 with temporary homes. The page is
//! found and used by what a user sees: controls by their accessible names,
//! the contact list by its items' words.
//!
//! Its doors (point 4 of the web window) are knocked on with plain HTTP
//! requests against the same processes.
//!
//! A test binary of its own: a browser takes most of a core, so these
//! never share the machine with the timing of the other end-to-end tests.

#![allow(unreachable_pub, clippy::unwrap_used)]

mod doors;
mod page;

// The real binaries as processes, and the browser.
use messenger::testing::browser;
use messenger::testing::processes as support;
