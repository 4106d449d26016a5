//! Tokens and cost of an attempt, read from what the CLIs report in their structured output:
//! claude's `total_cost_usd` and `usage`, codex's `turn.completed.usage`, opencode's
//! `step_finish` cost and tokens, gemini's `stats.models.*.tokens`. A CLI that reports tokens
//! but no cost is priced from the config's `prices` (USD per million tokens). The figures go
//! into the attempt's `attempt_finished` record; budgets and `dirigent stats` add them up.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::preset::OutputFormat;

/// What one attempt used.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    /// In US dollars: as the CLI reported it, else computed from `prices`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// The model the CLI says it used, when it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// A model's price in US dollars per million tokens.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    #[serde(default)]
    pub input: f64,
    #[serde(default)]
    pub output: f64,
}

/// Reads the usage from a structured stdout; `None` for plain text or when nothing is reported.
pub fn parse(format: OutputFormat, stdout: &str) -> Option<Usage> {
    let n = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
    let mut u = Usage::default();
    let mut seen = false;
    match format {
        OutputFormat::Plain => return None,
        OutputFormat::AiderText => {
            // `Tokens: 1.2k sent, 15 received. Cost: $0.0041 message, $0.0041 session.`
            let line = stdout.lines().rev().find(|l| l.starts_with("Tokens: "))?;
            let mut words = line.split_whitespace();
            let count = |w: Option<&str>| -> u64 {
                let w = w.unwrap_or("").trim_end_matches(',');
                let (num, mul) = match w.strip_suffix('k') {
                    Some(n) => (n, 1000.0),
                    None => (w, 1.0),
                };
                num.parse::<f64>().map_or(0, |n| (n * mul).round() as u64)
            };
            words.next();
            u.input_tokens = count(words.next());
            words.next();
            u.output_tokens = count(words.next());
            if let Some(cost) = line
                .split("Cost: $")
                .nth(1)
                .and_then(|c| c.split_whitespace().next())
                .and_then(|c| c.parse::<f64>().ok())
            {
                u.cost_usd = Some(cost);
            }
            seen = true;
        }
        OutputFormat::ClaudeJson => {
            let v: Value = serde_json::from_str(stdout.trim()).ok()?;
            if let Some(usage) = v.get("usage") {
                // Cache reads and writes are input too.
                u.input_tokens = n(usage.get("input_tokens"))
                    + n(usage.get("cache_creation_input_tokens"))
                    + n(usage.get("cache_read_input_tokens"));
                u.output_tokens = n(usage.get("output_tokens"));
                seen = true;
            }
            if let Some(c) = v.get("total_cost_usd").and_then(Value::as_f64) {
                u.cost_usd = Some(c);
                seen = true;
            }
            if let Some(models) = v.get("modelUsage").and_then(Value::as_object)
                && models.len() == 1
            {
                u.model = models.keys().next().cloned();
            }
        }
        OutputFormat::GeminiJson => {
            let v: Value = serde_json::from_str(stdout.trim()).ok()?;
            let models = v.pointer("/stats/models").and_then(Value::as_object)?;
            for (model, m) in models {
                let t = m.get("tokens");
                u.input_tokens += n(t.and_then(|t| t.get("prompt")));
                u.output_tokens += n(t.and_then(|t| t.get("candidates")));
                u.model = Some(model.clone());
                seen = true;
            }
        }
        OutputFormat::CodexJsonl | OutputFormat::OpencodeJsonl => {
            for line in stdout.lines() {
                let Ok(v) = serde_json::from_str::<Value>(line) else {
                    continue;
                };
                match v.get("type").and_then(Value::as_str) {
                    Some("turn.completed") if format == OutputFormat::CodexJsonl => {
                        let usage = v.get("usage");
                        u.input_tokens += n(usage.and_then(|x| x.get("input_tokens")));
                        u.output_tokens += n(usage.and_then(|x| x.get("output_tokens")));
                        seen = true;
                    }
                    Some("step_finish") if format == OutputFormat::OpencodeJsonl => {
                        let part = v.get("part");
                        let tokens = part.and_then(|p| p.get("tokens"));
                        u.input_tokens += n(tokens.and_then(|t| t.get("input")));
                        u.output_tokens += n(tokens.and_then(|t| t.get("output")))
                            + n(tokens.and_then(|t| t.get("reasoning")));
                        if let Some(c) = part.and_then(|p| p.get("cost")).and_then(Value::as_f64) {
                            u.cost_usd = Some(u.cost_usd.unwrap_or(0.0) + c);
                        }
                        seen = true;
                    }
                    _ => {}
                }
            }
        }
    }
    seen.then_some(u)
}

/// Fills in the cost from `prices` when the CLI reported tokens only. The model is the one the
/// CLI reported, else the agent's; an unknown model stays without a cost.
pub fn price(usage: &mut Usage, agent_model: Option<&str>, prices: &BTreeMap<String, Price>) {
    if usage.cost_usd.is_some() {
        return;
    }
    let model = usage.model.as_deref().or(agent_model);
    if let Some(p) = model.and_then(|m| prices.get(m)) {
        usage.cost_usd = Some(
            (usage.input_tokens as f64 * p.input + usage.output_tokens as f64 * p.output)
                / 1_000_000.0,
        );
    }
}

/// Formats dollars for people: `$0.0123`, `$1.23`.
pub fn dollars(usd: f64) -> String {
    if usd != 0.0 && usd.abs() < 0.1 {
        format!("${usd:.4}")
    } else {
        format!("${usd:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cli_reports_usage_its_own_way() {
        let claude = parse(
            OutputFormat::ClaudeJson,
            r#"{"type":"result","result":"x","total_cost_usd":0.0123,"usage":{"input_tokens":100,"cache_read_input_tokens":1000,"output_tokens":300},"modelUsage":{"claude-sonnet-4-5":{}}}"#,
        )
        .unwrap();
        assert_eq!(
            claude,
            Usage {
                input_tokens: 1100,
                output_tokens: 300,
                cost_usd: Some(0.0123),
                model: Some("claude-sonnet-4-5".into())
            }
        );
        let codex = parse(
            OutputFormat::CodexJsonl,
            "{\"type\":\"thread.started\"}\n{\"type\":\"turn.completed\",\"usage\":{\"input_tokens\":500,\"cached_input_tokens\":100,\"output_tokens\":50}}\n",
        )
        .unwrap();
        assert_eq!(
            (codex.input_tokens, codex.output_tokens, codex.cost_usd),
            (500, 50, None)
        );
        let opencode = parse(
            OutputFormat::OpencodeJsonl,
            "{\"type\":\"step_finish\",\"part\":{\"cost\":0.002,\"tokens\":{\"input\":700,\"output\":70,\"reasoning\":5}}}\n{\"type\":\"step_finish\",\"part\":{\"cost\":0.001,\"tokens\":{\"input\":10,\"output\":1}}}\n",
        )
        .unwrap();
        assert_eq!((opencode.input_tokens, opencode.output_tokens), (710, 76));
        assert!((opencode.cost_usd.unwrap() - 0.003).abs() < 1e-12);
        let gemini = parse(
            OutputFormat::GeminiJson,
            r#"{"response":"hi","stats":{"models":{"gemini-2.5-pro":{"tokens":{"prompt":900,"candidates":100,"total":1000}}}}}"#,
        )
        .unwrap();
        assert_eq!(
            (
                gemini.input_tokens,
                gemini.output_tokens,
                gemini.model.as_deref()
            ),
            (900, 100, Some("gemini-2.5-pro"))
        );
        assert_eq!(parse(OutputFormat::Plain, "anything"), None);
        let aider = parse(
            OutputFormat::AiderText,
            "answer\nTokens: 1.2k sent, 15 received. Cost: $0.0041 message, $0.0082 session.\n",
        )
        .expect("aider's Tokens line");
        assert_eq!(
            (aider.input_tokens, aider.output_tokens, aider.cost_usd),
            (1200, 15, Some(0.0041))
        );
        assert_eq!(parse(OutputFormat::ClaudeJson, r#"{"result":"x"}"#), None);
    }

    #[test]
    fn tokens_are_priced_when_no_cost_was_reported() {
        let prices = BTreeMap::from([(
            "gpt-5".to_string(),
            Price {
                input: 1.25,
                output: 10.0,
            },
        )]);
        let mut u = Usage {
            input_tokens: 2_000_000,
            output_tokens: 100_000,
            ..Default::default()
        };
        price(&mut u, Some("gpt-5"), &prices);
        assert_eq!(u.cost_usd, Some(3.5));
        let mut unknown = Usage {
            input_tokens: 5,
            ..Default::default()
        };
        price(&mut unknown, Some("other"), &prices);
        assert_eq!(unknown.cost_usd, None);
        let mut reported = Usage {
            cost_usd: Some(0.5),
            input_tokens: 2_000_000,
            ..Default::default()
        };
        price(&mut reported, Some("gpt-5"), &prices);
        assert_eq!(reported.cost_usd, Some(0.5));
        assert_eq!(dollars(0.0123), "$0.0123");
        assert_eq!(dollars(12.5), "$12.50");
    }
}
