//! Services' `rate_limits`, enforced by the coordinator's proxy as dstack's gateway does: per
//! client address, on the longest matching prefix, `429 Too Many Requests` with `Retry-After`.

use std::time::Duration;

use corral_proto::job::JobState;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sixth_request_in_a_second_to_an_rps_5_service_gets_429_with_retry_after() -> anyhow::Result<()> {
    let c = OneNode::start().await?;
    // dstack's `rps: 5` is one request every 200 ms; `burst: 4` lets the other four of a second's
    // five through at once (nginx's `burst=4 nodelay`). Only `/limited/` is limited.
    let text = format!(
        "type: service\nname: api\nimage: {IMAGE}\nport: 8000\nauth: false\n\
         rate_limits:\n  - prefix: /limited/\n    rps: 5\n    burst: 4\n\
         commands:\n  - mkdir -p /www/limited\n  - echo ok > /www/index.html\n  - echo ok > /www/limited/index.html\n  - httpd -f -p 8000 -h /www\n"
    );
    let (code, _) = apply(&c.client, &write_config(c.dir.path(), "api", &text), true).await?;
    assert_eq!(code, 0);
    wait_state(&c.client, "api", |r| r.jobs.iter().all(|j| j.state == JobState::Running), Duration::from_secs(30))
        .await?;
    let http = reqwest::Client::new();
    let base = format!("http://{}/proxy/services/main/api", c.coord.http);
    // Up, through a path no limit covers (as many tries as it takes).
    wait_for("the service to answer", Duration::from_secs(20), || async {
        Ok(http.get(format!("{base}/index.html")).send().await.ok().filter(|r| r.status() == 200))
    })
    .await?;

    // Six at once: five pass, the sixth is told to come back.
    let limited = format!("{base}/limited/index.html");
    let sent = (0..6).map(|_| http.get(&limited).send());
    let answers = futures_util::future::join_all(sent).await;
    let mut ok = 0;
    let mut refused = Vec::new();
    for a in answers {
        let a = a?;
        match a.status().as_u16() {
            200 => ok += 1,
            429 => refused.push(a),
            other => anyhow::bail!("unexpected status {other}: {}", a.text().await?),
        }
    }
    assert_eq!((ok, refused.len()), (5, 1), "five pass, the sixth is refused");
    let r = refused.pop().expect("one refused");
    assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let body = r.text().await?;
    assert!(body.contains("rate limit for /limited/ exceeded (5 requests per second + burst 4)"), "{body}");

    // Other paths are not limited, and once the bucket refills the limited one passes again.
    assert_eq!(http.get(format!("{base}/index.html")).send().await?.status(), 200);
    wait_for("a limited request to pass after Retry-After", Duration::from_secs(3), || async {
        Ok(http.get(&limited).send().await.ok().filter(|r| r.status() == 200))
    })
    .await?;
    Ok(())
}
