//! `depot-receive --log-to syslog` as an admin deploys it: a forced command
//! behind a real sshd, logging to a real rsyslogd (Debian's `rsyslog`) that
//! listens on its own socket in the test's directory (never `/dev/log`) and
//! writes every message to a file there. A syslog that cannot be reached
//! must not fail a push.

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::sshd::{Account, Sshd};
use crate::util::*;

const RSYSLOGD: &str = "/usr/sbin/rsyslogd";
const INSTALL_HINT: &str =
    "scripts/test.sh installs it (apt-get install rsyslog); the syslog tests run a real rsyslogd";

/// A running rsyslogd, killed on drop.
pub(crate) struct Rsyslogd {
    child: Child,
    socket: PathBuf,
    messages: PathBuf,
    output: PathBuf,
}

impl Rsyslogd {
    /// Starts rsyslogd in the foreground with its config, pid file, socket
    /// and output in `dir` (created). Each message is written as
    /// `FACILITY.SEVERITY TAG MSG|raw=DATAGRAM`.
    pub(crate) fn start(dir: &Path) -> Rsyslogd {
        assert!(
            Path::new(RSYSLOGD).exists(),
            "{RSYSLOGD} is missing. {INSTALL_HINT}"
        );
        fs::create_dir_all(dir).expect("mkdir rsyslog dir");
        let socket = dir.join("log.sock");
        let messages = dir.join("messages");
        let config = dir.join("rsyslog.conf");
        fs::write(
            &config,
            format!(
                "global(workDirectory=\"{dir}\")\n\
                 module(load=\"imuxsock\" SysSock.Use=\"off\")\n\
                 input(type=\"imuxsock\" Socket=\"{socket}\")\n\
                 template(name=\"depot\" type=\"string\" \
                 string=\"%syslogfacility-text%.%syslogseverity-text% %syslogtag%%msg%|raw=%rawmsg%\\n\")\n\
                 *.* action(type=\"omfile\" file=\"{messages}\" template=\"depot\")\n",
                dir = dir.display(),
                socket = socket.display(),
                messages = messages.display(),
            ),
        )
        .expect("write rsyslog.conf");
        ok(Command::new(RSYSLOGD).arg("-N1").arg("-f").arg(&config));
        let output = dir.join("rsyslogd.out");
        let child = Command::new(RSYSLOGD)
            .arg("-n")
            .arg("-f")
            .arg(&config)
            .arg("-i")
            .arg(dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(fs::File::create(&output).expect("rsyslogd output"))
            .stderr(Stdio::from(
                fs::File::options()
                    .append(true)
                    .open(&output)
                    .expect("rsyslogd output"),
            ))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {RSYSLOGD}: {e}. {INSTALL_HINT}"));
        let mut rsyslogd = Rsyslogd {
            child,
            socket,
            messages,
            output,
        };
        // imuxsock binds its socket before rsyslogd reads from it; datagrams
        // sent from then on wait in the socket's queue.
        wait_until(
            "rsyslogd to create its socket",
            Duration::from_secs(10),
            || {
                assert!(
                    rsyslogd.child.try_wait().expect("poll rsyslogd").is_none(),
                    "rsyslogd exited:\n{}",
                    fs::read_to_string(&rsyslogd.output).unwrap_or_default()
                );
                rsyslogd.socket.exists()
            },
        );
        rsyslogd
    }

    /// The socket it listens on (what `/dev/log` is on a server).
    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }

    /// The lines rsyslogd wrote so far that came from depot-receive.
    pub(crate) fn depot_lines(&self) -> Vec<String> {
        fs::read_to_string(&self.messages)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" depot-receive["))
            .map(str::to_string)
            .collect()
    }

    /// Waits for a depot-receive line containing `needle`, and returns it.
    pub(crate) fn wait_for(&self, needle: &str) -> String {
        let mut found = None;
        wait_until(
            &format!("rsyslogd to write a depot-receive line with {needle:?}"),
            Duration::from_secs(20),
            || {
                found = self.depot_lines().into_iter().find(|l| l.contains(needle));
                found.is_some()
            },
        );
        found.expect("found")
    }
}

impl Drop for Rsyslogd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- rsyslogd output ---\n{}\n--- messages ---\n{}",
                fs::read_to_string(&self.output).unwrap_or_default(),
                fs::read_to_string(&self.messages).unwrap_or_default()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `depot push --json --to URL --ssh-command ... --ref REF TREE`.
fn push(sshd: &Sshd, key: &Account, ref_name: &str, tree: &Path) -> Output {
    run(depot()
        .args(["push", "--json", "--no-progress", "--to"])
        .arg(sshd.url(""))
        .arg("--ssh-command")
        .arg(key.ssh_command())
        .args(["--ref", ref_name, "-s", "syslog test"])
        .arg(tree))
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tree(dir: &Path) -> PathBuf {
    fs::create_dir_all(dir.join("sub")).expect("mkdir");
    fs::write(dir.join("sub/a"), "one\n").expect("write");
    fs::write(dir.join("b"), "two\n").expect("write");
    dir.to_path_buf()
}

#[test]
fn each_push_leaves_one_line_in_a_real_rsyslogd() {
    let tmp = tempdir();
    let rsyslogd = Rsyslogd::start(&tmp.path().join("rsyslog"));
    let sshd = Sshd::start(&tmp.path().join("sshd"));
    let repo = tmp.path().join("server");
    ok(depot().arg("init").arg(&repo));
    let socket = rsyslogd.socket.to_string_lossy().into_owned();
    let ci = sshd.account(
        "ci",
        &repo,
        &tmp.path().join("state"),
        &[
            "--allow-ref",
            "proj/**",
            "--log-to",
            "syslog",
            "--syslog-socket",
            &socket,
        ],
    );
    let tree = tree(&tmp.path().join("tree"));

    let out = push(&sshd, &ci, "proj/app/1", &tree);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "push failed:\n{stdout}\n{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("push --json");
    let commit = json["refs"][0]["new"].as_str().expect("new commit");
    assert_eq!(read_ref(&repo, "proj/app/1"), commit);
    assert!(
        !stderr.contains("push ok") && !stderr.contains("syslog"),
        "with syslog the client's stderr gets no server log: {stderr}"
    );

    let line = rsyslogd.wait_for("proj/app/1");
    let (parsed, raw) = line.split_once("|raw=").expect("template's |raw=");
    // What rsyslogd understood: facility daemon, severity info, the tag.
    assert!(parsed.starts_with("daemon.info depot-receive["), "{parsed}");
    for want in [
        "]: push ok ",
        "key=ci",
        "refs=[\"proj/app/1\"]",
        "objects=",
        "bytes=",
    ] {
        assert!(parsed.contains(want), "{want:?} missing from {parsed}");
    }
    // What went over the socket: RFC 3164's local form, <PRI>Mmm dd hh:mm:ss TAG[PID]: MSG.
    let rest = raw.strip_prefix("<30>").unwrap_or_else(|| panic!("{raw}"));
    let (stamp, tagged) = rest.split_at(15);
    let months = "JanFebMarAprMayJunJulAugSepOctNovDec";
    assert!(months.contains(&stamp[..3]), "month in {raw}");
    assert!(
        stamp[3..].chars().enumerate().all(|(i, c)| match i {
            0 | 3 => c == ' ',
            6 | 9 => c == ':',
            1 => c == ' ' || c.is_ascii_digit(),
            _ => c.is_ascii_digit(),
        }),
        "timestamp in {raw}"
    );
    let pid = tagged
        .strip_prefix(" depot-receive[")
        .and_then(|t| t.split_once("]: push ok "))
        .unwrap_or_else(|| panic!("tag in {raw}"))
        .0;
    assert!(
        ci.server_pids().contains(&pid.parse().expect("pid")),
        "{raw}"
    );

    // A refused push leaves its line too, with the reason; once it is there,
    // everything the first push sent has been written.
    ci.wait_servers_gone();
    let out = push(&sshd, &ci, "other/x", &tree);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    let refused = rsyslogd.wait_for("other/x");
    assert!(
        refused.starts_with("daemon.info depot-receive[") && refused.contains("]: push forbidden "),
        "{refused}"
    );
    assert!(
        refused.contains("error=\"this key may not write other/x"),
        "{refused}"
    );
    let lines = rsyslogd.depot_lines();
    assert_eq!(
        lines.len(),
        2,
        "one line per push by default, with no raw newline splitting one:\n{lines:#?}"
    );
}

#[test]
fn an_unreachable_syslog_does_not_fail_the_push() {
    let tmp = tempdir();
    let sshd = Sshd::start(&tmp.path().join("sshd"));
    let repo = tmp.path().join("server");
    ok(depot().arg("init").arg(&repo));
    let tree = tree(&tmp.path().join("tree"));
    // Nothing at the path; and a socket file nobody reads (a stopped daemon's).
    let missing = tmp.path().join("no/such/log.sock");
    let stale = tmp.path().join("stale.sock");
    drop(UnixDatagram::bind(&stale).expect("bind"));
    for (i, socket) in [missing, stale].iter().enumerate() {
        let socket = socket.to_string_lossy().into_owned();
        let key = sshd.account(
            &format!("k{i}"),
            &repo,
            &tmp.path().join("state"),
            &[
                "--allow-ref",
                "**",
                "--log-to",
                "syslog",
                "--syslog-socket",
                &socket,
            ],
        );
        let ref_name = format!("proj/{i}");
        let out = push(&sshd, &key, &ref_name, &tree);
        let (stdout, stderr) = text(&out);
        assert!(
            out.status.success(),
            "push with syslog at {socket} failed:\n{stdout}\n{stderr}"
        );
        assert_eq!(read_ref(&repo, &ref_name).len(), 64);
        let warning = format!("cannot reach syslog at {socket}");
        assert_eq!(
            stderr.matches(&warning).count(),
            1,
            "one warning, on stderr: {stderr}"
        );
        assert!(stderr.contains("logging to stderr instead"), "{stderr}");
    }
}
