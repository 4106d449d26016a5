//! `dirigent workflow list|show|copy|validate`: the workflows a workspace has, checked and
//! explained.

use super::*;

fn find_workflow(ws: &Workspace, name: &str) -> Result<dirigent::workflow::Definition> {
    let all = dirigent::workflow::discover(&ws.workflows())?;
    let names: Vec<&str> = all.iter().map(|d| d.name.as_str()).collect();
    all.iter().find(|d| d.name == name).cloned().ok_or_else(|| {
        anyhow::anyhow!(
            "no workflow `{name}` (workflows: {}); `dirigent workflow list` shows them",
            names.join(", ")
        )
    })
}

pub fn workflow_list(ws: &Workspace, as_json: bool) -> Result<ExitCode> {
    let config = Config::load(&ws.config())?;
    let rows = dirigent::catalog::workflows(ws, &config)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    for r in &rows {
        let phases: Vec<&str> = r["phases"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        println!(
            "{:<30} {}",
            r["name"].as_str().unwrap_or(""),
            r["description"].as_str().unwrap_or("")
        );
        if r["valid"] == true {
            println!(
                "{:<30} {} ({})",
                "",
                phases.join(" → "),
                r["source"].as_str().unwrap_or("")
            );
        } else {
            println!(
                "{:<30} INVALID: run `dirigent workflow validate {}` ({})",
                "",
                r["name"].as_str().unwrap_or(""),
                r["source"].as_str().unwrap_or("")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn workflow_show(ws: &Workspace, name: &str) -> Result<ExitCode> {
    let def = find_workflow(ws, name)?;
    println!("# {} ({})", def.name, def.source);
    print!("{}", def.text);
    if !def.text.ends_with('\n') {
        println!();
    }
    // The prompts each phase really gets, defaults included, as comments: the output stays a
    // definition that can be saved and edited.
    if let Ok(config) = Config::load(&ws.config())
        && let Ok(wf) = dirigent::workflow::validate(&def, &config)
    {
        print!("{}", dirigent::workflow::explain::prompt_comments(&wf));
    }
    Ok(ExitCode::SUCCESS)
}

/// Copies a workflow's definition into `.context/workflows/NAME.yaml` to edit it there (the
/// copy replaces the built-in). Refuses to overwrite a non-empty file unless `force`.
pub fn workflow_copy(ws: &Workspace, name: &str, force: bool) -> Result<ExitCode> {
    let dest = ws.workflows().join(format!("{name}.yaml"));
    // The built-in, even when a copy exists: copying again starts over from the original.
    let text = match dirigent::workflow::BUILTIN.iter().find(|(n, _)| *n == name) {
        Some((_, text)) => text.to_string(),
        None => find_workflow(ws, name)?.text,
    };
    let existing = std::fs::read_to_string(&dest).unwrap_or_default();
    if !existing.trim().is_empty() && !force {
        bail!(
            "`{}` exists already; edit it, or give `--force` to replace it with the built-in",
            dest.display()
        );
    }
    std::fs::create_dir_all(ws.workflows())
        .with_context(|| format!("cannot create `{}`", ws.workflows().display()))?;
    std::fs::write(&dest, text).with_context(|| format!("cannot write `{}`", dest.display()))?;
    println!(
        "copied `{name}` to {}; it replaces the built-in from now on (delete it to go back)",
        dest.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn workflow_validate(ws: &Workspace, targets: &[String], json: bool) -> Result<ExitCode> {
    let config = Config::load(&ws.config())?;
    let defs = if targets.is_empty() {
        dirigent::workflow::discover(&ws.workflows())?
    } else {
        let mut defs = Vec::new();
        for t in targets {
            let path = Path::new(t);
            if t.ends_with(".yaml") || t.ends_with(".yml") {
                let text =
                    std::fs::read_to_string(path).with_context(|| format!("cannot read `{t}`"))?;
                let name = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or(t)
                    .to_string();
                defs.push(dirigent::workflow::Definition {
                    name,
                    source: dirigent::workflow::Source::File(path.to_path_buf()),
                    text,
                });
            } else {
                defs.push(find_workflow(ws, t)?);
            }
        }
        defs
    };
    let mut bad = 0;
    let mut rows = Vec::new();
    for def in &defs {
        match dirigent::workflow::validate(def, &config) {
            Ok(wf) if json => rows.push(valid_row(def, &wf, &config)),
            Ok(wf) => {
                let n = wf.phases.len();
                println!(
                    "ok: {} ({n} phase{})",
                    def.label(),
                    if n == 1 { "" } else { "s" }
                );
                println!("  {}", dirigent::workflow::explain::variables_line(&wf));
                for line in dirigent::workflow::explain::runner_lines(&wf, &config) {
                    println!("  {line}");
                }
            }
            Err(problems) => {
                bad += problems.len();
                for p in &problems {
                    eprintln!("error: {p}");
                }
                if json {
                    let problems: Vec<_> = problems
                        .iter()
                        .map(|p| json!({"file": p.file, "line": p.line, "column": p.column, "message": p.message}))
                        .collect();
                    rows.push(json!({"name": def.name, "file": def.label(), "ok": false, "problems": problems}));
                }
            }
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"ok": bad == 0, "problems": bad, "workflows": rows})
            )?
        );
    }
    if bad > 0 {
        eprintln!("{bad} problem{} found", if bad == 1 { "" } else { "s" });
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// A valid workflow for `validate --json`: the variables a run needs and what runs each phase.
fn valid_row(
    def: &dirigent::workflow::Definition,
    wf: &dirigent::workflow::Workflow,
    config: &Config,
) -> serde_json::Value {
    let variables: Vec<_> = wf
        .variables
        .iter()
        .map(|(name, default)| {
            json!({
                "name": name,
                "default": default,
                "required": default.is_none(),
                "declared": wf.vars.contains_key(name),
            })
        })
        .collect();
    let phases: Vec<_> = wf
        .phases
        .iter()
        .map(|phase| {
            let runners: Vec<_> = dirigent::workflow::explain::runners(phase, config)
                .into_iter()
                .map(|r| match r.found {
                    Ok(how) => json!({"step": r.step, "name": r.name, "resolved": how}),
                    Err(why) => json!({"step": r.step, "name": r.name, "error": why}),
                })
                .collect();
            json!({"name": phase.name.value, "type": phase.phase_type().name(), "runners": runners})
        })
        .collect();
    json!({"name": def.name, "file": def.label(), "ok": true, "variables": variables, "phases": phases})
}
