//! Test hosts in network namespaces: a public segment (a bridge) with the
//! rendezvous node and public users, and private networks each behind its
//! own NAT router (iptables MASQUERADE, plus the inbound filtering of a home
//! router). Addresses come from documentation (198.51.100.0/24) and private
//! ranges and exist only inside these namespaces. Everything is removed when
//! the lab is dropped, also when the test fails.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The public segment's prefix.
pub const PUBLIC_NET: &str = "198.51.100";

pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run a lab command");
    assert!(
        out.status.success(),
        "lab command {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Lab {
    /// A new lab, or `None` (said loudly) when this machine cannot build one.
    pub fn new(test: &str) -> Option<Self> {
        let uid = Command::new("id").arg("-u").output().ok();
        let root = uid.is_some_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let missing: Vec<&str> = ["ip", "iptables"]
            .into_iter()
            .filter(|t| !have(t))
            .collect();
        if !root || !missing.is_empty() {
            let why = if root {
                format!("missing {}", missing.join(" and "))
            } else {
                "not running as root".to_owned()
            };
            // CI has all it needs (.ci/run installs it): a missing piece
            // there is a failure, not a skip.
            crate::support::skip(
                test,
                &format!("root and iproute2 + iptables to build network namespaces ({why})"),
            );
            return None;
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "mlab{}x{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Self {
            prefix,
            namespaces: Vec::new(),
        };
        let sw = lab.add_ns("sw");
        run(&["ip", "-n", &sw, "link", "add", "br0", "type", "bridge"]);
        run(&["ip", "-n", &sw, "link", "set", "br0", "up"]);
        Some(lab)
    }

    /// The namespace of a host.
    pub fn ns(&self, host: &str) -> String {
        format!("{}{host}", self.prefix)
    }

    fn add_ns(&mut self, host: &str) -> String {
        let ns = self.ns(host);
        run(&["ip", "netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    /// Plugs `ifname` of `host` into the public segment with address `.last`.
    fn plug(&mut self, host: &str, ifname: &str, last: u8) {
        let (ns, sw) = (self.ns(host), self.ns("sw"));
        run(&[
            "ip", "link", "add", ifname, "netns", &ns, "type", "veth", "peer", "name", host,
            "netns", &sw,
        ]);
        run(&["ip", "-n", &sw, "link", "set", host, "master", "br0", "up"]);
        let addr = format!("{PUBLIC_NET}.{last}/24");
        run(&["ip", "-n", &ns, "addr", "add", &addr, "dev", ifname]);
        run(&["ip", "-n", &ns, "link", "set", ifname, "up"]);
    }

    /// A host directly on the public segment; returns its namespace.
    pub fn public_host(&mut self, host: &str, last: u8) -> String {
        self.add_ns(host);
        self.plug(host, "eth0", last);
        self.ns(host)
    }

    /// A private network `10.71.<net>.0/24` behind a NAT router whose public
    /// address ends in `.wan`, with one host at `.2`; returns the host's
    /// namespace.
    pub fn private_host(&mut self, host: &str, net: u8, wan: u8) -> String {
        let router = format!("{host}nat");
        let rns = self.add_ns(&router);
        self.plug(&router, "wan", wan);
        let hns = self.add_ns(host);
        run(&[
            "ip", "link", "add", "lan", "netns", &rns, "type", "veth", "peer", "name", "eth0",
            "netns", &hns,
        ]);
        let (gw, ip) = (format!("10.71.{net}.1"), format!("10.71.{net}.2"));
        run(&[
            "ip",
            "-n",
            &rns,
            "addr",
            "add",
            &format!("{gw}/24"),
            "dev",
            "lan",
        ]);
        run(&["ip", "-n", &rns, "link", "set", "lan", "up"]);
        run(&[
            "ip",
            "-n",
            &hns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            "eth0",
        ]);
        run(&["ip", "-n", &hns, "link", "set", "eth0", "up"]);
        run(&["ip", "-n", &hns, "route", "add", "default", "via", &gw]);
        let exec = |args: &[&str]| {
            let mut full = vec!["ip", "netns", "exec", &rns];
            full.extend_from_slice(args);
            run(&full);
        };
        exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        exec(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            "wan",
            "-j",
            "MASQUERADE",
        ]);
        // Like a home router: nothing unsolicited gets in, and the router
        // drops it silently rather than answering with a reset.
        for chain in [["INPUT", "-i", "wan"], ["FORWARD", "-i", "wan"]] {
            let mut accept = vec!["iptables", "-A"];
            accept.extend_from_slice(&chain);
            accept.extend_from_slice(&[
                "-m",
                "conntrack",
                "--ctstate",
                "ESTABLISHED,RELATED",
                "-j",
                "ACCEPT",
            ]);
            exec(&accept);
            let mut drop = vec!["iptables", "-A"];
            drop.extend_from_slice(&chain);
            drop.extend_from_slice(&["-j", "DROP"]);
            exec(&drop);
        }
        hns
    }

    /// Takes a public host's only interface away, as when a laptop loses
    /// its network: the veth pair is deleted, with its routes.
    pub fn unplug(&self, host: &str) {
        run(&["ip", "-n", &self.ns(host), "link", "del", "eth0"]);
    }

    /// Gives a public host its interface back, with address `.last`.
    pub fn replug(&mut self, host: &str, last: u8) {
        self.plug(host, "eth0", last);
    }

    /// Moves a public host from `.old` to `.new` on its interface.
    pub fn renumber(&self, host: &str, old: u8, new: u8) {
        let ns = self.ns(host);
        // Removed first: deleting a subnet's primary address would take
        // the secondaries with it.
        run(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "del",
            &format!("{PUBLIC_NET}.{old}/24"),
            "dev",
            "eth0",
        ]);
        run(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{PUBLIC_NET}.{new}/24"),
            "dev",
            "eth0",
        ]);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
