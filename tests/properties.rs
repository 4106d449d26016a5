//! Property tests for the parsers that read untrusted input: task files and the config.
//! `PROPTEST_CASES=100000 cargo nextest run --test properties` runs a longer search.

use std::collections::BTreeMap;

use dirigent::config::Config;
use dirigent::task::{TaskFields, parse_fields};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        // Failures print their minimal input; nothing is written into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// No byte sequence makes the task parser panic, whatever the file type.
    #[test]
    fn task_parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048), md in any::<bool>()) {
        let name = if md { "t.md" } else { "t.json" };
        let _ = parse_fields(name, &bytes);
    }

    /// Nor does text that looks almost like a task.
    #[test]
    fn near_miss_tasks_never_panic(text in r#"(---\n)?[a-z_]{0,8}: ?[\[\]{}"'!&*|>0-9a-z \n-]{0,64}(\n---\n)?[a-z ]{0,16}"#) {
        let _ = parse_fields("t.md", text.as_bytes());
        let _ = parse_fields("t.json", text.as_bytes());
    }

    /// Whatever fields a task has, writing them as JSON and reading them back gives them again.
    #[test]
    fn json_tasks_round_trip(
        prompt in "\\PC{1,200}",
        title in proptest::option::of("\\PC{0,40}"),
        agent in proptest::option::of("[a-z][a-z0-9_-]{0,12}"),
        priority in any::<i64>(),
        after in proptest::collection::vec("[a-z][a-z0-9-]{0,10}", 0..4),
        vars in proptest::collection::btree_map("[a-z]{1,8}", "\\PC{0,20}", 0..4),
    ) {
        let fields = TaskFields { prompt: Some(prompt), title, agent, priority, after, vars, ..Default::default() };
        let json = serde_json::to_string(&fields).unwrap();
        prop_assert_eq!(parse_fields("t.json", json.as_bytes()).unwrap(), fields);
    }

    /// A Markdown file without front matter is its prompt, trimmed. (A body of only a BOM or
    /// whitespace is an empty file, rejected; that is covered by the unit tests.)
    #[test]
    fn markdown_body_is_the_prompt(body in "[a-zA-Z0-9#][\\PC\\n]{0,300}") {
        let fields = parse_fields("t.md", body.as_bytes()).unwrap();
        prop_assert_eq!(fields.prompt.as_deref(), Some(body.trim()));
    }

    /// Front matter keys come through, and the body stays the prompt.
    #[test]
    fn markdown_front_matter_round_trips(agent in "[a-z][a-z0-9]{0,10}", priority in -1000i64..1000, body in "[a-zA-Z][a-zA-Z0-9 .,]{0,80}") {
        let text = format!("---\nagent: {agent}\npriority: {priority}\n---\n{body}\n");
        let fields = parse_fields("t.md", text.as_bytes()).unwrap();
        prop_assert_eq!(fields.agent.as_deref(), Some(agent.as_str()));
        prop_assert_eq!(fields.priority, priority);
        prop_assert_eq!(fields.prompt.as_deref(), Some(body.trim()));
    }

    /// No text makes the config parser panic.
    #[test]
    fn config_parsing_never_panics(text in "\\PC{0,400}") {
        let _ = Config::parse(&text, "prop");
    }

    /// Config-shaped YAML never panics either, and what parses is internally consistent.
    #[test]
    fn config_shaped_yaml_is_consistent(
        concurrency in 0usize..20,
        agents in proptest::collection::btree_map("[a-z]{1,6}", ("[a-z/]{1,10}", proptest::option::of(0usize..4), "[0-9]{1,3}(ms|s|m)?"), 0..4),
        chain in proptest::collection::vec("[a-z]{1,6}", 0..4),
    ) {
        let mut text = format!("concurrency: {concurrency}\nagents:\n");
        for (name, (cmd, max, timeout)) in &agents {
            text.push_str(&format!("  {name}: {{ command: [\"{cmd}\"], timeout: \"{timeout}\""));
            if let Some(m) = max {
                text.push_str(&format!(", max_parallel: {m}"));
            }
            text.push_str(" }\n");
        }
        text.push_str(&format!("default_chain: [{}]\n", chain.join(", ")));
        if let Ok(cfg) = Config::parse(&text, "prop") {
            prop_assert!(cfg.concurrency >= 1);
            for a in cfg.default_chain.iter().flatten() {
                prop_assert!(cfg.agents.contains_key(a), "chain names unknown agent {}", a);
            }
            for agent in cfg.agents.values() {
                prop_assert!(agent.max_parallel != Some(0));
                prop_assert!(!agent.timeout.is_zero());
            }
            let _: BTreeMap<_, _> = cfg.agents.iter().map(|(k, v)| (k.clone(), v.argv(&dirigent::config::ArgvValues { prompt: "p", prompt_file: "f", task_id: "t", workspace: "w" }))).collect();
        }
    }
}
