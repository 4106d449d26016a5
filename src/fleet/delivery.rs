//! What a worker sends back with a task's outcome, before it claims it (`worker`): an editing
//! task's work — pushed to its repository, else a git bundle in the object store —, a large
//! result through the object store instead of inline, and the outcome fitted under the size the
//! server carries in one message.

use std::time::Duration;

use super::connect::Connection;
use super::{End, INLINE_RESULT_BYTES, MAX_RESULT_BYTES, Outcome, edits};

/// Delivers an editing task's work before its outcome is claimed: pushed to its repository,
/// else as a bundle through the object store; the outcome says which, or why neither.
/// Returns where a push went (the cache, the repository, the branch), so that a duplicate
/// can take its branch back.
pub(super) async fn deliver_work(
    conn: &Connection,
    root: &std::path::Path,
    roots: &[edits::Source],
    key: &str,
    end: &mut End,
) -> Option<(std::path::PathBuf, edits::Source, String)> {
    let End::Done {
        work: Some(work),
        deliver,
        ..
    } = end
    else {
        return None;
    };
    let here = deliver.take()?;
    if work.carried != edits::Carried::NotYet {
        return None;
    }
    // Checked again now: a link under a root may point elsewhere since the fetch, or the
    // roots may have narrowed since a restart.
    let source = match edits::allows(roots, &here.repository) {
        Ok(s) => s,
        Err(why) => {
            work.carried = edits::Carried::Stayed { why };
            return None;
        }
    };
    let bundle = root
        .join(".context/fleet/bundles")
        .join(format!("out-{:016x}.bundle", edits::fnv(key)));
    let (w, b, s, cache) = (
        work.clone(),
        bundle.clone(),
        source.clone(),
        here.cache.clone(),
    );
    let delivery = tokio::task::spawn_blocking(move || {
        let _ = std::fs::create_dir_all(b.parent().expect("in bundles/"));
        edits::deliver(&cache, &s, &w, &b)
    })
    .await
    .unwrap_or_else(|e| edits::Delivery::Stayed { why: e.to_string() });
    let mut pushed = None;
    work.carried = match delivery {
        edits::Delivery::Pushed => {
            pushed = Some((here.cache.clone(), source, work.branch.clone()));
            edits::Carried::Pushed
        }
        edits::Delivery::Stayed { why } => edits::Carried::Stayed { why },
        edits::Delivery::Bundled { push } => {
            tracing::warn!(key, "cannot push the work ({push}); it travels as a bundle");
            let object = format!("{key}.bundle");
            let put = async {
                let file = tokio::fs::File::open(&bundle)
                    .await
                    .map_err(|e| e.to_string())?;
                let size = file.metadata().await.map_err(|e| e.to_string())?.len();
                if size > MAX_RESULT_BYTES as u64 {
                    return Err(format!(
                        "the bundle is {size} bytes, more than the fleet carries ({MAX_RESULT_BYTES})"
                    ));
                }
                let mut file = file;
                conn.results
                    .put(object.as_str(), &mut file)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            };
            match put.await {
                Ok(()) => edits::Carried::Bundle { object },
                Err(e) => edits::Carried::Stayed {
                    why: format!("{push}; and its bundle could not be stored: {e}"),
                },
            }
        }
    };
    let _ = tokio::fs::remove_file(&bundle).await;
    pushed
}

/// Puts the result of a done task where the outcome can carry it: inline when small, else
/// into the results object store under the task's key. Read confined to the workspace (no
/// link followed, a regular file only, at most [`MAX_RESULT_BYTES`]): an agent cannot make
/// the worker send another file.
pub(super) async fn carry_result(
    conn: &Connection,
    root: &std::path::Path,
    key: &str,
    end: &mut End,
) {
    let End::Done {
        text,
        truncated,
        object,
        object_sha256,
        local_output,
        ..
    } = end
    else {
        return;
    };
    let Some(rel) = local_output.take() else {
        return;
    };
    let (root2, rel2) = (root.to_path_buf(), rel.clone());
    let read = tokio::task::spawn_blocking(move || {
        crate::fsutil::read_confined(&root2, &rel2, MAX_RESULT_BYTES as u64)
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r.map_err(|e| e.to_string()));
    let full = match read {
        Ok(full) => full,
        Err(e) => {
            *text =
                format!("(the result at `{rel}` on this worker cannot be carried: `{rel}` {e})");
            *truncated = true;
            return;
        }
    };
    if full.len() <= INLINE_RESULT_BYTES {
        *text = full;
        return;
    }
    let mut delay = Duration::from_millis(250);
    for _ in 0..8 {
        let mut reader = full.as_bytes();
        match conn.results.put(key, &mut reader).await {
            Ok(_) => {
                *object = Some(key.to_string());
                *object_sha256 = Some(super::sha256_hex(full.as_bytes()));
                return;
            }
            Err(e) => {
                tracing::warn!(
                    key,
                    "cannot put the result into the fleet's object store ({e}); trying again"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
    *text = format!(
        "(the result, {} bytes, could not be put into the fleet's object store; it is at `{rel}` on this worker)",
        full.len()
    );
    *truncated = true;
}

/// The most bytes of an outcome: well under a server's smallest usual `max_payload` (1 MiB).
const MAX_OUTCOME_BYTES: usize = 256 * 1024;

/// The outcome as it is stored, made to fit: text that JSON's escaping made too large goes
/// through the object store; a reason too long is cut (its start says what failed).
pub(super) async fn fit(conn: &Connection, key: &str, mut outcome: Outcome) -> Vec<u8> {
    let encoded = serde_json::to_vec(&outcome).expect("an outcome serialises");
    if encoded.len() <= MAX_OUTCOME_BYTES {
        return encoded;
    }
    match &mut outcome.end {
        End::Done {
            text,
            truncated,
            object,
            object_sha256,
            ..
        } => {
            let mut reader = text.as_bytes();
            match conn.results.put(key, &mut reader).await {
                Ok(_) => {
                    *object = Some(key.to_string());
                    *object_sha256 = Some(super::sha256_hex(text.as_bytes()));
                }
                Err(e) => {
                    *truncated = true;
                    tracing::warn!(
                        key,
                        "cannot put the result into the fleet's object store: {e}"
                    );
                }
            }
            text.clear();
            if *truncated {
                *text = "(the result could not be carried: it is on the worker)".into();
            }
        }
        End::Cancelled => {}
        End::Escalated { reason, .. } => {
            let cut = (0..=(16 * 1024).min(reason.len()))
                .rev()
                .find(|i| reason.is_char_boundary(*i))
                .unwrap_or(0);
            reason.truncate(cut);
            reason.push_str(" … (cut; the whole report is on the worker)");
        }
    }
    serde_json::to_vec(&outcome).expect("an outcome serialises")
}
