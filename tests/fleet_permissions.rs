//! Per-node NATS users with the permissions `dirigent fleet permissions` writes, against a real
//! `nats-server`: the fleet works under them (a task published, run, cancelled, its records in
//! the events stream), and a node's own credentials cannot pass it off as another node — not
//! on the queue, not in the outcomes bucket, not by reading another node's replies or pulling
//! tasks — while a worker refused something says so in `dirigent fleet`. With the roster
//! (`cluster.nodes`), a task the server is made to write onto another node's subject is
//! dropped: its node did not sign it.

mod common;
#[path = "common/nats.rs"]
mod nats;

use std::time::Duration;

use common::*;
use dirigent::ledger::Event;
use nats::*;

/// A node's key pair: its seed in a file its config names, its public key for the server.
struct Key {
    seed: String,
    public: String,
    file: std::path::PathBuf,
}

fn key(dir: &std::path::Path, name: &str) -> Key {
    let pair = nkeys::KeyPair::new_user();
    let seed = pair.seed().unwrap();
    let file = dir.join(format!("{name}.nk"));
    std::fs::write(&file, &seed).unwrap();
    Key {
        seed,
        public: pair.public_key(),
        file,
    }
}

/// `dirigent fleet permissions` with `args`, its block as text.
fn permissions(args: &[String]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dirigent"))
        .arg("fleet")
        .arg("permissions")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "expected `fleet permissions` to print the block: {out:?}"
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A node's config, logging in with `key`.
/// A node's config, logging in and signing with `key`; `roster` is the fleet's
/// `cluster.nodes` (an inline YAML map).
fn node_with_key(
    nats: &Nats,
    name: &str,
    work: bool,
    agents: &str,
    key: &Key,
    roster: &str,
) -> Workspace {
    Workspace::new(&format!(
        "kill_grace: 200ms\nconcurrency: 2\ncluster:\n  url: {}\n  name: {name}\n  ack_wait: 2s\n  work: {work}\n  nkey: {}\n  nodes: {roster}\nagents:\n{agents}",
        nats.url(),
        key.file.display()
    ))
}

/// A client logged in as the node `name` with its key, as a node gone bad would use it by
/// hand, and what the server refuses it (its own words), in order.
async fn connect_as(
    nats: &Nats,
    name: &str,
    key: &Key,
) -> (
    async_nats::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (tx, refusals) = tokio::sync::mpsc::unbounded_channel::<String>();
    let client = async_nats::ConnectOptions::with_nkey(key.seed.clone())
        .custom_inbox_prefix(format!("_INBOX_{name}"))
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(nats.url())
        .await
        .unwrap();
    (client, refusals)
}

/// A task spec for the agent `alpha` as the fleet's messages carry it.
fn spec(id: &str) -> serde_json::Value {
    serde_json::json!({"id": id, "title": "x", "prompt": "", "chain": ["alpha"],
                       "chain_source": "agent", "fields": {"prompt": id, "agent": "alpha"}})
}

/// Waits for the server's next refusal of what `refusals` hears and checks it is a permission
/// violation naming `subject`.
async fn expect_refused(
    refusals: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    what: &str,
    subject: &str,
) {
    let said = tokio::time::timeout(Duration::from_secs(30), refusals.recv())
        .await
        .unwrap_or_else(|_| panic!("expected the server to refuse {what}"))
        .unwrap();
    assert!(
        said.to_lowercase().contains("permissions violation") && said.contains(subject),
        "expected the server to refuse {what} on `{subject}`, it said {said:?}"
    );
}

/// Makes the server write `body` onto `target` for `client`: stored under a provider key of
/// its own (open to every node), then asked for by a direct get whose reply subject is
/// `target` — publish permissions do not look at reply subjects.
async fn echo_onto(client: &async_nats::Client, key: &str, body: String, target: &str) {
    let js = async_nats::jetstream::new(client.clone());
    js.publish(format!("$KV.dirigent_providers.{key}"), body.into())
        .await
        .unwrap()
        .await
        .expect("a provider word is open to every node");
    client
        .publish_with_reply(
            format!("$JS.API.DIRECT.GET.KV_dirigent_providers.$KV.dirigent_providers.{key}"),
            target.to_string(),
            "".into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
}

/// The server's log lines that report a permission violation.
fn violations(nats: &Nats) -> Vec<String> {
    nats.log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("Violation"))
        .cloned()
        .collect()
}

#[test]
fn each_node_is_held_to_its_own_part_of_the_fleet() {
    let keys_dir = tempfile::tempdir().unwrap();
    let desk_key = key(keys_dir.path(), "desk");
    let gpu_key = key(keys_dir.path(), "gpu");
    let narrow_key = key(keys_dir.path(), "narrow");
    let block = permissions(&[
        "--node".into(),
        format!("desk={}", desk_key.public),
        "--worker".into(),
        format!("gpu={}:alpha,slow", gpu_key.public),
        // Allowed `alpha` only, but configured with `beta` too.
        "--worker".into(),
        format!("narrow={}:alpha", narrow_key.public),
    ]);
    let Some(nats) = Nats::start_with(Some(block.clone())) else {
        return;
    };
    // The roster as the block's last lines give it.
    let roster = block
        .lines()
        .find_map(|l| l.strip_prefix("#   nodes: "))
        .expect("the block ends with the roster")
        .to_string();
    assert_eq!(
        roster,
        format!(
            "{{desk: {}, gpu: {{key: {}, works: [alpha, slow]}}, narrow: {{key: {}, works: [alpha]}}}}",
            desk_key.public, gpu_key.public, narrow_key.public
        ),
        "the roster names each node's key and what it works"
    );
    let desk = node_with_key(
        &nats,
        "desk",
        false,
        "  alpha: { command: [\"absent-cli\"] }\n  slow: { command: [\"absent-cli\"] }\n",
        &desk_key,
        &roster,
    );
    let gpu = node_with_key(
        &nats,
        "gpu",
        true,
        "  alpha: { command: [\"{agents}/ok.sh\"] }\n  slow: { command: [\"{agents}/hang.sh\"] }\n",
        &gpu_key,
        &roster,
    );
    let _dd = desk.start();
    let _dg = gpu.start();
    wait_live(&desk, "gpu");

    // The whole flow under the permissions: published, run, settled with its result.
    desk.drop_task("t.json", r#"{"prompt": "p", "agent": "alpha"}"#);
    let settled = desk.wait_settled("t");
    assert!(
        matches!(settled, Event::Done { .. }),
        "expected `t` done on the fleet, got {settled:?}"
    );
    assert_eq!(ran_on(&desk.records(), "t").as_deref(), Some("gpu"));
    // A cancel reaches the worker that runs the task.
    desk.drop_task("c.json", r#"{"prompt": "p", "agent": "slow"}"#);
    gpu.wait_started("desk.c");
    let out = desk.cli(&["cancel", "c"]);
    assert!(
        out.status.success(),
        "expected `cancel c` to succeed: {out:?}"
    );
    gpu.wait_for("the worker to stop `desk.c`", |recs| {
        recs.iter()
            .any(|r| matches!(&r.event, Event::Cancelled { task } if task == "desk.c"))
            .then_some(())
    });
    // Every node's records through the events stream.
    desk.wait_until("`status --fleet` to show gpu's record of `t`", || {
        let out = desk.cli(&["status", "--fleet", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["nodes"]
            .as_array()?
            .iter()
            .any(|n| n["node"] == "gpu")
            .then_some(())
    });
    let so_far = violations(&nats);
    assert!(
        so_far.is_empty(),
        "expected the fleet's own work to need nothing the permissions refuse, the server logged:\n{}",
        so_far.join("\n")
    );

    // A worker configured for more than it is allowed: refused, and it says so.
    let narrow = node_with_key(
        &nats,
        "narrow",
        true,
        "  alpha: { command: [\"{agents}/ok.sh\"] }\n  beta: { command: [\"{agents}/ok.sh\"] }\n",
        &narrow_key,
        &roster,
    );
    let _dn = narrow.start();
    let said = narrow.wait_until("`fleet` on `narrow` to say the server refused it", || {
        let out = narrow.cli(&["fleet", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let latest = v["refused"]["latest"].as_str()?.to_string();
        latest.contains("pull-beta").then_some(latest)
    });
    assert!(
        said.to_lowercase().contains("permissions violation"),
        "expected the refusal to be the server's own words, got {said:?}"
    );
    // The server's log has it too (and so the check of that log above could see one).
    narrow.wait_until("the server to log the refusal", || {
        violations(&nats)
            .iter()
            .any(|l| l.contains("pull-beta"))
            .then_some(())
    });
    let text = String::from_utf8_lossy(&narrow.cli(&["fleet"]).stdout).to_string();
    assert!(
        text.contains("the server refused this node") && text.contains("pull-beta"),
        "expected `fleet` to say what the server refused, got:\n{text}"
    );

    // Now desk's own credentials, used by hand, as a node gone bad would.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (client, mut refusals) = connect_as(&nats, "desk", &desk_key).await;
        // Each attempt must be refused by the server, in its own words, naming the subject.
        let mut refused =
            async |what: &str, subject: &str| expect_refused(&mut refusals, what, subject).await;
        client
            .publish("dirigent.tasks.alpha.gpu", "{}".into())
            .await
            .unwrap();
        refused(
            "a task published as another node",
            "dirigent.tasks.alpha.gpu",
        )
        .await;
        client
            .publish("$KV.dirigent_outcomes.gpu.t=1", "{}".into())
            .await
            .unwrap();
        refused(
            "an outcome of another node's task",
            "$KV.dirigent_outcomes.gpu.t=1",
        )
        .await;
        let _sub = client.subscribe("_INBOX_gpu.>").await.unwrap();
        refused("reading another node's replies", "_INBOX_gpu.>").await;
        let _sub = client.subscribe("_INBOX.>").await.unwrap();
        refused("reading every reply", "_INBOX.>").await;
        client
            .publish(
                "$JS.API.CONSUMER.MSG.NEXT.DIRIGENT_TASKS.pull-alpha",
                "{}".into(),
            )
            .await
            .unwrap();
        refused(
            "a submitter pulling tasks",
            "$JS.API.CONSUMER.MSG.NEXT.DIRIGENT_TASKS.pull-alpha",
        )
        .await;
        client
            .publish("$JS.API.STREAM.PURGE.DIRIGENT_TASKS", "{}".into())
            .await
            .unwrap();
        refused("emptying the queue", "$JS.API.STREAM.PURGE.DIRIGENT_TASKS").await;

        // A rollup on its own key would empty every node's outcomes: the bucket takes none.
        let js = async_nats::jetstream::new(client.clone());
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Rollup", "all");
        let rolled = js
            .publish_with_headers("$KV.dirigent_outcomes.desk.x=1", headers, "{}".into())
            .await
            .unwrap()
            .await;
        assert!(
            rolled.is_err(),
            "expected the outcomes bucket to refuse a rollup, got {rolled:?}"
        );

        // A worker allowed one agent cannot make its consumer pull another's tasks.
        let (narrow_client, mut narrow_refusals) = connect_as(&nats, "narrow", &narrow_key).await;
        let subject = "$JS.API.CONSUMER.CREATE.DIRIGENT_TASKS.pull-alpha.dirigent.tasks.beta.*";
        narrow_client.publish(subject, "{}".into()).await.unwrap();
        expect_refused(
            &mut narrow_refusals,
            "a consumer of another agent's tasks",
            subject,
        )
        .await;

        // On its own subject, but naming another node inside: the worker drops it.
        let forged = serde_json::json!({"node": "gpu", "spec": spec("forged"), "received_ms": 5});
        js.publish("dirigent.tasks.alpha.desk", forged.to_string().into())
            .await
            .unwrap()
            .await
            .expect("its own subject is open to it");
    });
    // The server made to write for it: a task naming `gpu`, stored under a key of desk's own,
    // echoed by a direct get whose reply subject is gpu's task subject (publish permissions do
    // not look at reply subjects). Only the signature tells it from gpu's own.
    rt.block_on(async {
        let (client, _) = connect_as(&nats, "desk", &desk_key).await;
        let echoed = serde_json::json!({"node": "gpu", "spec": spec("echoed"), "received_ms": 5});
        echo_onto(
            &client,
            "evil",
            echoed.to_string(),
            "dirigent.tasks.alpha.gpu",
        )
        .await;
        // And a record of a task gpu never had, onto gpu's events subject.
        let ghost = serde_json::json!({
            "seq": 100000, "ts": 1, "event": "received", "task": "ghost", "file": "ghost.json",
            "spec": spec("ghost")
        });
        echo_onto(&client, "evil2", ghost.to_string(), "dirigent.events.gpu").await;
    });
    // The worker that was handed it says so in `dirigent fleet`.
    let said = desk.wait_until("a worker to say it did not take the unsigned task", || {
        [&gpu, &narrow].into_iter().find_map(|w| {
            let out = w.cli(&["fleet", "--json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let latest = v["not_taken"]["latest"].as_str()?.to_string();
            latest.contains("`echoed`").then_some((w, latest))
        })
    });
    assert!(
        said.1.contains("not signed by its node"),
        "expected the reason, got {:?}",
        said.1
    );
    let text = String::from_utf8_lossy(&said.0.cli(&["fleet"]).stdout).to_string();
    assert!(
        text.contains("message(s) of the fleet not taken here") && text.contains("`echoed`"),
        "expected `fleet` to say what it did not take, got:\n{text}"
    );

    // A worker has weighed the forged task (a node other than its subject's): dropped at once.
    desk.wait_until("a worker to drop the task naming another node", || {
        [&gpu, &narrow].iter().find_map(|w| {
            let log = std::fs::read_to_string(w.root().join("daemon.log")).ok()?;
            log.contains("a task names a node other than the one whose subject it came on")
                .then_some(())
        })
    });
    // Records after the forged one, in the events stream's order: once desk's fleet view has
    // them, it has weighed the forged one too.
    desk.drop_task("later.json", r#"{"prompt": "p", "agent": "alpha"}"#);
    desk.wait_settled("later");
    let view = desk.wait_until(
        "desk's fleet view to hold the worker's record of `later`",
        || {
            let out = desk.cli(&["status", "--fleet", "--json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            v["nodes"]
                .as_array()?
                .iter()
                .filter(|n| n["node"] != "desk")
                .any(|n| {
                    n["tasks"]
                        .as_array()
                        .is_some_and(|t| t.iter().any(|t| t["id"] == "desk.later"))
                })
                .then_some(v)
        },
    );
    assert!(
        !view.to_string().contains("ghost"),
        "expected records the server was made to write onto gpu's subject left out: {view}"
    );
    for worker in [&gpu, &narrow] {
        assert!(
            !worker.records().iter().any(|r| matches!(
                &r.event,
                Event::FleetTaken { task, .. } if task.contains("forged") || task.contains("echoed")
            )),
            "expected no worker to take a task that names another node than its subject's, or that its node did not sign"
        );
    }
}
