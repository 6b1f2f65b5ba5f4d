//! What the binaries print about themselves: completion scripts and
//! manual pages, and plain `messenger` without a terminal.

use std::process::{Command, Stdio};

use crate::support::{messenger_bin, rendezvous_bin};

fn output(bin: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn completion_scripts_and_manual_pages_for_both_binaries() {
    for (bin, name, commands) in [
        (
            messenger_bin(),
            "messenger",
            &["ui", "send", "online", "contacts", "completions"][..],
        ),
        (rendezvous_bin(), "rendezvous", &["completions", "man"][..]),
    ] {
        let (code, bash, _) = output(&bin, &["completions", "bash"]);
        assert_eq!(code, 0);
        assert!(
            bash.contains(&format!("complete -F _{name}")),
            "{name}: {bash}"
        );
        for command in commands {
            assert!(
                bash.contains(command),
                "{name}'s completions know {command}"
            );
        }
        // The script is valid bash.
        let mut check = Command::new("bash")
            .arg("-n")
            .stdin(Stdio::piped())
            .spawn()
            .expect("bash");
        std::io::Write::write_all(check.stdin.as_mut().unwrap(), bash.as_bytes()).unwrap();
        drop(check.stdin.take());
        assert!(
            check.wait().unwrap().success(),
            "{name}'s bash completions parse"
        );
        for shell in ["zsh", "fish", "elvish", "powershell"] {
            let (code, script, _) = output(&bin, &["completions", shell]);
            assert!(code == 0 && script.contains(name), "{name} {shell}");
        }
        let (code, man, _) = output(&bin, &["man"]);
        assert_eq!(code, 0);
        assert!(man.contains(&format!(".TH {name} 1")), "{name}: {man}");
        assert!(
            man.contains(".SH NAME") && man.contains(".SH OPTIONS"),
            "{name}"
        );
    }
    // A shell that does not exist is refused, naming the ones that do.
    let (code, _, err) = output(&messenger_bin(), &["completions", "tcsh"]);
    assert_eq!(code, 2);
    assert!(err.contains("bash") && err.contains("zsh"), "{err}");
}

#[test]
fn plain_messenger_without_a_terminal_says_what_to_do() {
    let (code, _, err) = output(&messenger_bin(), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no command given") && err.contains("messenger --help"),
        "{err}"
    );
    let home = tempfile::tempdir().unwrap();
    let home = home.path().to_str().unwrap();
    let (code, _, err) = output(&messenger_bin(), &["--home", home, "ui"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("the window needs a terminal"), "{err}");
}
