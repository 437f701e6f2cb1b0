use serde_json::json;

use super::*;
use corral_proto::config::{Configuration, parse};

fn service(text: &str) -> ServiceConfig {
    match parse(text, "s.yml").expect("valid") {
        Configuration::Service(s) => s,
        other => panic!("not a service: {other:?}"),
    }
}

const PD: &str = "type: service\nimage: i\nport: 8000\nreplicas:\n  - count: 1..2\n    scaling: {metric: rps, target: 1}\n    commands: [prefill]\n  - count: 1\n    commands: [router]\n    router: {type: sglang}\n  - count: 2\n    commands: [decode]\n";

#[test]
fn only_the_router_group_takes_requests_and_only_on_inference_paths() {
    let s = service(PD);
    // Blocks: prefill 0..2, router 2, decode 3..5.
    let takes: Vec<u32> = (0..5).filter(|&n| takes_traffic(&s, n)).collect();
    assert_eq!(takes, [2]);
    for ok in ["/v1/chat/completions", "/v1/", "/generate", "/chat/completions"] {
        assert!(path_allowed(&s, ok), "{ok}");
    }
    for refused in ["/workers", "/", "/v1", "/generate/x", "/server_info"] {
        assert!(!path_allowed(&s, refused), "{refused}");
    }
    let plain = service(
        "type: service\nimage: i\nport: 80\nreplicas:\n  - count: 1\n    commands: [a]\n  - count: 1\n    commands: [b]\n",
    );
    assert!((0..2).all(|n| takes_traffic(&plain, n)) && path_allowed(&plain, "/workers"));
}

#[test]
fn workers_are_what_their_server_info_says_once_ready() {
    let url = "http://corral-ab:8000";
    assert_eq!(worker_from_server_info(url, &json!({"status": "starting"})), None);
    assert_eq!(worker_from_server_info(url, &json!({})), None);
    let prefill = worker_from_server_info(
        url,
        &json!({"status": "ready", "disaggregation_mode": "prefill", "disaggregation_bootstrap_port": 8998}),
    )
    .expect("ready");
    assert_eq!(
        prefill.body(),
        json!({"url": url, "worker_type": "prefill", "connection_mode": "http", "runtime_type": "sglang", "bootstrap_port": 8998})
    );
    let decode =
        worker_from_server_info(url, &json!({"status": "ready", "disaggregation_mode": "decode"})).expect("ready");
    assert_eq!(
        decode.body(),
        json!({"url": url, "worker_type": "decode", "connection_mode": "http", "runtime_type": "sglang"})
    );
    let regular =
        worker_from_server_info(url, &json!({"status": "ready", "disaggregation_mode": "null"})).expect("ready");
    assert_eq!(regular.worker_type, "regular");
}

#[test]
fn registration_calls_add_new_workers_and_remove_ended_ones() {
    let w =
        |host: &str| Worker { url: format!("http://{host}:8000"), worker_type: "regular".into(), bootstrap_port: None };
    let answer = json!({"workers": [
        {"id": "w1", "url": "http://corral-a:8000/", "worker_type": "regular"},
        {"id": "w2", "url": "http://corral-gone:8000"},
        {"url": "http://corral-noid:8000"},
        {"id": "w4"},
    ]});
    let current = listed_workers(&answer);
    assert_eq!(current.len(), 3, "an entry without a URL is not a worker: {current:?}");
    // `a` is listed already (a trailing slash is the same URL), `b` and `c` are new, `gone` ended,
    // `noid` cannot be removed without its id.
    let calls = calls(&current, &[w("corral-c"), w("corral-a"), w("corral-b")]);
    assert_eq!(
        calls,
        [
            Call::Add(w("corral-b").body()),
            Call::Add(w("corral-c").body()),
            Call::Remove { id: "w2".into(), url: "http://corral-gone:8000".into() },
        ]
    );
    assert_eq!(super::calls(&[], &[]), []);
    assert!(listed_workers(&json!({"workers": "no"})).is_empty());
}

#[test]
fn dynamo_workers_get_the_router_s_address() {
    let s = service(&PD.replace("sglang", "dynamo"));
    let router = JobId("0123abcd".into());
    let env = dynamo_env(&s, 0, Some(&router)).expect("a worker");
    assert!(env.contains(&("DSTACK_ROUTER_INTERNAL_IP".to_owned(), "corral-0123abcd".to_owned())), "{env:?}");
    assert_eq!(dynamo_env(&s, 2, Some(&router)), None, "the router itself");
    assert_eq!(dynamo_env(&s, 0, None), None, "no router job yet");
    assert_eq!(dynamo_env(&service(PD), 0, Some(&router)), None, "SGLang workers are registered instead");
}
