//! `dirigent open`: a one-time login link to the running daemon's web dashboard, printed and
//! (where a browser is at hand) opened. The link is minted here from `.context/http.token`
//! (whoever can read that file can use the API anyway); the daemon checks it, lets it work
//! once, and gives the browser a session cookie. See docs/dashboard.md.

use super::*;

/// The page the browser is pointed at: it holds the link, so the login code never appears on
/// a command line (which other local users can read in /proc).
const LOGIN_FILE: &str = "dashboard-login.html";

pub fn open(ws: &Workspace, no_browser: bool, as_json: bool) -> Result<ExitCode> {
    let url_file = dirigent::http::url_path(ws);
    let not_served = || {
        anyhow::anyhow!(
            "no daemon serves the dashboard in `{}`: start one with the HTTP door, e.g. `dirigent daemon --http 127.0.0.1:8787` (or set `http:` in .context/dirigent.yaml)",
            ws.root().display()
        )
    };
    let Some(pid) = running_daemon(ws) else {
        return Err(not_served());
    };
    // A line the daemon wrote: read as a small regular file (a FIFO or a giant in its place
    // must not hang or flood this command).
    let base = match dirigent::fsutil::read_small_nofollow(&url_file, 4096) {
        Ok(s) => String::from_utf8_lossy(&s).trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "the daemon (pid {pid}) serves no HTTP door, so no dashboard: restart it with `--http 127.0.0.1:8787` (or set `http:` in .context/dirigent.yaml)"
            )
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read `{}`", url_file.display())),
    };
    // The code is good for this daemon process only (a restart forgets which were used).
    let pid: u32 = pid
        .trim()
        .parse()
        .with_context(|| format!("the daemon's lock file names no pid (`{pid}`)"))?;
    let token = dirigent::http::load_or_create_token(ws)
        .with_context(|| "cannot read the HTTP token".to_string())?;
    let nonce = dirigent::dashboard::session::nonce()?;
    let now = ledger::now_ms();
    let code = dirigent::dashboard::session::login_code(&token, pid, now, &nonce);
    let url = format!("{base}/login#{code}");
    let expires_ms = now + dirigent::dashboard::session::LOGIN_TTL_MS;
    let opened = if no_browser {
        None
    } else {
        open_in_browser(ws, &url)
    };
    if as_json {
        println!(
            "{}",
            json!({"url": url, "expires_ms": expires_ms, "opened_with": opened})
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("{url}");
    let minutes = dirigent::dashboard::session::LOGIN_TTL_MS / 60_000;
    match opened {
        Some(how) => eprintln!(
            "opened the dashboard with `{how}`; the link works once, within {minutes} minutes"
        ),
        None => eprintln!(
            "open this link in a browser on this machine; it works once, within {minutes} minutes"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens the link where a browser is likely at hand (macOS, or a Linux desktop session),
/// through a private page that redirects to it. Returns the opener used.
fn open_in_browser(ws: &Workspace, url: &str) -> Option<&'static str> {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else if std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some()
    {
        "xdg-open"
    } else {
        return None;
    };
    which::which(opener).ok()?;
    let page = format!(
        "<!doctype html><meta charset=\"utf-8\"><meta name=\"referrer\" content=\"no-referrer\">\
         <meta http-equiv=\"refresh\" content=\"0;url={url}\"><title>dirigent</title>\
         <p>Opening the dashboard…</p>\n"
    );
    ws.open_context()
        .and_then(|c| c.write_atomic(LOGIN_FILE, page.as_bytes(), 0o600))
        .ok()?;
    let path = ws.context().join(LOGIN_FILE);
    std::process::Command::new(opener)
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    Some(opener)
}
