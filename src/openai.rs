//! The OpenAI-compatible door: `GET /v1/models` and `POST /v1/chat/completions` on the HTTP
//! server, so Open WebUI or any OpenAI client library can hand work to dirigent.
//!
//! A model id names where the task goes: `dirigent` (the default chain), a role, an agent, or
//! `workflow:NAME`; `role:NAME` and `agent:NAME` are accepted too, for names that collide.
//! The messages become the task's prompt, the task runs like any other (the inbox, the chain,
//! the judging, the ledger), and its result is the answer. A chain that fails ends in an
//! OpenAI-style error object with the reason, never a hang. With `stream: true` the answer
//! comes as `chat.completion.chunk` events; while the task runs, comment lines keep the
//! connection alive.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response as HttpResponse};
use serde_json::{Value, json};

use crate::api::Api;
use crate::protocol::Request;
use crate::task::TaskFields;
use crate::web::{ApiError, AppState};

/// Where a model id sends the task.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    DefaultChain,
    Role(String),
    Agent(String),
    /// The prompt fills `var`, the workflow's one variable without a default.
    Workflow {
        name: String,
        var: String,
    },
}

/// What the daemon answers to: the model ids in listing order, and the workflows a chat cannot
/// run, each with why.
struct Catalog {
    models: Vec<(String, Target)>,
    unfit: Vec<(String, String)>,
}

/// Whether a chat can run a workflow: its text must fill exactly one variable, and one that does
/// not name files — a chat's text (many lines, any length) is no file name, and refused as one
/// at acceptance. `Ok` holds the variable; `Err` says why not.
fn chat_variable(required: &[String], path_vars: &[String]) -> Result<String, String> {
    match required {
        [] => Err("it needs no variable, so the chat's text would go nowhere".into()),
        [var] if path_vars.contains(var) => Err(format!(
            "its variable `{var}` names files (an `output`, a `glob` or `files`), and a chat's text is no file name"
        )),
        [var] => Ok(var.clone()),
        many => Err(format!(
            "it needs {} variables ({}); a chat fills one",
            many.len(),
            many.iter()
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Every model id the daemon answers to, in listing order.
async fn catalog(api: &Api) -> Result<Catalog, ApiError> {
    let agents = api.call(Request::Agents).await;
    let workflows = api.call(Request::Workflows).await;
    let (agents, workflows) = match (agents.ok, workflows.ok) {
        (true, true) => (
            agents.data.unwrap_or_default(),
            workflows.data.unwrap_or_default(),
        ),
        _ => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the daemon is shutting down",
            ));
        }
    };
    let mut out = vec![("dirigent".to_string(), Target::DefaultChain)];
    let mut taken = std::collections::HashSet::from(["dirigent".to_string()]);
    // The configured roles, then the standard ones every config has (a task may name them).
    let mut role_names: Vec<String> = agents["roles"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.keys().cloned())
        .collect();
    for standard in crate::config::STANDARD_ROLES {
        if !role_names.iter().any(|r| r == standard) {
            role_names.push(standard.to_string());
        }
    }
    let roles = role_names.into_iter().map(|name| (true, name));
    let agent_names = agents["agents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str())
        .map(|name| (false, name.to_string()));
    // Bare names first come, first served: roles, then agents; the prefixed form always works.
    for (is_role, name) in roles.chain(agent_names) {
        let kind = if is_role { "role" } else { "agent" };
        let id = if taken.insert(name.clone()) {
            name.clone()
        } else {
            format!("{kind}:{name}")
        };
        let target = if is_role {
            Target::Role(name)
        } else {
            Target::Agent(name)
        };
        out.push((id, target));
    }
    let mut unfit = Vec::new();
    for wf in workflows.as_array().into_iter().flatten() {
        if wf["valid"] != true {
            continue;
        }
        let Some(name) = wf["name"].as_str() else {
            continue;
        };
        let required: Vec<String> = wf["vars"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(_, v)| v.is_null())
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        let path_vars: Vec<String> = wf["path_vars"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        match chat_variable(&required, &path_vars) {
            Ok(var) => out.push((
                format!("workflow:{name}"),
                Target::Workflow {
                    name: name.to_string(),
                    var,
                },
            )),
            Err(why) => unfit.push((name.to_string(), why)),
        }
    }
    Ok(Catalog { models: out, unfit })
}

/// Finds the target of a model id.
fn resolve(models: &[(String, Target)], model: &str) -> Option<Target> {
    if let Some(t) = models.iter().find(|(id, _)| id == model) {
        return Some(t.1.clone());
    }
    let (kind, name) = model.split_once(':')?;
    models
        .iter()
        .map(|(_, t)| t)
        .find(|t| match (kind, t) {
            ("role", Target::Role(n)) | ("agent", Target::Agent(n)) => n == name,
            _ => false,
        })
        .cloned()
}

/// `GET /v1/models`.
pub(crate) async fn models(State(st): State<AppState>) -> Result<HttpResponse, ApiError> {
    let data: Vec<Value> = catalog(&st.api)
        .await?
        .models
        .into_iter()
        .map(|(id, target)| {
            json!({
                "id": id,
                "object": "model",
                "created": 0,
                "owned_by": "dirigent",
                "dirigent": describe(&target),
            })
        })
        .collect();
    Ok(axum::Json(json!({"object": "list", "data": data})).into_response())
}

fn describe(t: &Target) -> Value {
    match t {
        Target::DefaultChain => json!({"kind": "default_chain"}),
        Target::Role(n) => json!({"kind": "role", "name": n}),
        Target::Agent(n) => json!({"kind": "agent", "name": n}),
        Target::Workflow { name, var } => {
            json!({"kind": "workflow", "name": name, "prompt_var": var})
        }
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
}

/// The text of a message's `content`: a string, or an array of parts of which the `text` ones
/// count.
fn content_text(content: &Value) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => Some(
            parts
                .iter()
                .filter(|p| p["type"] == "text")
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

/// The message roles OpenAI's API defines.
const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

/// Turns the messages into one prompt. One user message (with any system messages before it)
/// reads as itself; a conversation is written out turn by turn, so the agent sees its history.
fn prompt_of(messages: &[Value]) -> Result<(String, String), ApiError> {
    let mut turns: Vec<(String, String)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m["role"]
            .as_str()
            .ok_or_else(|| invalid(format!("`messages[{i}].role` is missing")))?;
        // A role is a heading of the written-out conversation: any other text could forge
        // turns (`"assistant\n\n## system"`).
        if !ROLES.contains(&role) {
            return Err(invalid(format!(
                "`messages[{i}].role` is {role:?}; it must be one of {}",
                ROLES.join(", ")
            )));
        }
        let text = content_text(&m["content"])
            .ok_or_else(|| invalid(format!("`messages[{i}].content` must be text")))?;
        turns.push((role.to_string(), text));
    }
    let last_user = turns
        .iter()
        .rev()
        .find(|(r, _)| r == "user")
        .map(|(_, t)| t.clone())
        .ok_or_else(|| invalid("`messages` has no `user` message"))?;
    let users = turns.iter().filter(|(r, _)| r == "user").count();
    let others = turns
        .iter()
        .filter(|(r, _)| r != "user" && r != "system" && r != "developer")
        .count();
    let prompt = if users == 1 && others == 0 {
        let mut parts: Vec<&str> = turns
            .iter()
            .filter(|(r, _)| r == "system" || r == "developer")
            .map(|(_, t)| t.as_str())
            .collect();
        parts.push(&last_user);
        parts.join("\n\n")
    } else {
        let mut s = String::from("The conversation so far; answer its last user message.\n");
        for (role, text) in &turns {
            s.push_str(&format!("\n## {role}\n\n{text}\n"));
        }
        s
    };
    if prompt.trim().is_empty() {
        return Err(invalid(
            "the messages hold no text: only text content is taken (`\"content\": \"…\"`, or parts of type `text`); images and other parts are not",
        ));
    }
    Ok((prompt, last_user))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A chain that failed, as an error object. `x-should-retry: false` tells OpenAI's clients not
/// to submit the same work again on their own: the chain already tried every agent.
fn failed(message: String) -> HttpResponse {
    let mut r =
        ApiError::new(StatusCode::BAD_GATEWAY, "agent_chain_failed", message).into_response();
    r.headers_mut()
        .insert("x-should-retry", HeaderValue::from_static("false"));
    r
}

/// The documented error type for a status (docs/api.md, "Errors").
fn error_kind(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::CONFLICT => "conflict",
        s if s.is_server_error() => "unavailable",
        _ => "invalid_request_error",
    }
}

/// Waits for task `id` and returns its result text, or why there is none.
async fn outcome(api: &Api, id: &str) -> Result<String, (StatusCode, String)> {
    let finished = api.wait(id, None).await;
    if !finished.ok {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{}; task `{id}` is not lost: it goes on when the daemon runs again (`GET /tasks/{id}` follows it) — do not send it again",
                finished.message
            ),
        ));
    }
    let d = finished.data.unwrap_or_default();
    match d["state"].as_str() {
        Some("done") => {
            let r = api.result(id).await;
            if r.ok {
                Ok(r.data.unwrap_or_default()["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string())
            } else {
                Err((StatusCode::INTERNAL_SERVER_ERROR, r.message))
            }
        }
        Some("rejected") => Err((
            StatusCode::BAD_REQUEST,
            format!(
                "dirigent rejected task `{id}`: {}",
                d["reason"].as_str().unwrap_or("")
            ),
        )),
        _ => Err((
            StatusCode::BAD_GATEWAY,
            format!(
                "task `{id}` failed: {}; the report is .context/escalations/{id}.md",
                d["reason"]
                    .as_str()
                    .unwrap_or("every agent in its chain failed")
            ),
        )),
    }
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(
    State(st): State<AppState>,
    body: Bytes,
) -> Result<HttpResponse, ApiError> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&body);
    crate::strict_json::check(body).map_err(|e| invalid(e.to_string()))?;
    let req: Value =
        serde_json::from_slice(body).map_err(|e| invalid(format!("the body is not JSON: {e}")))?;
    let model = match &req["model"] {
        Value::String(m) => m.clone(),
        Value::Null => return Err(invalid("`model` is missing; `GET /v1/models` lists them")),
        _ => {
            return Err(invalid(
                "`model` must be a string naming a model; `GET /v1/models` lists them",
            ));
        }
    };
    let messages = req["messages"]
        .as_array()
        .ok_or_else(|| invalid("`messages` must be an array"))?;
    let stream = match &req["stream"] {
        Value::Null => false,
        Value::Bool(b) => *b,
        _ => return Err(invalid("`stream` must be `true` or `false`")),
    };
    let Catalog { models, unfit } = catalog(&st.api).await?;
    if let Some((name, why)) = model
        .strip_prefix("workflow:")
        .and_then(|name| unfit.iter().find(|(n, _)| n == name))
    {
        return Err(invalid(format!(
            "model `{model}` cannot take a chat: {why}. Run workflow `{name}` with `POST /tasks` (`{{\"workflow\": \"{name}\", \"vars\": {{…}}}}`), MCP's `run_workflow` or `dirigent workflow run {name}`"
        )));
    }
    let target = resolve(&models, &model).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!(
                "no model `{model}` (models: {}); `GET /v1/models` lists them",
                models
                    .iter()
                    .map(|(id, _)| id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })?;
    let (prompt, last_user) = prompt_of(messages)?;
    let mut fields = TaskFields {
        id: Some(format!("chat-{}", crate::submit::generate_id(&last_user))),
        title: Some(crate::task::title_from_prompt(&last_user)),
        // A chat answer is text: it needs no worktree, and changes nothing to merge.
        workdir: Some(crate::workdir::Workdir::Shared),
        ..Default::default()
    };
    match target {
        Target::DefaultChain => fields.prompt = Some(prompt),
        Target::Role(r) => {
            fields.prompt = Some(prompt);
            fields.role = Some(r);
        }
        Target::Agent(a) => {
            fields.prompt = Some(prompt);
            fields.agent = Some(a);
        }
        Target::Workflow { name, var } => {
            fields.workflow = Some(name);
            fields.vars.insert(var, prompt);
        }
    }
    let submitted = st
        .api
        .call(Request::Submit {
            task: Box::new(fields),
        })
        .await;
    if !submitted.ok {
        return Err(ApiError::from_response(submitted));
    }
    let id = submitted.data.unwrap_or_default()["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let completion_id = format!("chatcmpl-{id}");
    let created = now_secs();
    let task_header = HeaderValue::from_str(&id).ok();

    if !stream {
        let mut response = match outcome(&st.api, &id).await {
            Ok(text) => axum::Json(json!({
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }],
                "dirigent": {"task": id},
            }))
            .into_response(),
            Err((StatusCode::BAD_GATEWAY, message)) => failed(message),
            Err((status, message)) => {
                let mut r = ApiError::new(status, error_kind(status), message).into_response();
                // The task is the daemon's now (back in its inbox when it stopped): a client
                // that sent it again would have it done twice.
                r.headers_mut()
                    .insert("x-should-retry", HeaderValue::from_static("false"));
                r
            }
        };
        if let Some(v) = task_header {
            response.headers_mut().insert("x-dirigent-task", v);
        }
        return Ok(response);
    }

    // Streaming: the role chunk at once, then the whole result as one content chunk when the
    // task is done (agents answer in one piece), then the finish chunk and `[DONE]`.
    let chunk = move |delta: Value, finish: Option<&str>| {
        json!({
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
        .to_string()
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<SseEvent>(4);
    let api = st.api.clone();
    let task_id = id.clone();
    tokio::spawn(async move {
        let _ = tx
            .send(
                SseEvent::default().data(chunk(json!({"role": "assistant", "content": ""}), None)),
            )
            .await;
        let events = match outcome(&api, &task_id).await {
            Ok(text) => vec![
                SseEvent::default().data(chunk(json!({"content": text}), None)),
                SseEvent::default().data(chunk(json!({}), Some("stop"))),
            ],
            Err((status, message)) => {
                let kind = if status == StatusCode::BAD_GATEWAY {
                    "agent_chain_failed"
                } else {
                    error_kind(status)
                };
                vec![
                    SseEvent::default()
                        .data(ApiError::new(status, kind, message).body().to_string()),
                ]
            }
        };
        for e in events {
            if tx.send(e).await.is_err() {
                return;
            }
        }
        let _ = tx.send(SseEvent::default().data("[DONE]")).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let e = rx.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(e), rx))
    });
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(crate::web::KEEP_ALIVE))
        .into_response();
    if let Some(v) = task_header {
        response.headers_mut().insert("x-dirigent-task", v);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_user_message_is_the_prompt_and_a_conversation_is_written_out() {
        let (p, last) = prompt_of(&[
            json!({"role": "system", "content": "Be brief."}),
            json!({"role": "user", "content": [{"type": "text", "text": "Fix the bug"}]}),
        ])
        .unwrap();
        assert_eq!(p, "Be brief.\n\nFix the bug");
        assert_eq!(last, "Fix the bug");
        let (p, last) = prompt_of(&[
            json!({"role": "user", "content": "a"}),
            json!({"role": "assistant", "content": "b"}),
            json!({"role": "user", "content": "c"}),
        ])
        .unwrap();
        assert!(
            p.contains("## user\n\na\n\n## assistant\n\nb\n\n## user\n\nc\n"),
            "{p}"
        );
        assert_eq!(last, "c");
        assert!(prompt_of(&[json!({"role": "assistant", "content": "x"})]).is_err());
        assert!(prompt_of(&[json!({"role": "user", "content": 3})]).is_err());
    }

    #[test]
    fn bare_names_and_prefixed_names_resolve() {
        let models = vec![
            ("dirigent".to_string(), Target::DefaultChain),
            ("review".to_string(), Target::Role("review".into())),
            ("agent:review".to_string(), Target::Agent("review".into())),
            ("ok".to_string(), Target::Agent("ok".into())),
        ];
        assert_eq!(resolve(&models, "ok"), Some(Target::Agent("ok".into())));
        assert_eq!(
            resolve(&models, "review"),
            Some(Target::Role("review".into()))
        );
        assert_eq!(
            resolve(&models, "agent:review"),
            Some(Target::Agent("review".into()))
        );
        assert_eq!(
            resolve(&models, "role:review"),
            Some(Target::Role("review".into()))
        );
        assert_eq!(
            resolve(&models, "agent:ok"),
            Some(Target::Agent("ok".into()))
        );
        assert_eq!(resolve(&models, "nope"), None);
    }

    #[test]
    fn a_chat_fills_one_variable_that_names_no_file() {
        let v = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // (required, path variables, the variable the chat fills or a word of why not)
        type Case<'a> = (&'a [&'a str], &'a [&'a str], Result<&'a str, &'a str>);
        let cases: &[Case] = &[
            (&["goal"], &[], Ok("goal")),
            (&["goal"], &["feature"], Ok("goal")),
            (&["feature"], &["feature"], Err("`feature` names files")),
            (&[], &[], Err("needs no variable")),
            (&[], &["feature"], Err("needs no variable")),
            (&["a", "b"], &[], Err("needs 2 variables (`a`, `b`)")),
        ];
        for (required, paths, want) in cases {
            let got = chat_variable(&v(required), &v(paths));
            match (want, &got) {
                (Ok(var), Ok(got)) => assert_eq!(got, var, "{required:?} {paths:?}"),
                (Err(word), Err(why)) => {
                    assert!(why.contains(word), "{required:?} {paths:?}: {why}")
                }
                _ => panic!("{required:?} {paths:?}: expected {want:?}, got {got:?}"),
            }
        }
    }
}
