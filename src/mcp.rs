//! The MCP door: `dirigent mcp` speaks the Model Context Protocol over stdio (with `rmcp`, the
//! official Rust SDK), so an assistant such as Claude Code can hand work to dirigent as tool
//! calls. It starts nothing: every tool is one request on the running daemon's control socket
//! (one connection per call, so a long `wait` never blocks another tool), and the daemon's
//! [`crate::api::Api`] answers it like any other door.
//!
//! Register it with `claude mcp add dirigent -- dirigent --root /path/to/project mcp`.

use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    InitializeResult, JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities,
    Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde_json::{Value, json};

use crate::protocol::{Request, Response};
use crate::task::TaskFields;
use crate::workspace::Workspace;

/// How long `wait_task` (and `wait: true`) waits when the call does not say.
const DEFAULT_WAIT_SECONDS: u64 = 600;

/// The server: a workspace whose daemon the tools talk to.
#[derive(Clone)]
pub struct Server {
    ws: Workspace,
}

/// Serves MCP on stdin/stdout until the client closes it.
pub async fn serve_stdio(ws: Workspace) -> std::io::Result<()> {
    let (to_server, server_in) = tokio::io::duplex(1 << 16);
    let (server_out, from_server) = tokio::io::duplex(1 << 16);
    let (errors_tx, errors_rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(screen_input(tokio::io::stdin(), to_server, errors_tx));
    let writer = tokio::spawn(write_output(from_server, errors_rx, tokio::io::stdout()));
    let ended = async {
        let running = Server { ws }
            .serve((server_in, server_out))
            .await
            .map_err(|e| std::io::Error::other(format!("cannot start the MCP session: {e}")))?;
        running
            .waiting()
            .await
            .map_err(|e| std::io::Error::other(format!("the MCP session failed: {e}")))?;
        Ok(())
    }
    .await;
    // The process ends when this returns: the writer must first have said everything — a parse
    // error answered just before the client closed its input would otherwise be lost with the
    // runtime. It ends once the server's side of the pipe is gone; the bound is for a server
    // that somehow keeps it.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), writer).await;
    ended
}

/// The longest message line read from the client; a longer one is answered with an error.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Passes the client's lines to the MCP server, but answers a line that is not JSON (too deep,
/// too long, cut off) itself with a JSON-RPC parse error, which the SDK would drop without a
/// word — a client then knows what went wrong instead of waiting.
async fn screen_input(
    input: impl tokio::io::AsyncRead + Unpin,
    mut to_server: tokio::io::DuplexStream,
    errors: tokio::sync::mpsc::Sender<String>,
) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut reader = tokio::io::BufReader::new(input);
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut too_long = false;
        loop {
            let avail = match reader.fill_buf().await {
                Ok(a) => a,
                Err(_) => return,
            };
            if avail.is_empty() {
                if line.is_empty() && !too_long {
                    return;
                }
                break;
            }
            let (take, done) = match avail.iter().position(|b| *b == b'\n') {
                Some(i) => (i, true),
                None => (avail.len(), false),
            };
            if line.len() + take > MAX_MESSAGE {
                too_long = true;
                line.clear();
            } else {
                line.extend_from_slice(&avail[..take]);
            }
            reader.consume(if done { take + 1 } else { take });
            if done {
                break;
            }
        }
        if line.iter().all(u8::is_ascii_whitespace) && !too_long {
            continue;
        }
        let problem = if too_long {
            Some(format!("the message is longer than {MAX_MESSAGE} bytes"))
        } else {
            crate::strict_json::check(&line)
                .and_then(|()| serde_json::from_slice::<serde_json::Value>(&line).map(drop))
                .err()
                .map(|e| e.to_string())
        };
        match problem {
            None => {
                line.push(b'\n');
                if to_server.write_all(&line).await.is_err() {
                    return;
                }
            }
            Some(why) => {
                let answer = json!({
                    "jsonrpc": "2.0",
                    "id": null,
                    "error": {"code": -32700, "message": format!("parse error: {why}")},
                });
                if errors.send(answer.to_string()).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Writes the server's messages and the screen's error answers to stdout, a whole line at a
/// time, so they never interleave.
async fn write_output(
    from_server: tokio::io::DuplexStream,
    mut errors: tokio::sync::mpsc::Receiver<String>,
    mut out: impl tokio::io::AsyncWrite + Unpin,
) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut lines = tokio::io::BufReader::new(from_server).lines();
    let mut errors_open = true;
    loop {
        let line = tokio::select! {
            // The screen's answers first: one sent just before the input ended must not be
            // dropped when the server, told of the end, ends too.
            biased;
            e = errors.recv(), if errors_open => match e {
                Some(e) => e,
                None => {
                    errors_open = false;
                    continue;
                }
            },
            l = lines.next_line() => match l {
                Ok(Some(l)) => l,
                _ => {
                    // The server ended: what the screen has still to say goes out first.
                    while let Ok(e) = errors.try_recv() {
                        let _ = out.write_all(format!("{e}\n").as_bytes()).await;
                    }
                    let _ = out.flush().await;
                    return;
                }
            },
        };
        let mut bytes = line.into_bytes();
        bytes.push(b'\n');
        if out.write_all(&bytes).await.is_err() || out.flush().await.is_err() {
            return;
        }
    }
}

fn schema(v: Value) -> Arc<JsonObject> {
    match v {
        Value::Object(m) => Arc::new(m),
        _ => Arc::new(JsonObject::new()),
    }
}

/// The tools, with their input schemas.
fn tools() -> Vec<Tool> {
    let string = json!({"type": "string"});
    vec![
        Tool::new(
            "submit_task",
            "Hand a task to dirigent: it runs through a fallback chain of agent CLIs (claude, \
             gemini, codex, …), each attempt judged, and records everything. Returns the task id; \
             with wait=true, waits and returns the result. Pick the agents with `role`, `agent` \
             or `chain` (default: the configured default chain).",
            schema(json!({
                "type": "object",
                "properties": {
                    "prompt": {"type": "string", "description": "What the agent should do."},
                    "role": {"type": "string", "description": "A configured role; its chain runs the task."},
                    "agent": {"type": "string", "description": "Pin one agent."},
                    "chain": {"type": "array", "items": {"type": "string"}, "description": "An explicit fallback chain of agent names."},
                    "output": {"type": "string", "description": "Workspace-relative file for the result (default .context/outbox/<id>.md)."},
                    "title": string,
                    "id": {"type": "string", "description": "The task id (default: generated)."},
                    "files": {"type": "array", "items": {"type": "string"}, "description": "Workspace files to include in the prompt."},
                    "wait": {"type": "boolean", "description": "Wait for the task and return its result."},
                    "timeout_seconds": {"type": "integer", "minimum": 1, "description": "With wait: how long (default 600)."}
                },
                "required": ["prompt"]
            })),
        ),
        Tool::new(
            "wait_task",
            "Wait until a task has finished (done, failed, cancelled or rejected) or waits to be \
             merged (merge_waiting: verified work for you to review) and return its state, with \
             the result text when it is done.",
            schema(json!({
                "type": "object",
                "properties": {
                    "id": string,
                    "timeout_seconds": {"type": "integer", "minimum": 1, "description": "Default 600."}
                },
                "required": ["id"]
            })),
        ),
        Tool::new(
            "task_status",
            "One task's state and attempts (with `id`), or every task the daemon holds.",
            schema(json!({
                "type": "object",
                "properties": {
                    "id": string,
                    "state": {"type": "string", "enum": crate::state::Phase::FILTERS, "description": "Without id: only tasks in this state."}
                }
            })),
        ),
        Tool::new(
            "task_result",
            "The result text of a task that is done.",
            schema(json!({"type": "object", "properties": {"id": string}, "required": ["id"]})),
        ),
        Tool::new(
            "cancel_task",
            "Stop a task: its running agent's whole process group, or its place in the queue.",
            schema(json!({"type": "object", "properties": {"id": string}, "required": ["id"]})),
        ),
        Tool::new(
            "merge_task",
            "Merge a task that waits to be merged (merge_waiting) into its target branch, through \
             the merge queue.",
            schema(json!({"type": "object", "properties": {"id": string}, "required": ["id"]})),
        ),
        Tool::new(
            "discard_task",
            "Throw away an editing task's branch and worktree; a task waiting to be merged ends \
             cancelled.",
            schema(json!({"type": "object", "properties": {"id": string}, "required": ["id"]})),
        ),
        Tool::new(
            "task_diff",
            "What an editing task changed against its base: a stat and a patch (at most 1 MiB).",
            schema(json!({"type": "object", "properties": {"id": string}, "required": ["id"]})),
        ),
        Tool::new(
            "list_agents",
            "The configured agents (installed or not, limits, recent record), roles and the \
             default chain.",
            schema(json!({"type": "object", "properties": {}})),
        ),
        Tool::new(
            "list_workflows",
            "The multi-agent workflows (ensemble planning, evaluator loops, …) with their phases \
             and variables.",
            schema(json!({"type": "object", "properties": {}})),
        ),
        Tool::new(
            "run_workflow",
            "Start a workflow run. Returns its id; with wait=true, waits and returns the result.",
            schema(json!({
                "type": "object",
                "properties": {
                    "name": string,
                    "vars": {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}, "description": "The workflow's variables (see list_workflows); a number or a boolean is taken as its text."},
                    "id": string,
                    "wait": {"type": "boolean"},
                    "timeout_seconds": {"type": "integer", "minimum": 1}
                },
                "required": ["name"]
            })),
        ),
    ]
}

/// A tool's failure, shown to the caller (not a protocol error).
fn tool_error(message: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message.into())])
}

fn tool_json(v: &Value) -> CallToolResult {
    let mut r = CallToolResult::success(vec![ContentBlock::text(
        serde_json::to_string_pretty(v).unwrap_or_default(),
    )]);
    r.structured_content = Some(v.clone());
    r
}

fn arg_str(args: &JsonObject, key: &str) -> Option<String> {
    args.get(key).and_then(Value::as_str).map(str::to_string)
}

/// Why a tool call's arguments cannot be used: the client hears it as invalid parameters.
#[derive(Debug, thiserror::Error)]
enum BadCall {
    #[error("`{0}` is required")]
    Missing(&'static str),
    #[error("`{0}` must be a list of strings")]
    NotStrings(&'static str),
    #[error("`vars` must be an object of strings (numbers and booleans are taken as their text)")]
    VarsNotObject,
    #[error("no tool `{0}`")]
    NoTool(String),
    /// An argument the tool's schema does not have, or of another type or range.
    #[error("{0}")]
    Argument(String),
}

/// Checks `args` against the tool's input schema: every argument known, of its type (a string,
/// a whole number at or over its `minimum`, a boolean, a list of strings, an object), one of its
/// `enum` when it has one. An argument dropped or replaced by a default without a word would
/// have the caller believe it counted.
fn check_args(schema: &JsonObject, args: &JsonObject) -> Result<(), BadCall> {
    let empty = JsonObject::new();
    let properties = schema
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    for (key, value) in args {
        let Some(spec) = properties.get(key) else {
            let mut known: Vec<&str> = properties.keys().map(String::as_str).collect();
            known.sort_unstable();
            return Err(BadCall::Argument(format!(
                "no argument `{key}` (this tool takes: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        };
        if value.is_null() {
            continue;
        }
        let wrong = |what: &str| BadCall::Argument(format!("`{key}` must be {what}"));
        match spec["type"].as_str() {
            Some("string") => {
                let Some(text) = value.as_str() else {
                    return Err(wrong("a string"));
                };
                if let Some(allowed) = spec["enum"].as_array()
                    && !allowed.iter().any(|a| a.as_str() == Some(text))
                {
                    let allowed: Vec<&str> = allowed.iter().filter_map(Value::as_str).collect();
                    return Err(wrong(&format!("one of {}", allowed.join(", "))));
                }
            }
            Some("integer") => {
                let min = spec["minimum"].as_u64().unwrap_or(0);
                // `5.0` is a whole number too (some clients write every number so).
                let whole = value.as_u64().or_else(|| {
                    value
                        .as_f64()
                        .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64)
                        .map(|f| f as u64)
                });
                if whole.is_none_or(|n| n < min) {
                    return Err(wrong(&format!("a whole number of at least {min}")));
                }
            }
            Some("boolean") if !value.is_boolean() => return Err(wrong("`true` or `false`")),
            Some("array")
                if !value
                    .as_array()
                    .is_some_and(|a| a.iter().all(Value::is_string)) =>
            {
                return Err(wrong("a list of strings"));
            }
            Some("object") if !value.is_object() => return Err(wrong("an object")),
            _ => {}
        }
    }
    Ok(())
}

fn required(args: &JsonObject, key: &'static str) -> Result<String, BadCall> {
    arg_str(args, key).ok_or(BadCall::Missing(key))
}

fn arg_strings(args: &JsonObject, key: &'static str) -> Result<Option<Vec<String>>, BadCall> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or(BadCall::NotStrings(key))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(BadCall::NotStrings(key)),
    }
}

impl Server {
    async fn ask(&self, req: Request) -> Result<Response, crate::control::ClientError> {
        crate::control::request_async(&self.ws, &req).await
    }

    /// Waits for `id`; the result text is added when it is done.
    async fn wait(&self, id: &str, args: &JsonObject) -> CallToolResult {
        let secs = args
            .get("timeout_seconds")
            .and_then(Value::as_u64)
            .unwrap_or(DEFAULT_WAIT_SECONDS);
        let r = match self
            .ask(Request::Wait {
                id: id.to_string(),
                timeout_ms: Some(secs.saturating_mul(1000)),
            })
            .await
        {
            Ok(r) => r,
            Err(e) => return tool_error(e.to_string()),
        };
        let Some(mut data) = r.data else {
            return tool_error(r.message);
        };
        if !r.ok {
            return tool_error(format!(
                "task `{id}` has not finished after {secs}s (it is {}); call wait_task again",
                data["state"].as_str().unwrap_or("unknown")
            ));
        }
        match data["state"].as_str() {
            Some("done") => match self.ask(Request::Result { id: id.to_string() }).await {
                Ok(res) if res.ok => {
                    let text = res.data.unwrap_or_default()["text"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    // The prompt is the caller's own; the result is what it asked for.
                    if let Some(o) = data.as_object_mut() {
                        o.remove("spec");
                    }
                    let mut out = CallToolResult::success(vec![ContentBlock::text(text.clone())]);
                    out.structured_content =
                        Some(json!({"id": id, "state": "done", "result": text, "task": data}));
                    out
                }
                Ok(res) => tool_error(res.message),
                Err(e) => tool_error(e.to_string()),
            },
            Some("rejected") => tool_error(format!(
                "task `{id}` was rejected: {}",
                data["reason"].as_str().unwrap_or("")
            )),
            // Verified work that waits for a person (or a clean checkout): not a failure.
            Some("merge_waiting") => {
                let reason = data["reason"].as_str().unwrap_or("").to_string();
                let text = format!(
                    "task `{id}` is verified and waits to be merged: {reason}. Review it with task_diff, then merge_task (or discard_task)."
                );
                let mut out = CallToolResult::success(vec![ContentBlock::text(text)]);
                out.structured_content =
                    Some(json!({"id": id, "state": "merge_waiting", "reason": reason}));
                out
            }
            _ if data["reason"].as_str() == Some(crate::state::CANCELLED_REASON) => {
                tool_error(format!("task `{id}` was cancelled"))
            }
            _ => {
                let reason = data["reason"]
                    .as_str()
                    .unwrap_or("every agent in its chain failed");
                // The report is named only when there is one (a run's child, say, has none).
                let report = format!(".context/escalations/{id}.md");
                let report = if self.ws.root().join(&report).is_file() {
                    format!(" The escalation report is {report}.")
                } else {
                    String::new()
                };
                tool_error(format!(
                    "task `{id}` failed: {reason}.{report} Fix the cause and `dirigent retry {id}`, or submit it to another agent."
                ))
            }
        }
    }

    /// Submits, then returns the id or (with `wait`) the outcome.
    async fn submit(&self, mut fields: TaskFields, args: &JsonObject) -> CallToolResult {
        // Run by an agent inside an attempt: the task counts against that task's limit.
        fields.parent = crate::task::parent_from_env(self.ws.root());
        let r = match self
            .ask(Request::Submit {
                task: Box::new(fields),
            })
            .await
        {
            Ok(r) => r,
            Err(e) => return tool_error(e.to_string()),
        };
        if !r.ok {
            return tool_error(r.message);
        }
        let id = r.data.unwrap_or_default()["id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if args.get("wait").and_then(Value::as_bool) == Some(true) {
            return self.wait(&id, args).await;
        }
        tool_json(&json!({
            "id": id,
            "next": format!("call wait_task with id `{id}` for its result"),
        }))
    }

    /// Answers with `data` (or the refusal).
    async fn data(&self, req: Request) -> CallToolResult {
        match self.ask(req).await {
            Ok(r) if r.ok => tool_json(&r.data.unwrap_or_else(|| json!({"message": r.message}))),
            Ok(r) => tool_error(r.message),
            Err(e) => tool_error(e.to_string()),
        }
    }

    async fn call(&self, name: &str, args: JsonObject) -> Result<CallToolResult, BadCall> {
        let tools = tools();
        let tool = tools
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| BadCall::NoTool(name.to_string()))?;
        check_args(&tool.input_schema, &args)?;
        Ok(match name {
            "submit_task" => {
                let prompt = required(&args, "prompt")?;
                let fields = TaskFields {
                    id: arg_str(&args, "id"),
                    title: arg_str(&args, "title"),
                    prompt: Some(prompt),
                    role: arg_str(&args, "role"),
                    agent: arg_str(&args, "agent"),
                    chain: arg_strings(&args, "chain")?,
                    output: arg_str(&args, "output"),
                    files: arg_strings(&args, "files")?.unwrap_or_default(),
                    ..Default::default()
                };
                self.submit(fields, &args).await
            }
            "run_workflow" => {
                let name = required(&args, "name")?;
                let mut vars = std::collections::BTreeMap::new();
                if let Some(v) = args.get("vars").filter(|v| !v.is_null()) {
                    let obj = v.as_object().ok_or(BadCall::VarsNotObject)?;
                    for (k, v) in obj {
                        let v = match v {
                            Value::String(s) => s.clone(),
                            Value::Number(_) | Value::Bool(_) => v.to_string(),
                            _ => return Err(BadCall::VarsNotObject),
                        };
                        vars.insert(k.clone(), v);
                    }
                }
                let fields = TaskFields {
                    id: arg_str(&args, "id"),
                    workflow: Some(name),
                    vars,
                    ..Default::default()
                };
                self.submit(fields, &args).await
            }
            "wait_task" => {
                let id = required(&args, "id")?;
                self.wait(&id, &args).await
            }
            "task_status" => match arg_str(&args, "id") {
                Some(id) => self.data(Request::Get { id }).await,
                None => {
                    self.data(Request::List {
                        state: arg_str(&args, "state"),
                        filter: Default::default(),
                    })
                    .await
                }
            },
            "task_result" => {
                let id = required(&args, "id")?;
                match self.ask(Request::Result { id }).await {
                    Ok(r) if r.ok => CallToolResult::success(vec![ContentBlock::text(
                        r.data.unwrap_or_default()["text"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    )]),
                    Ok(r) => tool_error(r.message),
                    Err(e) => tool_error(e.to_string()),
                }
            }
            "cancel_task" => {
                let id = required(&args, "id")?;
                self.data(Request::Cancel { id }).await
            }
            "merge_task" => {
                let id = required(&args, "id")?;
                self.data(Request::Merge { id }).await
            }
            "discard_task" => {
                let id = required(&args, "id")?;
                self.data(Request::Discard { id }).await
            }
            "task_diff" => {
                let id = required(&args, "id")?;
                self.data(Request::Diff { id }).await
            }
            "list_agents" => self.data(Request::Agents).await,
            "list_workflows" => self.data(Request::Workflows).await,
            other => return Err(BadCall::NoTool(other.to_string())),
        })
    }
}

impl ServerHandler for Server {
    fn get_info(&self) -> InitializeResult {
        InitializeResult::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("dirigent", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "dirigent supervises AI coding-agent CLIs. Use submit_task to delegate work \
                 (large reviews, second opinions, bulk generation) and wait_task for the result; \
                 a failed task comes with the reason and an escalation report path.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = request.arguments.unwrap_or_default();
        match self.call(&request.name, args).await {
            Ok(result) => Ok(result.into()),
            Err(bad) => Err(ErrorData::invalid_params(bad.to_string(), None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each tool's arguments against its schema: what is refused, and with which words.
    #[test]
    fn arguments_are_checked_against_the_tools_schema() {
        let tools = tools();
        let schema_of = |name: &str| {
            tools
                .iter()
                .find(|t| t.name == name)
                .expect("a tool of that name")
                .input_schema
                .clone()
        };
        let cases: [(&str, Value, Option<&str>); 12] = [
            ("task_status", json!({"state": "merge_waiting"}), None),
            (
                "submit_task",
                json!({"prompt": "p", "timeout_seconds": 5.0}),
                None,
            ),
            ("run_workflow", json!({"name": "x", "vars": null}), None),
            ("submit_task", json!({"prompt": "p"}), None),
            (
                "submit_task",
                json!({"prompt": "p", "files": ["a"], "wait": true, "timeout_seconds": 5}),
                None,
            ),
            (
                "submit_task",
                json!({"prompt": "p", "context": ["http.token"]}),
                Some(
                    "no argument `context` (this tool takes: agent, chain, files, id, output, prompt, role, timeout_seconds, title, wait)",
                ),
            ),
            (
                "submit_task",
                json!({"prompt": "p", "timeout_seconds": "abc"}),
                Some("`timeout_seconds` must be a whole number of at least 1"),
            ),
            (
                "submit_task",
                json!({"prompt": "p", "timeout_seconds": -5}),
                Some("`timeout_seconds` must be a whole number of at least 1"),
            ),
            (
                "submit_task",
                json!({"prompt": 7}),
                Some("`prompt` must be a string"),
            ),
            (
                "task_status",
                json!({"state": "bogus"}),
                Some(
                    "`state` must be one of pending, running, merging, merge_waiting, done, failed, cancelled, requeued",
                ),
            ),
            (
                "run_workflow",
                json!({"name": "x", "wait": "yes"}),
                Some("`wait` must be `true` or `false`"),
            ),
            (
                "list_agents",
                json!({"verbose": true}),
                Some("no argument `verbose` (this tool takes: none)"),
            ),
        ];
        for (tool, args, expected) in cases {
            let args = args.as_object().unwrap().clone();
            let got = check_args(&schema_of(tool), &args)
                .err()
                .map(|e| e.to_string());
            assert_eq!(got.as_deref(), expected, "{tool} {args:?}");
        }
    }
}
