//! When a `RateLimitLayer`'s counters on Redis cannot be reached, each layer does what it was
//! told: fail closed (the default: 503 with `Retry-After`, nothing let through unlimited) or fail
//! open (the request is served, without `RateLimit` fields). Both answer at once once the
//! store's breaker is open, and both go back to deciding by Redis when it returns.

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use tollgate::Store;
use tollgate::ratelimit::{Limit, Quota};
use tollgate::testing::redis::Server as RedisServer;
use tollgate::tower::{RateLimitLayer, WhenUnavailable};

use crate::fixture::redis::unique_namespace;
use crate::web::{Server, client, post_json, send};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_layer_fails_closed_or_open_as_configured() {
    if tollgate::testing::redis::server().is_none() {
        return; // said loudly by the fixture (and a failure under TOLLGATE_REQUIRE_REDIS=1)
    }
    let redis = RedisServer::spawn(&[]).unwrap();
    let store = Store::builder()
        .rate_counters_redis(&redis.url)
        .redis_namespace(&unique_namespace("http_down"))
        .redis_timeout(Duration::from_millis(200))
        .open_in_memory()
        .unwrap();
    let limit = Limit::new("api", Quota::per_second(1000)).unwrap();
    let ok = || async { "served" };
    let app = Router::new()
        .route(
            "/closed",
            post(ok).layer(RateLimitLayer::new(store.clone(), [limit.clone()])),
        )
        .route(
            "/open",
            post(ok).layer(
                RateLimitLayer::new(store.clone(), [limit.clone()])
                    .when_unavailable(WhenUnavailable::FailOpen),
            ),
        );
    let server = Server::start(app).await;
    let client = client();
    let (closed, open) = (server.url("/closed"), server.url("/open"));
    for url in [&closed, &open] {
        let answer = send(&client, post_json(url, None, "{}")).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(answer.header("ratelimit").is_some());
    }

    redis.pause();
    for _ in 0..3 {
        let refused = send(&client, post_json(&closed, None, "{}")).await;
        assert_eq!(refused.status, 503, "{}", refused.body);
        assert!(refused.header("retry-after").is_some());
        let served = send(&client, post_json(&open, None, "{}")).await;
        assert_eq!(served.status, 200, "{}", served.body);
        assert_eq!(served.body, "served");
        assert!(
            served.header("ratelimit").is_none(),
            "no counters, no fields"
        );
    }

    redis.resume();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = send(&client, post_json(&closed, None, "{}")).await;
        if answer.status == 200 {
            assert!(answer.header("ratelimit").is_some());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Redis never came back: {}",
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
    store.close().unwrap();
}
