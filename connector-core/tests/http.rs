//! The HTTP support library against a real actix-web server on loopback.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use connector_core::http::{self, HttpClient, HttpError, HttpOptions};
use serde_json::{json, Value};

const SHORT_TIMEOUT: Duration = Duration::from_millis(300);
/// For requests that are meant to be answered: generous, so a loaded CI
/// machine never turns an answer into a time-out and a retry.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
const SHORT_DELAY: Duration = Duration::from_millis(10);
/// How often `/flaky` answers 503 before it answers 200.
const FLAKY_FAILURES: usize = 2;

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: String,
    headers: BTreeMap<String, String>,
    body: String,
}

type SeenLog = web::Data<Mutex<Vec<Seen>>>;

/// A real HTTP server on 127.0.0.1 whose answer depends on the path:
/// `/flaky` 503 twice then 200, `/unavailable` always 503, `/missing` 404,
/// `/slow` 200 after 2 s, `/binary` non-UTF-8 bytes, anything else a JSON
/// echo of the request.
struct TestServer {
    addr: SocketAddr,
    seen: SeenLog,
    handle: ServerHandle,
}

impl TestServer {
    async fn start() -> Self {
        let seen: SeenLog = web::Data::new(Mutex::new(Vec::new()));
        let app_seen = seen.clone();
        let server = HttpServer::new(move || App::new().app_data(app_seen.clone()).default_service(web::to(answer)))
            .workers(1)
            .disable_signals()
            .bind(("127.0.0.1", 0))
            .expect("bind loopback");
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Self { addr, seen, handle }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn attempts(&self, path: &str) -> usize {
        self.seen().iter().filter(|s| s.path == path).count()
    }

    async fn stop(self) {
        self.handle.stop(false).await;
    }
}

async fn answer(request: HttpRequest, body: web::Bytes, seen: SeenLog) -> HttpResponse {
    let record = Seen {
        method: request.method().to_string(),
        path: request.path().to_owned(),
        query: request.query_string().to_owned(),
        headers: request
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("?").to_owned()))
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let attempt = {
        let mut seen = seen.lock().unwrap();
        seen.push(record.clone());
        seen.iter().filter(|s| s.path == record.path).count()
    };
    match record.path.as_str() {
        "/flaky" if attempt <= FLAKY_FAILURES => HttpResponse::ServiceUnavailable().finish(),
        "/unavailable" => HttpResponse::ServiceUnavailable().body("down"),
        "/missing" => HttpResponse::NotFound().body("no such device"),
        "/slow" => {
            actix_rt::time::sleep(Duration::from_secs(2)).await;
            HttpResponse::Ok().body("late")
        }
        "/binary" => HttpResponse::Ok().body(vec![0xff, 0xfe, 0xfd]),
        _ => HttpResponse::Ok()
            .insert_header(("X-Served-By", "test-server"))
            .json(json!({
                "method": record.method,
                "query": record.query,
                "body": record.body,
            })),
    }
}

/// A loopback port on which nothing listens.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Log lines written through `tracing` while the guard lives.
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    fn start() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Self::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLogs {
    type Writer = CapturedLogs;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[actix_rt::test]
async fn query_values_with_special_characters_arrive_decoded_after_the_existing_query() {
    let server = TestServer::start().await;
    let pairs = [
        ("id", "1"),
        ("text", "a b&c=d+e/f?g#h%"),
        ("name", "Jürgen 東京 🌍"),
        ("empty", ""),
    ];

    let response = http::get(server.url("/lookup?existing=yes"))
        .query(&pairs)
        .timeout(ANSWER_TIMEOUT)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status, 200);
    let seen = server.seen();
    let decoded = web::Query::<Vec<(String, String)>>::from_query(&seen[0].query)
        .unwrap()
        .into_inner();
    let mut expected = vec![("existing".to_owned(), "yes".to_owned())];
    expected.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    assert_eq!(decoded, expected);
    assert_eq!(seen[0].path, "/lookup");
    server.stop().await;
}

#[actix_rt::test]
async fn request_headers_arrive_and_response_headers_come_back_in_lower_case() {
    let server = TestServer::start().await;

    let response = http::get(server.url("/devices"))
        .header("Accept", "application/json")
        .headers(&[("X-Custom", "first"), ("X-Other", "o")])
        .header("x-custom", "replaced")
        .timeout(ANSWER_TIMEOUT)
        .send()
        .await
        .unwrap();

    let headers = &server.seen()[0].headers;
    assert_eq!(headers["accept"], "application/json");
    assert_eq!(headers["x-custom"], "replaced");
    assert_eq!(headers["x-other"], "o");
    assert_eq!(response.headers["x-served-by"], "test-server");
    assert_eq!(response.header("X-Served-By"), Some("test-server"));
    assert_eq!(response.header("content-type"), Some("application/json"));
    server.stop().await;
}

#[actix_rt::test]
async fn each_method_is_sent_as_itself_with_its_body() {
    let server = TestServer::start().await;
    let url = server.url("/item");

    let get = http::get(&url).timeout(ANSWER_TIMEOUT).send().await.unwrap();
    let post = http::post(&url, "posted").timeout(ANSWER_TIMEOUT).send().await.unwrap();
    let put = http::put(&url, "put body")
        .timeout(ANSWER_TIMEOUT)
        .send()
        .await
        .unwrap();
    let delete = http::delete(&url).timeout(ANSWER_TIMEOUT).send().await.unwrap();
    let head = http::head(&url).timeout(ANSWER_TIMEOUT).send().await.unwrap();

    let seen: Vec<(String, String)> = server.seen().into_iter().map(|s| (s.method, s.body)).collect();
    let expected = [
        ("GET", ""),
        ("POST", "posted"),
        ("PUT", "put body"),
        ("DELETE", ""),
        ("HEAD", ""),
    ];
    assert_eq!(seen, expected.map(|(m, b)| (m.to_owned(), b.to_owned())).to_vec());
    for (response, method) in [(&get, "GET"), (&post, "POST"), (&put, "PUT"), (&delete, "DELETE")] {
        assert!(response.is_success());
        assert_eq!(response.json::<Value>().unwrap()["method"], method);
    }
    assert_eq!(post.json::<Value>().unwrap()["body"], "posted");
    assert_eq!(head.status, 200);
    assert_eq!(head.body, "");
    server.stop().await;
}

#[actix_rt::test]
async fn json_bodies_are_serialised_with_their_content_type() {
    let server = TestServer::start().await;
    let client = HttpClient::new().with_header("X-Api-Key", "key-1");

    let response = client
        .post(server.url("/devices"), "")
        .json(&json!({ "id": "lamp-1", "values": [1, 2] }))
        .timeout(ANSWER_TIMEOUT)
        .send()
        .await
        .unwrap();

    let seen = &server.seen()[0];
    assert_eq!(seen.headers["content-type"], "application/json");
    assert_eq!(seen.headers["x-api-key"], "key-1");
    let sent: Value = serde_json::from_str(&seen.body).unwrap();
    assert_eq!(sent, json!({ "id": "lamp-1", "values": [1, 2] }));
    assert!(response.is_success());
    server.stop().await;
}

#[actix_rt::test]
async fn a_slow_answer_ends_in_a_timeout_error() {
    let server = TestServer::start().await;

    let err = http::get(server.url("/slow"))
        .timeout(SHORT_TIMEOUT)
        .send()
        .await
        .unwrap_err();

    assert!(
        matches!(err, HttpError::Timeout { timeout, .. } if timeout == SHORT_TIMEOUT),
        "{err:?}"
    );
    assert_eq!(err.url(), server.url("/slow"));
    assert_eq!(err.method(), "GET");
    server.stop().await;
}

#[actix_rt::test]
async fn a_503_is_retried_until_the_server_recovers() {
    let server = TestServer::start().await;
    let (logs, _guard) = CapturedLogs::start();

    let response = http::get(server.url("/flaky"))
        .timeout(ANSWER_TIMEOUT)
        .retries(FLAKY_FAILURES as u32)
        .retry_delay(SHORT_DELAY)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status, 200);
    assert_eq!(server.attempts("/flaky"), FLAKY_FAILURES + 1);
    let logs = logs.text();
    assert_eq!(logs.matches("retrying").count(), FLAKY_FAILURES, "{logs}");
    assert!(logs.contains("status 503"), "{logs}");
    server.stop().await;
}

#[actix_rt::test]
async fn a_5xx_after_the_last_retry_is_returned_as_a_response() {
    let server = TestServer::start().await;

    let response = http::get(server.url("/unavailable"))
        .timeout(ANSWER_TIMEOUT)
        .retries(1)
        .retry_delay(SHORT_DELAY)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status, 503);
    assert_eq!(response.body, "down");
    assert!(!response.is_success());
    assert_eq!(server.attempts("/unavailable"), 2);
    server.stop().await;
}

#[actix_rt::test]
async fn a_404_is_never_retried() {
    let server = TestServer::start().await;

    let response = http::get(server.url("/missing"))
        .timeout(ANSWER_TIMEOUT)
        .retries(3)
        .retry_delay(SHORT_DELAY)
        .send()
        .await
        .unwrap();

    assert_eq!(response.status, 404);
    assert_eq!(response.body, "no such device");
    assert_eq!(server.attempts("/missing"), 1);
    server.stop().await;
}

#[actix_rt::test]
async fn a_refused_connection_is_retried_then_reported_as_a_transport_error() {
    let url = format!("http://127.0.0.1:{}/register", closed_port());
    let (logs, _guard) = CapturedLogs::start();

    let err = http::delete(&url)
        .options(HttpOptions {
            timeout: ANSWER_TIMEOUT,
            retries: 2,
            retry_delay: SHORT_DELAY,
            ..HttpOptions::default()
        })
        .send()
        .await
        .unwrap_err();

    assert!(matches!(err, HttpError::Transport { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(err.method(), "DELETE");
    assert_eq!(err.url(), url);
    let logs = logs.text();
    assert_eq!(logs.matches("retrying").count(), 2, "{logs}");
    assert_eq!(logs.matches("sending http request").count(), 3, "{logs}");
}

#[actix_rt::test]
async fn the_password_of_a_url_never_appears_in_errors_or_logs() {
    let (logs, _guard) = CapturedLogs::start();
    let url = format!("http://user:secret@127.0.0.1:{}/x", closed_port());

    let err = http::get(&url)
        .timeout(ANSWER_TIMEOUT)
        .retries(1)
        .retry_delay(SHORT_DELAY)
        .send()
        .await
        .unwrap_err();
    let invalid = http::get("ftp://user:secret@host/x").send().await.unwrap_err();

    for err in [&err, &invalid] {
        for text in [err.to_string(), format!("{err:?}"), err.url().to_owned()] {
            assert!(!text.contains("secret"), "{text}");
            assert!(!text.contains("user:"), "{text}");
        }
    }
    assert!(matches!(invalid, HttpError::InvalidUrl { .. }), "{invalid:?}");
    assert!(err.to_string().contains("127.0.0.1"));
    let request = http::get(&url).header("Authorization", "Bearer secret");
    assert!(!format!("{request:?}").contains("secret"));
    let logs = logs.text();
    assert!(logs.contains("retrying"), "{logs}");
    assert!(!logs.contains("secret"), "{logs}");
}

#[actix_rt::test]
async fn userinfo_is_sent_as_basic_auth_and_not_in_the_request_line() {
    let server = TestServer::start().await;
    let url = format!("http://user:p%40ss@{}/private", server.addr);

    let response = http::get(url).timeout(ANSWER_TIMEOUT).send().await.unwrap();

    assert!(response.is_success());
    let seen = &server.seen()[0];
    // base64("user:p@ss")
    assert_eq!(seen.headers["authorization"], "Basic dXNlcjpwQHNz");
    assert_eq!(seen.path, "/private");
    server.stop().await;
}

#[actix_rt::test]
async fn bodies_that_are_too_large_or_not_utf8_are_errors() {
    let server = TestServer::start().await;

    let too_large = http::get(server.url("/echo"))
        .timeout(ANSWER_TIMEOUT)
        .max_body_size(4)
        .send()
        .await
        .unwrap_err();
    let not_utf8 = http::get(server.url("/binary"))
        .timeout(ANSWER_TIMEOUT)
        .send()
        .await
        .unwrap_err();

    assert!(
        matches!(too_large, HttpError::BodyTooLarge { limit: 4, .. }),
        "{too_large:?}"
    );
    assert!(matches!(not_utf8, HttpError::BodyNotUtf8 { .. }), "{not_utf8:?}");
    assert!(!too_large.is_retryable());
    server.stop().await;
}

#[actix_rt::test]
async fn invalid_header_names_are_reported_without_their_value() {
    let err = http::get("http://127.0.0.1:1/x")
        .header("Bad Name", "hidden-value")
        .send()
        .await
        .unwrap_err();

    assert!(matches!(err, HttpError::InvalidHeader { ref name, .. } if name == "Bad Name"));
    assert!(!err.to_string().contains("hidden-value"));
}
