//! Services with a router replica group against a real agent: requests through the proxy reach
//! the router's replica only; an SGLang router is told of each worker replica (its address on the
//! run's network, which the router fetches) by the coordinator; a Dynamo worker is given the
//! router's address.

use std::time::Duration;

use corral_proto::job::JobState;

use crate::harness::*;

/// A stand-in SGLang router (busybox `nc -ll -e` and a shell script, from
/// `ROUTER_SCRIPT`'s source): `POST /workers` records the body and what `GET <url>/` answered
/// from the router's container, `GET /workers` lists them as SGLang's router does,
/// `DELETE /workers/{id}` removes one, and any other path answers `router <path>` and the record.
const ROUTER_SCRIPT: &str = "IyEvYmluL3NoCiMgQSBzdGFuZC1pbiBTR0xhbmcgcm91dGVyOiByZWNvcmRzIHJlZ2lzdHJhdGlvbnMsIGZldGNoaW5nIGVhY2ggd29ya2VyJ3MgcGFnZS4KcmVhZCAtciBtZXRob2QgcGF0aCBfCnBhdGg9JChwcmludGYgJyVzJyAiJHBhdGgiIHwgdHIgLWQgJ1xyJykKbGVuPTAKd2hpbGUgcmVhZCAtciBsaW5lOyBkbwogIGxpbmU9JChwcmludGYgJyVzJyAiJGxpbmUiIHwgdHIgLWQgJ1xyJykKICBbIC16ICIkbGluZSIgXSAmJiBicmVhawogIGNhc2UgIiRsaW5lIiBpbiBbQ2Ndb250ZW50LVtMbF1lbmd0aDoqKSBsZW49JChwcmludGYgJyVzJyAiJHtsaW5lIyo6fSIgfCB0ciAtZCAnICcpIDs7IGVzYWMKZG9uZQpib2R5PSIiClsgIiRsZW4iIC1ndCAwIF0gJiYgYm9keT0kKGhlYWQgLWMgIiRsZW4iKQpyZXBseSgpIHsgcHJpbnRmICdIVFRQLzEuMSAlc1xyXG5Db250ZW50LVR5cGU6IGFwcGxpY2F0aW9uL2pzb25cclxuQ29udGVudC1MZW5ndGg6ICVzXHJcbkNvbm5lY3Rpb246IGNsb3NlXHJcblxyXG4lcycgIiQxIiAiJHsjMn0iICIkMiI7IH0KbWtkaXIgLXAgL3JlZwpjYXNlICIkbWV0aG9kICRwYXRoIiBpbgogICJQT1NUIC93b3JrZXJzIikKICAgIHVybD0kKHByaW50ZiAnJXMnICIkYm9keSIgfCBzZWQgLW4gJ3MvLioidXJsIjoiXChbXiJdKlwpIi4qL1wxL3AnKQogICAgZ290PSQod2dldCAtcU8tICIkdXJsLyIgMj4mMSB8IHRyICdcbicgJyAnKQogICAgaWQ9InckJCIKICAgIHByaW50ZiAnJXMnICIkdXJsIiA+ICIvcmVnLyRpZCIKICAgIHByaW50ZiAncmVnaXN0ZXJlZCAlcyBmZXRjaGVkPVslc10gYm9keT0lc1xuJyAiJHVybCIgIiRnb3QiICIkYm9keSIgPj4gL3JlZ2lzdGVyZWQKICAgIHJlcGx5ICIyMDIgQWNjZXB0ZWQiICd7InN0YXR1cyI6ImFjY2VwdGVkIn0nIDs7CiAgIkdFVCAvd29ya2VycyIpCiAgICBsaXN0PSIiCiAgICBmb3IgZiBpbiAvcmVnLyo7IGRvIFsgLWYgIiRmIiBdICYmIGxpc3Q9IiRsaXN0e1wiaWRcIjpcIiR7ZiMvcmVnL31cIixcInVybFwiOlwiJChjYXQgIiRmIilcIn0sIjsgZG9uZQogICAgcmVwbHkgIjIwMCBPSyIgIntcIndvcmtlcnNcIjpbJHtsaXN0JSx9XX0iIDs7CiAgIkRFTEVURSAvd29ya2Vycy8iKikKICAgIGlkPSR7cGF0aCMvd29ya2Vycy99CiAgICBwcmludGYgJ3JlbW92ZWQgJXNcbicgIiQoY2F0ICIvcmVnLyRpZCIpIiA+PiAvcmVnaXN0ZXJlZAogICAgcm0gLWYgIi9yZWcvJGlkIgogICAgcmVwbHkgIjIwMiBBY2NlcHRlZCIgJ3sic3RhdHVzIjoiYWNjZXB0ZWQifScgOzsKICAqKSByZXBseSAiMjAwIE9LIiAicm91dGVyICRwYXRoCiQoY2F0IC9yZWdpc3RlcmVkIDI+L2Rldi9udWxsKSIgOzsKZXNhYwo=";

fn running(r: &corral_proto::api::Run, n: usize) -> bool {
    r.jobs.len() == n && r.jobs.iter().all(|j| j.state == JobState::Running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sglang_router_gets_its_worker_and_every_request() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    let text = format!(
        "type: service
name: pd
image: {IMAGE}
port: 8000
auth: false
replicas:
  - name: router
    count: 1
    router:
      type: sglang
    commands:
      - echo {ROUTER_SCRIPT} | base64 -d > /h.sh
      - chmod +x /h.sh
      - nc -ll -p 8000 -e /h.sh
  - name: prefill
    count: 1
    commands:
      - mkdir -p /www
      - echo \"worker $CORRAL_JOB_ID\" > /www/index.html
      - >-
        echo '{{\"status\":\"ready\",\"disaggregation_mode\":\"prefill\",\"disaggregation_bootstrap_port\":8998}}'
        > /www/server_info
      - httpd -f -p 8000 -h /www
"
    );
    let (code, out) = apply(&c.client, &write_config(c.dir.path(), "pd", &text), true).await?;
    assert_eq!(code, 0, "{out}");
    // One worker: the test host has two CPUs, and each replica takes one.
    let run = wait_state(&c.client, "pd", |r| running(r, 2), Duration::from_secs(30)).await?;
    // Blocks: the router owns number 0, the worker 1.
    let workers: Vec<String> = run.jobs.iter().filter(|j| j.job_num > 0).map(|j| j.id.to_string()).collect();
    assert_eq!(workers.len(), 1, "{run:?}");

    let http = reqwest::Client::new();
    let url = format!("http://{}/proxy/services/main/pd/v1/models", c.coord.http);
    let seen = wait_for("the router to have the worker registered", Duration::from_secs(30), || async {
        let r = http.get(&url).send().await?;
        let body = r.text().await?;
        Ok(body.contains("registered ").then_some(body))
    })
    .await?;
    assert!(seen.starts_with("router /v1/models\n"), "the request reached the router: {seen}");
    for w in &workers {
        let line = seen.lines().find(|l| l.contains(&format!("http://corral-{w}:8000 "))).unwrap_or_default();
        // The router fetched the worker at the address it was given: that worker answered.
        assert!(line.contains(&format!("fetched=[worker {w} ]")), "worker {w}: {seen}");
        for field in [
            "\"worker_type\":\"prefill\"",
            "\"bootstrap_port\":8998",
            "\"connection_mode\":\"http\"",
            "\"runtime_type\":\"sglang\"",
        ] {
            assert!(line.contains(field), "worker {w} registered without {field}: {line}");
        }
    }
    // Every request goes to the router, never to a worker; over a few of the coordinator's rounds
    // (one every 2 s), the worker is registered once, not again every round.
    let deadline = tokio::time::Instant::now() + corral_coordinator::services::router_groups::SYNC_PERIOD * 3;
    while tokio::time::Instant::now() < deadline {
        let body = http.get(&url).send().await?.text().await?;
        assert!(body.starts_with("router /v1/models\n"), "{body}");
        assert_eq!(body.matches("registered ").count(), 1, "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The router's own API is not public (dstack's rule): only the inference paths pass.
    let admin = http.get(format!("http://{}/proxy/services/main/pd/workers", c.coord.http)).send().await?;
    assert_eq!(admin.status(), 403);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dynamo_worker_is_given_the_router_s_address() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    let text = format!(
        "type: service
name: dyn
image: {IMAGE}
port: 8000
auth: false
replicas:
  - name: frontend
    count: 1
    router:
      type: dynamo
    commands:
      - mkdir -p /www/v1
      - echo frontend here > /www/v1/models
      - httpd -f -p 8000 -h /www
  - name: workers
    count: 1
    commands:
      - until wget -qO- http://$DSTACK_ROUTER_INTERNAL_IP:8000/v1/models; do sleep 0.2; done
      - echo \"reached the router at $DSTACK_ROUTER_INTERNAL_IP\"
      - mkdir -p /www
      - httpd -f -p 8000 -h /www
"
    );
    let (code, out) = apply(&c.client, &write_config(c.dir.path(), "dyn", &text), true).await?;
    assert_eq!(code, 0, "{out}");
    let run = wait_state(&c.client, "dyn", |r| running(r, 2), Duration::from_secs(30)).await?;
    let router = run.jobs.iter().find(|j| j.job_num == 0).map(|j| j.id.to_string()).unwrap_or_default();
    let log = wait_for("the worker to reach the router", Duration::from_secs(30), || async {
        let mut out = Vec::new();
        corral_cli::commands::logs(&c.client, "dyn", 1, false, &mut out).await?;
        let log = String::from_utf8_lossy(&out).into_owned();
        Ok(log.contains("reached the router").then_some(log))
    })
    .await?;
    assert!(log.contains(&format!("frontend here\nreached the router at corral-{router}\n")), "{log}");
    let http = reqwest::Client::new();
    let body =
        http.get(format!("http://{}/proxy/services/main/dyn/v1/models", c.coord.http)).send().await?.text().await?;
    assert_eq!(body, "frontend here\n", "requests go to the frontend");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_service_s_workers_run_on_the_router_s_node() -> anyhow::Result<()> {
    use crate::netns::{Hosts, NodeContainers};
    ensure_image();
    let dir = tempfile::tempdir()?;
    let mut hosts = Hosts::create(2)?;
    let coord = Coordinator::start_on(&dir.path().join("coord"), "127.0.0.1:0".parse()?, "0.0.0.0:0".parse()?).await?;
    let client = coord.client();
    let fleet = write_config(dir.path(), "rack", "type: fleet\nname: rack\n");
    let (code, out) = apply(&client, &fleet, true).await?;
    assert_eq!(code, 0, "{out}");
    let states = [dir.path().join("h0"), dir.path().join("h1")];
    let _cleanup = NodeContainers(states.to_vec());
    let dial = format!("{}:{}", hosts.gateway, coord.quic.port());
    for (i, state) in states.iter().enumerate() {
        hosts.start_agent(i, &dial, &coord.join_token.to_string(), state, &format!("host-{i}"), "rack")?;
    }
    nodes_ready(&client, 2).await?;

    // Each node has the test machine's CPUs (two), each replica takes one: the router and one
    // worker fill the router's node, and the second worker waits for room there rather than run
    // on the other node, where the router could not reach it.
    let text = format!(
        "type: service
name: pd
image: {IMAGE}
port: 8000
auth: false
replicas:
  - name: router
    count: 1
    router:
      type: sglang
    resources:
      cpu: 1
    commands:
      - echo {ROUTER_SCRIPT} | base64 -d > /h.sh
      - chmod +x /h.sh
      - nc -ll -p 8000 -e /h.sh
  - name: workers
    count: 2
    resources:
      cpu: 1
    commands:
      - mkdir -p /www
      - echo \"worker $CORRAL_JOB_ID\" > /www/index.html
      - echo '{{\"status\":\"ready\"}}' > /www/server_info
      - httpd -f -p 8000 -h /www
"
    );
    let (code, out) = apply(&client, &write_config(dir.path(), "pd", &text), true).await?;
    assert_eq!(code, 0, "{out}");
    let placed = |r: &corral_proto::api::Run| {
        let router = r.jobs.iter().find(|j| j.job_num == 0 && j.state == JobState::Running);
        let worker = r.jobs.iter().find(|j| j.job_num > 0 && j.state == JobState::Running);
        let waiting = r.jobs.iter().find(|j| {
            j.job_num > 0
                && j.state == JobState::Pending
                && j.status_message.as_deref().is_some_and(|m| m.contains("router's node"))
        });
        router.is_some() && worker.is_some() && waiting.is_some()
    };
    let run = wait_state(&client, "pd", placed, Duration::from_secs(60)).await?;
    let router = run.jobs.iter().find(|j| j.job_num == 0).expect("router");
    let worker = run.jobs.iter().find(|j| j.job_num > 0 && j.state == JobState::Running).expect("worker");
    assert_eq!(worker.node_id, router.node_id, "the worker runs where its router is: {run:#?}");
    // (The registration itself is `an_sglang_router_gets_its_worker_and_every_request`: these
    // namespaced agents reach the node's containers through no tunnel.)
    Ok(())
}
