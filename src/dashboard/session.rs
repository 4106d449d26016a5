//! The dashboard's login model, as pure functions of the HTTP token: a one-time login code
//! (what `dirigent open` puts after `#` in the login link, good for the running daemon only),
//! the session cookie it is exchanged for, and the session's CSRF value, which the page keeps in
//! its origin's storage and sends back with every request.
//!
//! Every value is `<nonce>.<expiry ms>.<HMAC-SHA-256 over a purpose, the nonce and the expiry>`,
//! keyed by the token. So the daemon keeps no session table (a restart keeps everyone logged
//! in), anyone who can read `.context/http.token` can mint a login — exactly those who could
//! already use the API — and replacing the token file ends every session. The one piece of
//! state is the set of login codes already used ([`UsedCodes`], held by the HTTP door), which
//! makes a login link work once.

use std::collections::HashMap;

use hmac::{KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = hmac::Hmac<Sha256>;

/// How long a login link works: long enough to paste it into a browser.
pub const LOGIN_TTL_MS: u64 = 5 * 60 * 1000;

/// How long a session lasts before `dirigent open` is needed again.
pub const SESSION_TTL_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// The most login codes remembered as used; codes expire within [`LOGIN_TTL_MS`], so only a
/// flood of freshly minted links (by someone who has the token anyway) could reach it.
const USED_KEPT: usize = 10_000;

/// Why a login code or session cookie was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("it is not a dirigent login value")]
    Malformed,
    #[error("it was not made with this daemon's token")]
    WrongMac,
    #[error("it has expired")]
    Expired,
    #[error("it was already used")]
    Used,
}

/// A checked login code or session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub nonce: String,
    pub expires_ms: u64,
}

fn mac(token: &str, purpose: &str, nonce: &str, expires_ms: u64) -> String {
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(token.as_bytes()).expect("any key length");
    // Purpose first, and NUL-separated: a login code is never a valid cookie, nor the reverse.
    m.update(purpose.as_bytes());
    m.update(b"\0");
    m.update(nonce.as_bytes());
    m.update(b"\0");
    m.update(expires_ms.to_string().as_bytes());
    hex(&m.finalize().into_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sign(token: &str, purpose: &str, nonce: &[u8; 16], expires_ms: u64) -> String {
    let nonce = hex(nonce);
    let mac = mac(token, purpose, &nonce, expires_ms);
    format!("{nonce}.{expires_ms}.{mac}")
}

fn check(token: &str, purpose: &str, value: &str, now_ms: u64) -> Result<Signed, Refused> {
    let mut parts = value.trim().splitn(3, '.');
    let (Some(nonce), Some(expires), Some(given)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(Refused::Malformed);
    };
    if nonce.len() != 32 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Refused::Malformed);
    }
    let expires_ms: u64 = expires.parse().map_err(|_| Refused::Malformed)?;
    let want = mac(token, purpose, nonce, expires_ms);
    if !same(given.as_bytes(), want.as_bytes()) {
        return Err(Refused::WrongMac);
    }
    if now_ms >= expires_ms {
        return Err(Refused::Expired);
    }
    Ok(Signed {
        nonce: nonce.to_string(),
        expires_ms,
    })
}

/// Compares in time independent of where the first difference is.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The purpose a login code is signed for: the daemon process it is for, so a code used once
/// cannot be used again after a restart (the set of used codes is in memory). Its pid and its
/// start time: a daemon that always gets the same pid (pid 1 in a container) is another
/// process after a restart all the same.
fn login_purpose(daemon_pid: u32) -> String {
    let started = crate::process_group::proc_start_ticks(daemon_pid).unwrap_or(0);
    format!("login:{daemon_pid}:{started}")
}

/// A login code for the daemon with pid `daemon_pid`, valid for [`LOGIN_TTL_MS`] from `now_ms`.
pub fn login_code(token: &str, daemon_pid: u32, now_ms: u64, nonce: &[u8; 16]) -> String {
    sign(
        token,
        &login_purpose(daemon_pid),
        nonce,
        now_ms.saturating_add(LOGIN_TTL_MS),
    )
}

/// A session cookie's value, valid for [`SESSION_TTL_MS`] from `now_ms`.
pub fn session_value(token: &str, now_ms: u64, nonce: &[u8; 16]) -> String {
    sign(
        token,
        "session",
        nonce,
        now_ms.saturating_add(SESSION_TTL_MS),
    )
}

/// Checks a session cookie's value.
pub fn check_session(token: &str, value: &str, now_ms: u64) -> Result<Signed, Refused> {
    check(token, "session", value, now_ms)
}

/// The CSRF value of a session: the login answer gives it to the page, which keeps it in its
/// origin's storage (bound to the port, unlike cookies) and sends it in the `X-Dirigent-CSRF`
/// header. Another site, or a server on another port, can neither read it nor set the header.
pub fn csrf_value(token: &str, session: &Signed) -> String {
    mac(token, "csrf", &session.nonce, session.expires_ms)
}

/// Login codes already exchanged for a session, until they expire. Held by the HTTP door.
#[derive(Default)]
pub struct UsedCodes {
    used: HashMap<String, u64>,
}

impl UsedCodes {
    /// Checks a login code for this daemon (`daemon_pid`) and marks it used: the same code
    /// never logs in twice.
    pub fn redeem(
        &mut self,
        token: &str,
        daemon_pid: u32,
        code: &str,
        now_ms: u64,
    ) -> Result<Signed, Refused> {
        let signed = check(token, &login_purpose(daemon_pid), code, now_ms)?;
        // A code from far in the future was not minted by `login_code` (clock skew aside).
        if signed.expires_ms > now_ms.saturating_add(LOGIN_TTL_MS * 2) {
            return Err(Refused::Expired);
        }
        self.used.retain(|_, expires| *expires > now_ms);
        if self.used.contains_key(&signed.nonce) {
            return Err(Refused::Used);
        }
        if self.used.len() >= USED_KEPT {
            // Remember the new one rather than forget an old one: forgetting would let an old
            // code in again; refusing logins until some expire is the safe side.
            return Err(Refused::Used);
        }
        self.used.insert(signed.nonce.clone(), signed.expires_ms);
        Ok(signed)
    }
}

/// Sessions ended by `POST /logout` before their time, until they would have expired: a
/// cookie copied before the logout does not let anyone in after it. Held by the HTTP door, in
/// memory (a restart forgets them; a new token file ends every session for good).
#[derive(Default)]
pub struct EndedSessions {
    ended: HashMap<String, u64>,
}

impl EndedSessions {
    /// Ends session `s`; false when too many are remembered already (the logout then only
    /// clears the browser's cookie).
    pub fn end(&mut self, s: &Signed, now_ms: u64) -> bool {
        self.ended.retain(|_, expires| *expires > now_ms);
        if self.ended.len() >= USED_KEPT && !self.ended.contains_key(&s.nonce) {
            return false;
        }
        self.ended.insert(s.nonce.clone(), s.expires_ms);
        true
    }

    /// Whether session `s` was ended.
    pub fn is_ended(&self, s: &Signed) -> bool {
        self.ended.contains_key(&s.nonce)
    }
}

/// 16 random bytes for a nonce.
pub fn nonce() -> std::io::Result<[u8; 16]> {
    let mut n = [0u8; 16];
    getrandom::fill(&mut n).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";
    const NONCE: [u8; 16] = [7; 16];
    const PID: u32 = 4242;

    #[test]
    fn login_codes_work_once_for_one_daemon_until_they_expire_and_only_with_the_token() {
        let code = login_code(TOKEN, PID, 1_000, &NONCE);
        let later = 1_000 + LOGIN_TTL_MS;
        let other_token = "another-token-of-enough-length!!";
        // (code, token, now, expected)
        let cases: Vec<(String, &str, u64, Result<(), Refused>)> = vec![
            (code.clone(), TOKEN, 1_000, Ok(())),
            (code.clone(), TOKEN, 2_000, Err(Refused::Used)),
            (code.clone(), other_token, 1_000, Err(Refused::WrongMac)),
            (
                login_code(TOKEN, PID, 1_000, &[8; 16]),
                TOKEN,
                later,
                Err(Refused::Expired),
            ),
            // Minted for another daemon process (one before a restart).
            (
                login_code(TOKEN, PID + 1, 1_000, &[10; 16]),
                TOKEN,
                1_000,
                Err(Refused::WrongMac),
            ),
            (
                session_value(TOKEN, 1_000, &[9; 16]),
                TOKEN,
                1_000,
                Err(Refused::WrongMac),
            ),
            ("".into(), TOKEN, 1_000, Err(Refused::Malformed)),
            ("a.b.c".into(), TOKEN, 1_000, Err(Refused::Malformed)),
            (
                code.replace('.', ".9"),
                TOKEN,
                1_000,
                Err(Refused::WrongMac),
            ),
        ];
        let mut used = UsedCodes::default();
        for (i, (code, token, now, want)) in cases.into_iter().enumerate() {
            let got = used.redeem(token, PID, &code, now).map(|_| ());
            assert_eq!(got, want, "case {i}: {code}");
        }
    }

    #[test]
    fn sessions_expire_and_are_not_login_codes() {
        let s = session_value(TOKEN, 0, &NONCE);
        let ok = check_session(TOKEN, &s, SESSION_TTL_MS - 1).expect("a fresh session is valid");
        assert_eq!(ok.nonce, hex(&NONCE));
        assert_eq!(
            check_session(TOKEN, &s, SESSION_TTL_MS),
            Err(Refused::Expired)
        );
        let code = login_code(TOKEN, PID, 0, &NONCE);
        assert_eq!(check_session(TOKEN, &code, 0), Err(Refused::WrongMac));
        let other = csrf_value(
            TOKEN,
            &Signed {
                nonce: hex(&[1; 16]),
                ..ok.clone()
            },
        );
        assert_ne!(
            csrf_value(TOKEN, &ok),
            other,
            "each session has its own CSRF value"
        );
    }
}
