//! A real OpenSSH server for the push tests: Debian's `/usr/sbin/sshd` on a
//! free 127.0.0.1 port, with its own config, host key and authorized_keys in a
//! temporary directory, stopped on drop. Each account is one ed25519 client
//! key whose authorized_keys line forces a command, as an admin would set up
//! `depot-receive`. Works as root (CI) and as a normal user (sshd then runs
//! unprivileged and only lets that user in).

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// Where Debian's openssh-server puts the daemon.
const SSHD: &str = "/usr/sbin/sshd";
const INSTALL_HINT: &str = "scripts/test.sh installs openssh-server and openssh-client (apt-get install openssh-server openssh-client)";

/// A running sshd, killed on drop.
pub struct Sshd {
    child: Child,
    dir: PathBuf,
    port: u16,
    log: PathBuf,
    authorized_keys: PathBuf,
    user: String,
}

/// One client key and what the server runs for it.
pub struct Account {
    /// The key's name (also its `--key-id` when made by [`Sshd::account`]).
    pub name: String,
    key: PathBuf,
    pids: PathBuf,
    port: u16,
    user: String,
}

/// Single-quotes a word for the POSIX shell sshd runs a forced command with.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn require_tool(program: &str, arg: &str) {
    if let Err(e) = Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        panic!("cannot run {program}: {e}. {INSTALL_HINT}");
    }
}

impl Sshd {
    /// Starts sshd with its files in `dir` (created). Fails the test, naming
    /// the package, when OpenSSH is not installed.
    pub fn start(dir: &Path) -> Sshd {
        Sshd::start_with(dir, "")
    }

    /// Starts sshd as [`Sshd::start`] does, with `top` (configuration lines,
    /// such as an `Include`) at the top of its sshd_config, where Debian's
    /// sshd_config includes `/etc/ssh/sshd_config.d/*.conf`.
    pub fn start_with(dir: &Path, top: &str) -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: the push tests run a real OpenSSH server. {INSTALL_HINT}"
        );
        require_tool("ssh-keygen", "-?");
        require_tool("ssh", "-V");
        fs::create_dir_all(dir).expect("mkdir sshd dir");
        let user = ok(Command::new("id").arg("-un")).trim().to_string();
        let uid = ok(Command::new("id").arg("-u")).trim().to_string();
        let privsep = Path::new("/run/sshd");
        if uid == "0" && !privsep.exists() {
            // sshd running as root insists on its privilege separation
            // directory: root's, and writable by no one else.
            fs::create_dir_all(privsep).expect("create /run/sshd");
            fs::set_permissions(privsep, fs::Permissions::from_mode(0o755))
                .expect("chmod /run/sshd");
        }
        let host_key = dir.join("host_ed25519");
        keygen(&host_key);
        let authorized_keys = dir.join("authorized_keys");
        fs::write(&authorized_keys, "").expect("write authorized_keys");
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let config = dir.join("sshd_config");
            fs::write(
                &config,
                format!(
                    "{top}\n\
                     ListenAddress 127.0.0.1:{port}\n\
                     HostKey {host}\n\
                     AuthorizedKeysFile {keys}\n\
                     PidFile none\n\
                     UsePAM no\n\
                     StrictModes no\n\
                     PubkeyAuthentication yes\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     PermitRootLogin prohibit-password\n\
                     AllowUsers {user}\n\
                     PermitUserEnvironment no\n\
                     X11Forwarding no\n\
                     PrintMotd no\n\
                     MaxStartups 64\n\
                     MaxSessions 64\n\
                     LogLevel VERBOSE\n",
                    host = host_key.display(),
                    keys = authorized_keys.display(),
                ),
            )
            .expect("write sshd_config");
            ok(Command::new(SSHD).arg("-t").arg("-f").arg(&config));
            let log = dir.join(format!("sshd-{port}.log"));
            let mut child = Command::new(SSHD)
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(&log).expect("sshd log"))
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {SSHD}: {e}. {INSTALL_HINT}"));
            let ready = format!("Server listening on 127.0.0.1 port {port}");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let text = fs::read_to_string(&log).unwrap_or_default();
                if text.contains(&ready) {
                    return Sshd {
                        child,
                        dir: dir.to_path_buf(),
                        port,
                        log,
                        authorized_keys,
                        user,
                    };
                }
                if child.try_wait().expect("poll sshd").is_some() {
                    last_log = text;
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("sshd did not start listening on port {port} within 10 s:\n{text}");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            // Most likely the port was taken meanwhile: try another.
        }
        panic!("sshd would not start:\n{last_log}");
    }

    /// The `depot-receive` command line for a forced command.
    pub fn receive_command(repo: &Path, state: &Path, key_id: &str, extra: &[&str]) -> String {
        let mut cmd = shell_quote(env!("CARGO_BIN_EXE_depot-receive"));
        for arg in [
            "--repo",
            &repo.to_string_lossy(),
            "--state-dir",
            &state.to_string_lossy(),
            "--key-id",
            key_id,
        ]
        .iter()
        .copied()
        .chain(extra.iter().copied())
        {
            cmd.push(' ');
            cmd.push_str(&shell_quote(arg));
        }
        cmd
    }

    /// An account whose key runs `depot-receive --repo REPO --state-dir STATE
    /// --key-id NAME EXTRA...`.
    pub fn account(&self, name: &str, repo: &Path, state: &Path, extra: &[&str]) -> Account {
        self.account_with_command(name, &Self::receive_command(repo, state, name, extra))
    }

    /// An account whose key runs `command` (a shell command line) whatever the
    /// client asks for. The shell's pid, which `exec` hands to the command's
    /// last program, is appended to a file first, so tests can find and wait
    /// for (or kill) the server process.
    pub fn account_with_command(&self, name: &str, command: &str) -> Account {
        let key = self.dir.join(format!("key-{name}"));
        keygen(&key);
        let pids = self.dir.join(format!("pids-{name}"));
        let forced = format!(
            "echo $$ >> {}; exec {command}",
            shell_quote(&pids.to_string_lossy())
        );
        assert!(
            !forced.contains('"') && !forced.contains('\\'),
            "a forced command cannot contain \" or \\ here: {forced}"
        );
        let public = fs::read_to_string(key.with_extension("pub")).expect("read public key");
        let mut keys = fs::read_to_string(&self.authorized_keys).expect("read authorized_keys");
        let _ = writeln!(keys, "restrict,command=\"{forced}\" {}", public.trim());
        fs::write(&self.authorized_keys, keys).expect("write authorized_keys");
        Account {
            name: name.to_string(),
            key,
            pids,
            port: self.port,
            user: self.user.clone(),
        }
    }

    /// A new key whose authorized_keys line is `options KEY` verbatim (no
    /// options: an empty string), as an admin would add it.
    pub fn add_key(&self, name: &str, options: &str) -> Account {
        let key = self.dir.join(format!("key-{name}"));
        keygen(&key);
        let public = fs::read_to_string(key.with_extension("pub")).expect("read public key");
        let mut keys = fs::read_to_string(&self.authorized_keys).expect("read authorized_keys");
        let line = [options, public.trim()].join(" ");
        let _ = writeln!(keys, "{}", line.trim_start());
        fs::write(&self.authorized_keys, keys).expect("write authorized_keys");
        Account {
            name: name.to_string(),
            key,
            pids: self.dir.join(format!("pids-{name}")),
            port: self.port,
            user: self.user.clone(),
        }
    }

    /// The authorized_keys file sshd reads.
    pub fn authorized_keys(&self) -> &Path {
        &self.authorized_keys
    }

    /// The account every key logs in as: the user running the tests.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The sshd_config this server runs with.
    pub fn config(&self) -> PathBuf {
        self.dir.join("sshd_config")
    }

    /// `ssh://user@127.0.0.1:PORT` followed by `path` (which starts with `/` or is empty).
    pub fn url(&self, path: &str) -> String {
        format!("ssh://{}@127.0.0.1:{}{path}", self.user, self.port)
    }

    /// What sshd logged so far, for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- sshd log ---\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Account {
    /// The `--ssh-command` for this key: the system ssh with nothing from
    /// the user's configuration, agent or known hosts.
    pub fn ssh_command(&self) -> String {
        format!(
            "ssh -F /dev/null -i {} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no \
             -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR",
            shell_quote(&self.key.to_string_lossy())
        )
    }

    /// Plain `ssh` to the server with this key, asking it to run `remote`.
    pub fn ssh(&self, remote: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args(["-F", "/dev/null", "-i"])
            .arg(&self.key)
            .args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "LogLevel=ERROR",
                "-p",
            ])
            .arg(self.port.to_string())
            .arg(format!("{}@127.0.0.1", self.user))
            .arg(remote);
        c
    }

    /// Pids of every server process this key has started so far.
    pub fn server_pids(&self) -> Vec<u32> {
        fs::read_to_string(&self.pids)
            .unwrap_or_default()
            .lines()
            .map(|l| l.trim().parse().expect("pid"))
            .collect()
    }

    /// Waits until every server process this key started has exited.
    pub fn wait_servers_gone(&self) {
        for pid in self.server_pids() {
            // A reused pid runs something else: only ours names depot-receive.
            let cmdline = PathBuf::from(format!("/proc/{pid}/cmdline"));
            wait_until(
                &format!("depot-receive (pid {pid}) for {} to exit", self.name),
                Duration::from_secs(20),
                || {
                    fs::read(&cmdline).map_or(true, |c| {
                        !String::from_utf8_lossy(&c).contains("depot-receive")
                    })
                },
            );
        }
    }
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "depot-test", "-f"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ssh-keygen: {e}. {INSTALL_HINT}"));
    assert!(
        out.status.success(),
        "ssh-keygen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
