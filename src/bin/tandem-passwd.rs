//! `tandem-passwd`: adds, changes or deletes a user of a Tandem users file, in
//! the manner of `saslpasswd2 -p -f FILE USER`: the password is read from
//! standard input (one line), never from the command line, and the file keeps
//! only its salted, iterated SCRAM-SHA-256 form. `--migrate` rewrites every
//! `user:password` line the same way.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tandem_shards::users::{Credential, Users};

#[derive(Parser, Debug)]
#[command(
    name = "tandem-passwd",
    version,
    about = "Add, change or delete a user of a Tandem users file (password on stdin)"
)]
struct Cli {
    /// The users file (created if missing)
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: PathBuf,
    /// Delete the user instead
    #[arg(short = 'd', long = "delete")]
    delete: bool,
    /// Store every password kept in clear (user:password lines) as a salted hash
    #[arg(long, conflicts_with_all = ["delete", "user"])]
    migrate: bool,
    /// The user name
    #[arg(required_unless_present = "migrate")]
    user: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(said) => {
            eprintln!("{said}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tandem-passwd: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: &Cli) -> Result<String, String> {
    let shown = cli.file.display();
    let mut users = match std::fs::read_to_string(&cli.file) {
        Ok(text) => Users::parse(&text).map_err(|e| format!("{shown}: {e}"))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Users::default(),
        Err(e) => return Err(format!("{shown}: cannot read: {e}")),
    };
    let said = if cli.migrate {
        let plain: Vec<String> = users
            .names()
            .into_iter()
            .filter(|u| matches!(users.get(u), Some(Credential::Plain(_))))
            .collect();
        for user in &plain {
            if let Some(Credential::Plain(password)) = users.get(user).cloned() {
                users.insert(user, Credential::scram(&password)?);
            }
        }
        format!(
            "{shown}: {} password(s) now stored as salted hashes",
            plain.len()
        )
    } else {
        let user = cli.user.as_deref().unwrap_or_default();
        if user.is_empty() || user.contains([':', '\n']) {
            return Err(format!(
                "'{user}' cannot be a user name (empty, or with ':' or a newline)"
            ));
        }
        if cli.delete {
            if !users.remove(user) {
                return Err(format!("{shown}: no user '{user}'"));
            }
            format!("{shown}: deleted {user}")
        } else {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| format!("reading the password from stdin: {e}"))?;
            let password = line.trim_end_matches(['\n', '\r']);
            if password.is_empty() {
                return Err("no password on stdin (give it as one line)".into());
            }
            users.insert(user, Credential::scram(password)?);
            format!("{shown}: stored {user}")
        }
    };
    tandem_shards::disk::replace_file(&cli.file, users.to_text().as_bytes())
        .map_err(|e| format!("{shown}: cannot write: {e}"))?;
    // Only its owner (the broker's user) reads it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cli.file, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("{shown}: cannot restrict its permissions: {e}"))?;
    Ok(said)
}
