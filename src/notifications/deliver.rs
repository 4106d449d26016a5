//! One delivery to one destination: a webhook POST (plain HTTP or TLS, signed), a desktop
//! notification, or a command. Each is bounded by the destination's timeout; whether and when
//! to try again is decided by the caller ([`super::decide::backoff`]).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hmac::{KeyInit, Mac};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use crate::config::notify::WebhookUrl;

/// The longest response head a receiver may send back.
const MAX_HEAD: usize = 16 * 1024;

/// `sha256=<hex>` of HMAC-SHA-256(`secret`, `body`): what `X-Dirigent-Signature` carries.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut m = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("any key length");
    m.update(body);
    let hex: String = m
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// POSTs `body` to `url`; `Ok` on a 2xx answer.
pub async fn webhook(
    url: &WebhookUrl,
    secret: Option<&str>,
    delivery: &str,
    kind: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(), String> {
    tokio::time::timeout(timeout, post(url, secret, delivery, kind, body))
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no answer within {}",
                crate::duration::short(timeout)
            ))
        })
}

async fn post(
    url: &WebhookUrl,
    secret: Option<&str>,
    delivery: &str,
    kind: &str,
    body: &[u8],
) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("cannot connect to {}:{}: {e}", url.host, url.port))?;
    let _ = tcp.set_nodelay(true);
    if url.tls {
        let name = rustls::pki_types::ServerName::try_from(url.host.clone())
            .map_err(|e| format!("`{}` is not a TLS server name: {e}", url.host))?;
        let tls = tls_connector()
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {} failed: {e}", url.host))?;
        exchange(tls, url, secret, delivery, kind, body).await
    } else {
        exchange(tcp, url, secret, delivery, kind, body).await
    }
}

/// The TLS client, with the Mozilla root certificates compiled in (no system store needed).
fn tls_connector() -> tokio_rustls::TlsConnector {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("the ring provider supports the default versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    });
    tokio_rustls::TlsConnector::from(config.clone())
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    url: &WebhookUrl,
    secret: Option<&str>,
    delivery: &str,
    kind: &str,
    body: &[u8],
) -> Result<(), String> {
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: dirigent/{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nX-Dirigent-Event: {kind}\r\nX-Dirigent-Delivery: {delivery}\r\n",
        url.path,
        host_header(url),
        env!("CARGO_PKG_VERSION"),
        body.len(),
    );
    if let Some(secret) = secret {
        head.push_str(&format!(
            "X-Dirigent-Signature: {}\r\n",
            signature(secret, body)
        ));
    }
    head.push_str("\r\n");
    let mut stream = BufReader::new(stream);
    let io = |e: std::io::Error| format!("the connection broke: {e}");
    stream
        .get_mut()
        .write_all(head.as_bytes())
        .await
        .map_err(io)?;
    stream.get_mut().write_all(body).await.map_err(io)?;
    stream.get_mut().flush().await.map_err(io)?;
    // The status line is all that matters; the rest of the answer is not read.
    let mut line = Vec::new();
    tokio::io::AsyncReadExt::take(&mut stream, MAX_HEAD as u64)
        .read_until(b'\n', &mut line)
        .await
        .map_err(io)?;
    let line = String::from_utf8_lossy(&line);
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {:?}", line.trim()))?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("the receiver answered HTTP {status}"))
    }
}

fn host_header(url: &WebhookUrl) -> String {
    let host = if url.host.contains(':') {
        format!("[{}]", url.host)
    } else {
        url.host.clone()
    };
    let default = if url.tls { 443 } else { 80 };
    if url.port == default {
        host
    } else {
        format!("{host}:{}", url.port)
    }
}

/// The program that shows a desktop notification here, with its arguments.
pub fn desktop_argv(title: &str, text: &str) -> Option<Vec<String>> {
    if cfg!(target_os = "macos") {
        which::which("osascript").ok()?;
        // The texts are arguments, never part of the script: nothing in them is run.
        return Some(vec![
            "osascript".into(),
            "-e".into(),
            "on run argv".into(),
            "-e".into(),
            "display notification (item 2 of argv) with title (item 1 of argv)".into(),
            "-e".into(),
            "end run".into(),
            title.into(),
            text.into(),
        ]);
    }
    which::which("notify-send").ok()?;
    Some(vec![
        "notify-send".into(),
        "--app-name=dirigent".into(),
        "--".into(),
        title.into(),
        text.into(),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_github_style_hmac_sha256() {
        // HMAC-SHA-256("key", "The quick brown fox jumps over the lazy dog"), a published
        // test value.
        assert_eq!(
            signature("key", b"The quick brown fox jumps over the lazy dog"),
            "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
    }
}
