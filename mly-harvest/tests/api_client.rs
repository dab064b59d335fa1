//! Client behaviour against scripted fake servers on loopback (axum, or raw TCP for broken
//! connections), and one end-to-end check against the simulator.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, RawQuery};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use mly_contract::Secret;
use mly_contract::Tileset;
use mly_contract::tiles::{Bbox, TileId};
use mly_core::api::{ApiClient, ApiError, ApiSettings, Pacing, Search, TileResponse};
use mly_core::model::{ImageId, MapFeatureId};

const TOKEN: &str = "MLY|4000000000000077|feedfacefeedfacefeedfacefeedface";

async fn serve(router: Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, router).await.unwrap() });
    format!("http://{addr}")
}

fn settings(base: &str) -> ApiSettings {
    ApiSettings {
        graph_url: format!("{base}/"),
        tiles_url: base.to_string(),
        token: Secret::new(TOKEN),
        timeout: Duration::from_secs(5),
        max_retries: 3,
        search_per_minute: 60_000,
        entity_per_minute: 60_000,
        tiles_in_flight: 1,
        breaker_after: 1000,
    }
}

fn client(base: &str) -> ApiClient {
    ApiClient::new(settings(base), Pacing::ThisProcess).unwrap()
}

fn assert_no_token(e: &ApiError) {
    for s in [e.to_string(), format!("{e:?}")] {
        for part in ["feedface", "4000000000000077"] {
            assert!(!s.contains(part), "token leaked: {s}");
        }
    }
}

fn bbox() -> Bbox {
    Bbox::new(8.39, 47.39, 8.41, 47.41).unwrap()
}

fn image(id: i64) -> Value {
    json!({"id": id.to_string(), "captured_at": 1_563_721_072_184i64, "geometry": {"type":"Point","coordinates":[8.4, 47.4]}})
}

fn error_body(code: i64, message: &str) -> String {
    json!({"error": {"message": message, "type": "MLYApiException", "code": code, "fbtrace_id": "x"}})
        .to_string()
}

fn fixture(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(common::fixtures().join(name)).unwrap()).unwrap()
}

#[tokio::test]
async fn transient_errors_are_retried_then_succeed() {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = Router::new().route(
        "/images",
        get(move |Query(q): Query<HashMap<String, String>>| {
            let h = h.clone();
            async move {
                assert_eq!(q.get("limit").map(String::as_str), Some("2000"));
                assert_eq!(q.get("bbox").map(String::as_str), Some("8.39,47.39,8.41,47.41"));
                match h.fetch_add(1, Ordering::SeqCst) {
                    0 => (StatusCode::SERVICE_UNAVAILABLE, "busy".to_string()).into_response(),
                    1 => {
                        (StatusCode::INTERNAL_SERVER_ERROR, error_body(2, "Service temporarily unavailable"))
                            .into_response()
                    }
                    // A truncated JSON body on a 200 is retried too.
                    2 => (StatusCode::OK, r#"{"data":[{"id":"1""#.to_string()).into_response(),
                    _ => (StatusCode::OK, json!({"data": [image(1), image(2)]}).to_string()).into_response(),
                }
            }
        }),
    );
    let c = client(&serve(app).await);
    let r = c.search_images(&bbox()).await.unwrap();
    let Search::Complete(v) = r else { panic!("expected Complete") };
    assert_eq!(v.iter().map(|i| i.id.0).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(hits.load(Ordering::SeqCst), 4);
    let k = c.counters();
    assert_eq!((k.search, k.retries, k.throttled), (4, 3, 0));
}

#[tokio::test]
async fn gives_up_after_max_retries() {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = Router::new().route(
        "/maps/vtp/{ts}/2/{z}/{x}/{y}",
        get(move || {
            h.fetch_add(1, Ordering::SeqCst);
            async { (StatusCode::BAD_GATEWAY, format!("upstream said access_token={TOKEN}")) }
        }),
    );
    let c = client(&serve(app).await);
    let e = c.tile(Tileset::Public, TileId::new(14, 8574, 5735).unwrap(), None).await.unwrap_err();
    assert!(matches!(e, ApiError::Transient { attempts: 4, .. }), "{e:?}");
    assert!(e.to_string().contains("while fetching mly1_public tile 14/8574/5735"), "{e}");
    assert_no_token(&e);
    assert_eq!(hits.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn throttle_slows_down_then_succeeds() {
    let hits = Arc::new(AtomicUsize::new(0));
    let auth = Arc::new(Mutex::new(Vec::<String>::new()));
    let (h, a) = (hits.clone(), auth.clone());
    let app = Router::new().route(
        "/",
        get(move |headers: HeaderMap, Query(q): Query<HashMap<String, String>>| {
            let (h, a) = (h.clone(), a.clone());
            async move {
                a.lock().unwrap().push(headers["authorization"].to_str().unwrap().to_string());
                assert_eq!(q["ids"], "7");
                if h.fetch_add(1, Ordering::SeqCst) == 0 {
                    let body = fixture("josm-error-application_request_limit_reached.json").to_string();
                    return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], body).into_response();
                }
                (StatusCode::OK, json!({"7": image(7)}).to_string()).into_response()
            }
        }),
    );
    let c = client(&serve(app).await);
    let t0 = Instant::now();
    let r = c.images_by_id(&[ImageId(7)]).await.unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(900), "Retry-After was not respected");
    assert_eq!(r.found.len(), 1);
    assert!(r.missing.is_empty());
    let k = c.counters();
    assert_eq!((k.entity, k.throttled), (2, 1));
    assert!(auth.lock().unwrap().iter().all(|h| h == &format!("OAuth {TOKEN}")));
}

#[tokio::test]
async fn unauthorized_stops_without_retry() {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = Router::new().route(
        "/map_features",
        get(move || {
            h.fetch_add(1, Ordering::SeqCst);
            async {
                let f = fixture("psw-error-401-malformed-token.json");
                (StatusCode::UNAUTHORIZED, f["body"].to_string())
            }
        }),
    );
    let c = client(&serve(app).await);
    let e = c.search_map_features(&bbox()).await.unwrap_err();
    assert!(e.is_auth(), "{e:?}");
    assert!(e.to_string().contains("Failed to decode"), "{e}");
    assert_no_token(&e);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(c.counters().retries, 0);
}

#[tokio::test]
async fn code_190_on_500_is_auth() {
    let app = Router::new().route(
        "/maps/vtp/{ts}/2/{z}/{x}/{y}",
        get(|| async {
            (StatusCode::INTERNAL_SERVER_ERROR, fixture("josm-error-invalid_oauth_token.json").to_string())
        }),
    );
    let c = client(&serve(app).await);
    let e = c.tile(Tileset::FeaturePoint, TileId::new(14, 1, 2).unwrap(), None).await.unwrap_err();
    assert!(e.is_auth(), "{e:?}");
    assert_no_token(&e);
    assert_eq!(c.counters().tiles, 1);
}

#[tokio::test]
async fn tiles_etag_empty_and_token_in_query() {
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let s = seen.clone();
    let app = Router::new().route(
        "/maps/vtp/{ts}/2/{z}/{x}/{y}",
        get(
            move |axum::extract::Path((ts, z, x, y)): axum::extract::Path<(String, u8, u32, u32)>,
                  Query(q): Query<HashMap<String, String>>,
                  RawQuery(raw): RawQuery,
                  headers: HeaderMap| {
                let s = s.clone();
                async move {
                    s.lock().unwrap().push(raw.unwrap_or_default());
                    assert_eq!(q["access_token"], TOKEN);
                    assert!(headers.get("authorization").is_none());
                    let _ = (ts, z);
                    match (x, y) {
                        (1, 1) => {
                            if headers.get("if-none-match").and_then(|v| v.to_str().ok()) == Some("\"v1\"") {
                                StatusCode::NOT_MODIFIED.into_response()
                            } else {
                                (StatusCode::OK, [("etag", "\"v1\"")], vec![0x1au8, 0, 1, 2]).into_response()
                            }
                        }
                        (2, _) => StatusCode::NO_CONTENT.into_response(),
                        (3, _) => StatusCode::NOT_FOUND.into_response(),
                        (4, _) => StatusCode::FORBIDDEN.into_response(),
                        (5, _) => (StatusCode::OK, Vec::<u8>::new()).into_response(),
                        _ => (StatusCode::BAD_REQUEST, error_body(100, "bad tile")).into_response(),
                    }
                }
            },
        ),
    );
    let c = client(&serve(app).await);
    let t = |x, y| TileId::new(14, x, y).unwrap();
    let r = c.tile(Tileset::Public, t(1, 1), None).await.unwrap();
    assert_eq!(r, TileResponse::Data { bytes: vec![0x1au8, 0, 1, 2].into(), etag: Some("\"v1\"".into()) });
    assert_eq!(c.tile(Tileset::Public, t(1, 1), Some("\"v1\"")).await.unwrap(), TileResponse::NotModified);
    for x in 2..=5 {
        assert_eq!(
            c.tile(Tileset::ComputedPublic, t(x, 1), None).await.unwrap(),
            TileResponse::Empty,
            "x={x}"
        );
    }
    let e = c.tile(Tileset::Public, t(9, 9), None).await.unwrap_err();
    assert!(matches!(e, ApiError::Permanent { status: 400, .. }), "{e:?}");
    assert_no_token(&e);
    // The `|` of the token is percent-encoded on the wire.
    assert!(
        seen.lock().unwrap()[0].contains("access_token=MLY%7C4000000000000077%7C"),
        "{:?}",
        seen.lock().unwrap()
    );
    let k = c.counters();
    assert_eq!((k.tiles, k.not_modified, k.retries), (7, 1, 0));
}

#[tokio::test]
async fn too_much_is_reported_not_retried() {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = Router::new()
        .route(
            "/images",
            get(|| async {
                let data: Vec<Value> = (1..=2000).map(image).collect();
                json!({ "data": data }).to_string()
            }),
        )
        .route(
            "/map_features",
            get(move |Query(q): Query<HashMap<String, String>>| {
                h.fetch_add(1, Ordering::SeqCst);
                async move {
                    let msg = if q["bbox"].starts_with("8.39") {
                        "Please reduce the amount of data you're asking for, then retry your request"
                    } else {
                        "Bounding box area is too large. Maximum allowed area is 0.010 square degrees, but got 0.075 square degrees."
                    };
                    (StatusCode::INTERNAL_SERVER_ERROR, json!({"error":{"message": msg, "type":"MLYApiException"}}).to_string())
                }
            }),
        );
    let c = client(&serve(app).await);
    assert_eq!(c.search_images(&bbox()).await.unwrap(), Search::TooMuch);
    assert_eq!(c.search_map_features(&bbox()).await.unwrap(), Search::TooMuch);
    let big = Bbox::new(8.0, 47.0, 8.3, 47.3).unwrap();
    assert_eq!(c.search_map_features(&big).await.unwrap(), Search::TooMuch);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    assert_eq!(c.counters().retries, 0);
}

/// A `?ids=` endpoint that, like the real API, refuses the whole batch when one id is unknown.
fn ids_app(existing: BTreeSet<i64>, calls: Arc<AtomicUsize>) -> Router {
    let existing = Arc::new(existing);
    Router::new().route(
        "/",
        get(move |Query(q): Query<HashMap<String, String>>| {
            let (existing, calls) = (existing.clone(), calls.clone());
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let ids: Vec<i64> = q["ids"].split(',').map(|s| s.parse().unwrap()).collect();
                assert!(ids.len() <= 50, "batch of {}", ids.len());
                if let Some(bad) = ids.iter().find(|i| !existing.contains(i)) {
                    let body = fixture("psw-error-400-not-found-id-1.json")["body"].to_string().replace("'1'", &format!("'{bad}'"));
                    return (StatusCode::BAD_REQUEST, body).into_response();
                }
                let fields = &q["fields"];
                let mut out = serde_json::Map::new();
                for id in ids {
                    let v = if fields.starts_with("detections.") {
                        let mut d = fixture("josm-image-311681117131457-detections.json");
                        d["data"][0]["image"]["id"] = json!(id.to_string());
                        json!({"id": id.to_string(), "detections": d})
                    } else if fields.contains("object_value") {
                        json!({"id": id.to_string(), "object_value": "object--bench", "first_seen_at": "2017-08-23T21:32:26+0000"})
                    } else {
                        image(id)
                    };
                    out.insert(id.to_string(), v);
                }
                (StatusCode::OK, Value::Object(out).to_string()).into_response()
            }
        }),
    )
}

#[tokio::test]
async fn missing_ids_are_found_by_bisection() {
    let all: Vec<i64> = (1..=120).map(|i| 4_000_000_000_000_000 + i).collect();
    let gone: BTreeSet<i64> = [all[3], all[77], all[119]].into();
    let existing: BTreeSet<i64> = all.iter().copied().filter(|i| !gone.contains(i)).collect();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = client(&serve(ids_app(existing.clone(), calls.clone())).await);
    let ids: Vec<ImageId> = all.iter().map(|&i| ImageId(i)).collect();
    let r = c.images_by_id(&ids).await.unwrap();
    let found: BTreeSet<i64> = r.found.iter().map(|i| i.id.0).collect();
    assert_eq!(found, existing);
    assert_eq!(r.missing.iter().copied().collect::<BTreeSet<_>>(), gone);
    assert_eq!(r.missing.len(), 3);
    // 3 chunks; each lone miss costs about 2*log2(50) extra calls at most.
    let n = calls.load(Ordering::SeqCst);
    assert!(n <= 3 + 3 * 13, "{n} calls");
    assert_eq!(c.counters().entity, n as u64);

    let d = c.detections_by_image(&[ImageId(all[0]), ImageId(all[3])]).await.unwrap();
    assert_eq!(d.missing, vec![all[3]]);
    assert_eq!(d.found.len(), 1);
    assert_eq!(d.found[0][0].image_id, ImageId(all[0]));
    assert_eq!(d.found[0][0].id, 313_159_516_983_617);

    let f = c.map_features_by_id(&[MapFeatureId(all[1]), MapFeatureId(all[1])]).await.unwrap();
    assert_eq!(f.found.len(), 1, "duplicates are asked once");
    assert_eq!(f.found[0].first_seen_at_ms, Some(1_503_523_946_000));
}

/// A raw HTTP server: each connection gets the next scripted behaviour.
#[derive(Clone, Copy, Debug)]
enum Raw {
    Reset,
    Truncated,
    HugeLength,
    Ok,
}

async fn raw_server(script: Vec<Raw>) -> (String, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let cn = conns.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            let i = cn.fetch_add(1, Ordering::SeqCst);
            let step = script.get(i).copied().unwrap_or(Raw::Ok);
            let mut buf = vec![0u8; 8192];
            let _ = s.read(&mut buf).await;
            let body = json!({"data": [image(42)]}).to_string();
            match step {
                Raw::Reset => {
                    // Linger 0 turns the close into a TCP RST (and cannot block with a zero timeout).
                    #[allow(deprecated)]
                    let _ = s.set_linger(Some(Duration::ZERO));
                    drop(s);
                }
                Raw::Truncated => {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len() + 50
                    );
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(&body.as_bytes()[..10]).await;
                }
                Raw::HugeLength => {
                    let head = "HTTP/1.1 200 OK\r\nContent-Length: 999999999999\r\nConnection: close\r\n\r\n";
                    let _ = s.write_all(head.as_bytes()).await;
                }
                Raw::Ok => {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(body.as_bytes()).await;
                }
            }
        }
    });
    (format!("http://{addr}"), conns)
}

#[tokio::test]
async fn resets_and_truncated_bodies_are_retried() {
    let (base, conns) = raw_server(vec![Raw::Reset, Raw::Truncated, Raw::Ok]).await;
    let c = client(&base);
    let Search::Complete(v) = c.search_images(&bbox()).await.unwrap() else { panic!("TooMuch") };
    assert_eq!(v[0].id, ImageId(42));
    assert_eq!(conns.load(Ordering::SeqCst), 3);
    assert_eq!(c.counters().retries, 2);
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let (base, _) = raw_server(vec![Raw::HugeLength]).await;
    let c = client(&base);
    let e = c.tile(Tileset::Public, TileId::new(14, 3, 4).unwrap(), None).await.unwrap_err();
    assert!(matches!(e, ApiError::TooLarge { .. }), "{e:?}");
    assert!(e.to_string().contains("14/3/4"), "{e}");
    assert_no_token(&e);
}

#[tokio::test]
async fn connection_refused_is_transient_and_token_free() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let mut s = settings(&base);
    s.max_retries = 1;
    let c = ApiClient::new(s, Pacing::ThisProcess).unwrap();
    let e = c.tile(Tileset::Public, TileId::new(14, 3, 4).unwrap(), None).await.unwrap_err();
    assert!(matches!(e, ApiError::Transient { attempts: 2, .. }), "{e:?}");
    assert_no_token(&e);
    let e = c.images_by_id(&[ImageId(1)]).await.unwrap_err();
    assert_no_token(&e);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limiter_keeps_sliding_window_under_limit() {
    let stamps = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let st = stamps.clone();
    let app = Router::new().route(
        "/",
        get(move || {
            st.lock().unwrap().push(Instant::now());
            async { json!({"1": image(1)}).to_string() }
        }),
    );
    let mut s = settings(&serve(app).await);
    s.entity_per_minute = 600; // 10/s
    let c = ApiClient::new(s, Pacing::ThisProcess).unwrap();
    let t0 = Instant::now();
    let run = Duration::from_secs(3);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            while t0.elapsed() < run {
                c.images_by_id(&[ImageId(1)]).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let v = stamps.lock().unwrap().clone();
    // Slots 61/600 s apart (budget::timeline::spacing): about 10 in any second, a call up to
    // GRACE (250 ms) late on its slot may add two.
    let max_1s = v
        .iter()
        .map(|a| v.iter().filter(|b| **b >= *a && b.duration_since(*a) < Duration::from_secs(1)).count())
        .max()
        .unwrap();
    assert!(max_1s <= 13, "{max_1s} requests in one second");
    // 3 s of 9.84/s.
    let in_run = v.iter().filter(|t| t.duration_since(t0) < run).count();
    eprintln!("limiter at 600/min: {in_run} requests in 3 s, at most {max_1s} in any 1 s");
    assert!(in_run <= 40, "{in_run} in 3 s");
    assert!(in_run >= 25, "limiter too slow: {in_run} in 3 s");
    assert_eq!(c.counters().throttled, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_the_simulator() {
    // `mly-harvest simulate` (common::Sim) needs the CLI, which is not wired yet; the same
    // simulator is served in-process here, still over real loopback HTTP.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut args = mly_sim::SimulateArgs::with_listen(addr);
    args.entity_per_minute = 600;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        mly_sim::serve(&args, listener, async move {
            let _ = stopped.await;
        })
        .await
    });
    let sim_url = format!("http://{addr}");
    let mut s = settings(&sim_url);
    s.token = Secret::new(common::SIM_TOKEN);
    s.entity_per_minute = 600;
    let c = ApiClient::new(s.clone(), Pacing::ThisProcess).unwrap();

    // A z14 tile with coverage, then the same tile again with its ETag.
    let tile = TileId::new(14, 8574, 5735).unwrap();
    let TileResponse::Data { bytes, etag } = c.tile(Tileset::Public, tile, None).await.unwrap() else {
        panic!("expected coverage at {tile:?}")
    };
    let decoded = mly_core::mvt::decode_tile(Tileset::Public, tile, &bytes).unwrap();
    assert!(!decoded.images.is_empty());
    if let Some(etag) = etag {
        assert_eq!(c.tile(Tileset::Public, tile, Some(&etag)).await.unwrap(), TileResponse::NotModified);
    }

    // Enrich some of the tile's images by id, with one id that does not exist.
    let mut ids: Vec<ImageId> = decoded.images.iter().take(60).map(|i| i.id).collect();
    ids.push(ImageId(9_999_999_999_999_999));
    let r = c.images_by_id(&ids).await.unwrap();
    assert_eq!(r.missing, vec![9_999_999_999_999_999]);
    assert_eq!(r.found.len(), ids.len() - 1);
    let first = &decoded.images[0];
    let got = r.found.iter().find(|d| d.id == first.id).unwrap();
    let (lon, lat) = got.geometry.unwrap();
    assert!((lon - first.lon).abs() < 1e-4 && (lat - first.lat).abs() < 1e-4, "{lon},{lat} vs {first:?}");

    // A small bbox search around that image answers (complete or "split me").
    let b = Bbox::new(first.lon - 0.001, first.lat - 0.001, first.lon + 0.001, first.lat + 0.001).unwrap();
    match c.search_images(&b).await.unwrap() {
        Search::Complete(v) => assert!(v.iter().any(|i| i.id == first.id)),
        Search::TooMuch => {}
    }
    // A box over the area cap must be split.
    let big = Bbox::new(8.3, 47.3, 8.5, 47.5).unwrap();
    assert_eq!(c.search_images(&big).await.unwrap(), Search::TooMuch);

    // A token the simulator never issued stops at once, and never shows up in the error.
    let mut bad = s.clone();
    bad.token = Secret::new(TOKEN);
    let e = ApiClient::new(bad, Pacing::ThisProcess).unwrap().images_by_id(&ids[..1]).await.unwrap_err();
    assert!(e.is_auth(), "{e:?}");
    assert_no_token(&e);

    let stats_url = format!("{sim_url}/__sim/stats");
    let (status, body) =
        tokio::task::spawn_blocking(move || common::http_get(&stats_url, &[])).await.unwrap();
    assert_eq!(status, 200);
    let stats: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(stats["throttled"], 0, "{stats}");
    eprintln!(
        "simulator: {} images in the tile; client {:?}; sim {stats}",
        decoded.images.len(),
        c.counters()
    );
    assert_eq!(c.counters().throttled, 0);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
