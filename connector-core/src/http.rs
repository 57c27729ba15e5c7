//! Small HTTP client for the platform's REST services (device lookup,
//! device (un)registration): one request builder on top of `awc` with
//! time-outs, retries and errors that never contain a URL's password.
//!
//! # Runtime
//!
//! `awc` is not `Send`: every future returned here must run on a
//! current-thread actix runtime (`#[actix_rt::main]`, `#[actix_rt::test]`,
//! `actix_rt::System`, or `actix_rt::spawn` / `ctx.spawn(fut.into_actor(..))`
//! from inside an actor), never on a multi-threaded Tokio executor.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use connector_core::http;
//!
//! # async fn run() -> Result<(), http::HttpError> {
//! // GET http://platform.local/path?id=1&lang=en
//! let response = http::get("http://platform.local/path")
//!     .query(&[("id", "1"), ("lang", "en")])
//!     .header("Accept", "application/json")
//!     .timeout(Duration::from_millis(500))
//!     .retries(2)
//!     .send()
//!     .await?;
//! if response.is_success() {
//!     println!("{}", response.body);
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use awc::error::{ConnectError, PayloadError, SendRequestError};
use awc::http::header::{HeaderName, HeaderValue};
use awc::http::{Method, Uri};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Time allowed for one attempt, from connecting to the last body byte.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// Extra attempts after the first one fails.
pub const DEFAULT_RETRIES: u32 = 0;
/// Pause between two attempts.
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_millis(500);
/// Largest response body accepted, in bytes.
pub const DEFAULT_MAX_BODY_SIZE: usize = 8 * 1024 * 1024;

/// Per-request settings; [`Default`] gives the seed's defaults
/// (time-out 3 s, no retry, 0.5 s between retries).
///
/// ```
/// use std::time::Duration;
/// use connector_core::http::HttpOptions;
///
/// let options = HttpOptions { retries: 2, ..HttpOptions::default() };
/// assert_eq!(options.timeout, Duration::from_secs(3));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpOptions {
    /// Time allowed for one attempt, body included.
    pub timeout: Duration,
    /// Extra attempts after a transport error, a time-out or a 5xx answer.
    pub retries: u32,
    /// Pause between two attempts.
    pub retry_delay: Duration,
    /// Largest response body accepted, in bytes.
    pub max_body_size: usize,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            retries: DEFAULT_RETRIES,
            retry_delay: DEFAULT_RETRY_DELAY,
            max_body_size: DEFAULT_MAX_BODY_SIZE,
        }
    }
}

/// Why a request produced no [`Response`].
///
/// Every variant carries the method and the URL with its userinfo
/// (`user:password@`) removed, so the error can be logged as is.
/// Causes are kept as text rather than `awc` errors so that the error is
/// `Send + Sync` and can cross into other threads and `anyhow`-style errors.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL could not be parsed or is not `http(s)://host…`.
    #[error("{method} {url}: invalid URL: {reason}")]
    InvalidUrl {
        method: Method,
        url: String,
        reason: String,
    },
    /// A header name or value is not valid HTTP; the value is not repeated
    /// because it may be a credential.
    #[error("{method} {url}: invalid header {name:?}")]
    InvalidHeader { method: Method, url: String, name: String },
    /// The value given to [`RequestBuilder::json`] could not be serialised.
    #[error("{method} {url}: cannot encode the JSON body")]
    Encode {
        method: Method,
        url: String,
        #[source]
        source: serde_json::Error,
    },
    /// The last attempt did not finish within the time-out.
    #[error("{method} {url}: timed out after {timeout:?}")]
    Timeout {
        method: Method,
        url: String,
        timeout: Duration,
    },
    /// Connecting, sending or receiving failed on the last attempt.
    #[error("{method} {url}: {reason}")]
    Transport {
        method: Method,
        url: String,
        reason: String,
    },
    /// The response body is larger than the configured maximum.
    #[error("{method} {url}: response body larger than {limit} bytes")]
    BodyTooLarge { method: Method, url: String, limit: usize },
    /// The response body is not UTF-8 text.
    #[error("{method} {url}: response body is not UTF-8")]
    BodyNotUtf8 {
        method: Method,
        url: String,
        #[source]
        source: std::string::FromUtf8Error,
    },
}

impl HttpError {
    /// The request's method.
    pub fn method(&self) -> &Method {
        match self {
            Self::InvalidUrl { method, .. }
            | Self::InvalidHeader { method, .. }
            | Self::Encode { method, .. }
            | Self::Timeout { method, .. }
            | Self::Transport { method, .. }
            | Self::BodyTooLarge { method, .. }
            | Self::BodyNotUtf8 { method, .. } => method,
        }
    }

    /// The request's URL without userinfo.
    pub fn url(&self) -> &str {
        match self {
            Self::InvalidUrl { url, .. }
            | Self::InvalidHeader { url, .. }
            | Self::Encode { url, .. }
            | Self::Timeout { url, .. }
            | Self::Transport { url, .. }
            | Self::BodyTooLarge { url, .. }
            | Self::BodyNotUtf8 { url, .. } => url,
        }
    }

    /// Whether this error ended an attempt that the retry policy repeats
    /// (time-outs and transport errors).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Timeout { .. } | Self::Transport { .. })
    }
}

/// A complete answer: any status, including 4xx and 5xx.
///
/// ```
/// use connector_core::http::Response;
///
/// let response = Response { status: 200, headers: Default::default(), body: "[1,2]".into() };
/// assert!(response.is_success());
/// assert_eq!(response.json::<Vec<u8>>().unwrap(), vec![1, 2]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code, e.g. `200`.
    pub status: u16,
    /// Header names in lower case; repeated headers are joined with `", "`.
    pub headers: BTreeMap<String, String>,
    /// Body text (empty for `HEAD`).
    pub body: String,
}

impl Response {
    /// `true` for a 2xx status.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The value of a header, whatever the case of `name`.
    ///
    /// ```
    /// # use connector_core::http::Response;
    /// let mut response = Response { status: 200, headers: Default::default(), body: String::new() };
    /// response.headers.insert("content-type".into(), "text/plain".into());
    /// assert_eq!(response.header("Content-Type"), Some("text/plain"));
    /// ```
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }

    /// Parses the body as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.body)
    }
}

/// Reusable client: an `awc::Client` (one connection pool) plus the
/// options and headers every request starts with.
///
/// Cloning is cheap and shares the pool. Like `awc::Client`, it is not
/// `Send`: create one per actix thread.
///
/// ```no_run
/// use connector_core::http::{HttpClient, HttpOptions};
///
/// # async fn run() -> Result<(), connector_core::http::HttpError> {
/// let client = HttpClient::new()
///     .with_options(HttpOptions { retries: 3, ..HttpOptions::default() })
///     .with_header("X-Api-Key", "k");
/// let response = client
///     .post("http://platform.local/devices", "")
///     .json(&serde_json::json!({ "id": "lamp-1" }))
///     .send()
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct HttpClient {
    client: awc::Client,
    options: HttpOptions,
    headers: Vec<(String, String)>,
}

impl HttpClient {
    /// A client speaking `http://` and `https://` (trusting the bundled
    /// public roots, see [`TlsSettings::bundled`](crate::tls::TlsSettings::bundled))
    /// with [`HttpOptions::default`]. For a custom CA use
    /// [`TlsSettings::load`](crate::tls::TlsSettings::load) and [`from_awc`](Self::from_awc).
    pub fn new() -> Self {
        Self::from_awc(crate::tls::TlsSettings::bundled().awc_client(DEFAULT_TIMEOUT))
    }

    /// Wraps a pre-built `awc::Client`, e.g. one with a TLS connector.
    ///
    /// Our per-request time-out replaces the client's own.
    pub fn from_awc(client: awc::Client) -> Self {
        Self {
            client,
            options: HttpOptions::default(),
            headers: Vec::new(),
        }
    }

    /// Sets the options every request starts with.
    pub fn with_options(mut self, options: HttpOptions) -> Self {
        self.options = options;
        self
    }

    /// Adds a header every request starts with; a request's own header of
    /// the same name replaces it.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        set_header(&mut self.headers, name.into(), value.into());
        self
    }

    /// The options every request starts with.
    pub fn options(&self) -> &HttpOptions {
        &self.options
    }

    /// The `awc::Client` underneath, for what this builder does not cover
    /// (the platform WebSocket), so that it shares the client's TLS set-up.
    pub fn awc(&self) -> &awc::Client {
        &self.client
    }

    /// Starts a request with any method.
    pub fn request(&self, method: Method, url: impl Into<String>) -> RequestBuilder {
        RequestBuilder {
            client: self.client.clone(),
            method,
            url: url.into(),
            query: Vec::new(),
            headers: self.headers.clone(),
            body: None,
            json_error: None,
            options: self.options.clone(),
        }
    }

    /// Starts a `GET` request.
    pub fn get(&self, url: impl Into<String>) -> RequestBuilder {
        self.request(Method::GET, url)
    }

    /// Starts a `POST` request with a text body.
    pub fn post(&self, url: impl Into<String>, body: impl Into<String>) -> RequestBuilder {
        self.request(Method::POST, url).body(body)
    }

    /// Starts a `PUT` request with a text body.
    pub fn put(&self, url: impl Into<String>, body: impl Into<String>) -> RequestBuilder {
        self.request(Method::PUT, url).body(body)
    }

    /// Starts a `DELETE` request.
    pub fn delete(&self, url: impl Into<String>) -> RequestBuilder {
        self.request(Method::DELETE, url)
    }

    /// Starts a `HEAD` request (the seed's `header()`).
    pub fn head(&self, url: impl Into<String>) -> RequestBuilder {
        self.request(Method::HEAD, url)
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for HttpClient {
    // Header values may be credentials, so only names are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("options", &self.options)
            .field("headers", &header_names(&self.headers))
            .finish_non_exhaustive()
    }
}

/// Starts a `GET` request with a fresh default client.
///
/// ```no_run
/// # async fn run() -> Result<(), connector_core::http::HttpError> {
/// let response = connector_core::http::get("http://platform.local/lookup")
///     .query(&[("id", "lamp 1")])
///     .send()
///     .await?;
/// # Ok(())
/// # }
/// ```
pub fn get(url: impl Into<String>) -> RequestBuilder {
    HttpClient::new().get(url)
}

/// Starts a `POST` request with a text body and a fresh default client.
///
/// ```no_run
/// # async fn run() -> Result<(), connector_core::http::HttpError> {
/// let response = connector_core::http::post("http://platform.local/path", r#"{"unit":"kW"}"#)
///     .header("Content-Type", "application/json")
///     .send()
///     .await?;
/// # Ok(())
/// # }
/// ```
pub fn post(url: impl Into<String>, body: impl Into<String>) -> RequestBuilder {
    HttpClient::new().post(url, body)
}

/// Starts a `PUT` request with a text body and a fresh default client.
///
/// ```no_run
/// # async fn run() -> Result<(), connector_core::http::HttpError> {
/// let status = connector_core::http::put("http://platform.local/x", "v").send().await?.status;
/// # Ok(())
/// # }
/// ```
pub fn put(url: impl Into<String>, body: impl Into<String>) -> RequestBuilder {
    HttpClient::new().put(url, body)
}

/// Starts a `DELETE` request with a fresh default client.
///
/// ```no_run
/// # async fn run() -> Result<(), connector_core::http::HttpError> {
/// let status = connector_core::http::delete("http://platform.local/x").send().await?.status;
/// # Ok(())
/// # }
/// ```
pub fn delete(url: impl Into<String>) -> RequestBuilder {
    HttpClient::new().delete(url)
}

/// Starts a `HEAD` request with a fresh default client.
///
/// ```no_run
/// # async fn run() -> Result<(), connector_core::http::HttpError> {
/// let response = connector_core::http::head("http://platform.local/x").send().await?;
/// let length = response.header("content-length");
/// # Ok(())
/// # }
/// ```
pub fn head(url: impl Into<String>) -> RequestBuilder {
    HttpClient::new().head(url)
}

/// One request being put together; nothing is checked or sent before
/// [`send`](Self::send).
#[must_use = "a request does nothing until `send().await`"]
pub struct RequestBuilder {
    client: awc::Client,
    method: Method,
    url: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: Option<String>,
    // Kept until `send` so that the builder chain stays infallible.
    json_error: Option<serde_json::Error>,
    options: HttpOptions,
}

impl RequestBuilder {
    /// Appends query parameters, percent-encoded, after any query already in
    /// the URL.
    ///
    /// ```
    /// let request = connector_core::http::get("http://h/p?a=1").query(&[("q", "x & y")]);
    /// ```
    pub fn query<K: AsRef<str>, V: AsRef<str>>(mut self, pairs: &[(K, V)]) -> Self {
        self.query.extend(
            pairs
                .iter()
                .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned())),
        );
        self
    }

    /// Sets a header, replacing one of the same name (case-insensitive).
    ///
    /// ```
    /// let request = connector_core::http::get("http://h/").header("Accept", "application/json");
    /// ```
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        set_header(&mut self.headers, name.into(), value.into());
        self
    }

    /// Sets several headers, as [`header`](Self::header) does.
    pub fn headers<K: AsRef<str>, V: AsRef<str>>(mut self, headers: &[(K, V)]) -> Self {
        for (name, value) in headers {
            set_header(&mut self.headers, name.as_ref().to_owned(), value.as_ref().to_owned());
        }
        self
    }

    /// Sets the body text, sent as is (set `Content-Type` yourself).
    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = Some(body.into());
        self.json_error = None;
        self
    }

    /// Sets the body to `value` as JSON and `Content-Type: application/json`.
    ///
    /// ```
    /// let request = connector_core::http::post("http://h/devices", "")
    ///     .json(&serde_json::json!({ "id": "lamp-1" }));
    /// ```
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Self {
        match serde_json::to_string(value) {
            Ok(text) => {
                self.body = Some(text);
                self.json_error = None;
            }
            Err(err) => self.json_error = Some(err),
        }
        self.header("Content-Type", "application/json")
    }

    /// Time allowed for one attempt, body included (default 3 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = timeout;
        self
    }

    /// Extra attempts after a transport error, a time-out or a 5xx answer
    /// (default 0). A 4xx answer is never retried.
    pub fn retries(mut self, retries: u32) -> Self {
        self.options.retries = retries;
        self
    }

    /// Pause between two attempts (default 0.5 s).
    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.options.retry_delay = delay;
        self
    }

    /// Largest response body accepted, in bytes (default 8 MiB).
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.options.max_body_size = bytes;
        self
    }

    /// Replaces all options at once.
    pub fn options(mut self, options: HttpOptions) -> Self {
        self.options = options;
        self
    }

    /// Sends the request, retrying as configured.
    ///
    /// Any status is an `Ok` [`Response`]; a 5xx is retried and, once the
    /// retries are spent, returned like any other answer. An `Err` means no
    /// answer: bad input, or a time-out / transport error on the last attempt.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), connector_core::http::HttpError> {
    /// let response = connector_core::http::delete("http://h/devices/1").retries(1).send().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send(self) -> Result<Response, HttpError> {
        let shown_url = redact_userinfo(&self.url);
        let method = self.method.clone();
        let target = build_target(&self.url, &self.query).map_err(|reason| HttpError::InvalidUrl {
            method: method.clone(),
            url: shown_url.clone(),
            reason,
        })?;
        let headers = parse_headers(&self.headers).map_err(|name| HttpError::InvalidHeader {
            method: method.clone(),
            url: shown_url.clone(),
            name,
        })?;
        if let Some(source) = self.json_error {
            return Err(HttpError::Encode {
                method,
                url: shown_url,
                source,
            });
        }

        let attempt = Attempt {
            client: &self.client,
            method: &method,
            shown_url: &shown_url,
            target: &target,
            headers: &headers,
            body: self.body.as_deref(),
            options: &self.options,
        };
        let attempts = self.options.retries.saturating_add(1);
        let mut number = 1;
        loop {
            tracing::debug!(method = %method, url = %shown_url, attempt = number, "sending http request");
            let outcome = attempt.run().await;
            let reason = match &outcome {
                Ok(response) if response.status >= 500 => format!("status {}", response.status),
                Err(err) if err.is_retryable() => err.to_string(),
                _ => return outcome,
            };
            if number >= attempts {
                return outcome;
            }
            tracing::warn!(
                method = %method,
                url = %shown_url,
                attempt = number,
                attempts,
                reason = %reason,
                retry_in_ms = self.options.retry_delay.as_millis() as u64,
                "http request failed, retrying"
            );
            actix_rt::time::sleep(self.options.retry_delay).await;
            number += 1;
        }
    }
}

impl fmt::Debug for RequestBuilder {
    // Never print the raw URL or header values: they may hold credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestBuilder")
            .field("method", &self.method)
            .field("url", &redact_userinfo(&self.url))
            .field("query", &self.query)
            .field("headers", &header_names(&self.headers))
            .field("body_len", &self.body.as_ref().map(String::len))
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// What one attempt needs, checked once before the retry loop.
struct Attempt<'a> {
    client: &'a awc::Client,
    method: &'a Method,
    shown_url: &'a str,
    target: &'a Target,
    headers: &'a [(HeaderName, HeaderValue)],
    body: Option<&'a str>,
    options: &'a HttpOptions,
}

impl Attempt<'_> {
    async fn run(&self) -> Result<Response, HttpError> {
        let timeout = self.options.timeout;
        // awc's own time-out covers the body too, but the outer one also
        // bounds anything awc might leave unbounded, so one deadline holds.
        match actix_rt::time::timeout(timeout, self.exchange()).await {
            Ok(outcome) => outcome,
            Err(_elapsed) => Err(self.timeout_error()),
        }
    }

    async fn exchange(&self) -> Result<Response, HttpError> {
        let mut request = self
            .client
            .request(self.method.clone(), self.target.uri.clone())
            .timeout(self.options.timeout);
        if let Some((user, password)) = &self.target.credentials {
            request = request.basic_auth(user, password);
        }
        // After basic_auth, so an explicit Authorization header wins.
        for (name, value) in self.headers {
            request = request.insert_header((name.clone(), value.clone()));
        }
        let sent = match self.body {
            Some(body) => request.send_body(body.to_owned()).await,
            None => request.send().await,
        };
        let mut answer = sent.map_err(|err| self.send_error(err))?;
        let bytes = answer
            .body()
            .limit(self.options.max_body_size)
            .await
            .map_err(|err| self.payload_error(err))?;
        let body = String::from_utf8(bytes.to_vec()).map_err(|source| HttpError::BodyNotUtf8 {
            method: self.method.clone(),
            url: self.shown_url.to_owned(),
            source,
        })?;
        let mut headers = BTreeMap::<String, String>::new();
        for (name, value) in answer.headers() {
            let value = String::from_utf8_lossy(value.as_bytes());
            headers
                .entry(name.as_str().to_owned())
                .and_modify(|joined| {
                    joined.push_str(", ");
                    joined.push_str(&value);
                })
                .or_insert_with(|| value.into_owned());
        }
        Ok(Response {
            status: answer.status().as_u16(),
            headers,
            body,
        })
    }

    fn timeout_error(&self) -> HttpError {
        HttpError::Timeout {
            method: self.method.clone(),
            url: self.shown_url.to_owned(),
            timeout: self.options.timeout,
        }
    }

    fn transport_error(&self, reason: String) -> HttpError {
        HttpError::Transport {
            method: self.method.clone(),
            url: self.shown_url.to_owned(),
            reason,
        }
    }

    fn send_error(&self, err: SendRequestError) -> HttpError {
        match err {
            SendRequestError::Timeout | SendRequestError::Connect(ConnectError::Timeout) => self.timeout_error(),
            SendRequestError::Url(err) => HttpError::InvalidUrl {
                method: self.method.clone(),
                url: self.shown_url.to_owned(),
                reason: err.to_string(),
            },
            SendRequestError::Connect(ConnectError::Io(io)) if crate::tls::is_untrusted_certificate(&io) => self
                .transport_error(format!(
                    "Failed to connect to host: {io} ({})",
                    crate::tls::UNTRUSTED_HINT
                )),
            // awc never saw the userinfo, so its message cannot contain it.
            other => self.transport_error(other.to_string()),
        }
    }

    fn payload_error(&self, err: PayloadError) -> HttpError {
        match err {
            PayloadError::Overflow => HttpError::BodyTooLarge {
                method: self.method.clone(),
                url: self.shown_url.to_owned(),
                limit: self.options.max_body_size,
            },
            PayloadError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => self.timeout_error(),
            other => self.transport_error(format!("reading the response body: {other}")),
        }
    }
}

/// A checked request target: the URI handed to awc (no userinfo, no
/// fragment, query merged) and the decoded credentials for Basic auth.
#[derive(Debug)]
struct Target {
    uri: Uri,
    credentials: Option<(String, String)>,
}

fn build_target(url: &str, query: &[(String, String)]) -> Result<Target, String> {
    let url = url.trim();
    // The fragment is never sent to a server.
    let url = url.split_once('#').map_or(url, |(before, _)| before);
    let (bare, userinfo) = split_userinfo(url);

    let mut full = bare;
    if !query.is_empty() {
        match full.find('?') {
            None => full.push('?'),
            Some(at) if at + 1 == full.len() || full.ends_with('&') => {}
            Some(_) => full.push('&'),
        }
        let encoded: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
            .collect();
        full.push_str(&encoded.join("&"));
    }

    let uri: Uri = full.parse().map_err(|err| format!("{err}"))?;
    match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        Some("http" | "https") => {}
        Some(other) => return Err(format!("unsupported scheme {other:?}, expected http or https")),
        None => return Err("missing scheme, expected http:// or https://".to_owned()),
    }
    match uri.host() {
        Some(host) if !host.is_empty() => {}
        _ => return Err("missing host".to_owned()),
    }

    let credentials = userinfo.map(|info| {
        let (user, password) = info.split_once(':').unwrap_or((info, ""));
        (percent_decode(user), percent_decode(password))
    });
    Ok(Target { uri, credentials })
}

/// Byte range of the authority in `url` (RFC 3986: after `scheme://`, up to
/// the first `/`, `?` or `#`); the whole prefix when there is no `://`.
fn authority_range(url: &str) -> (usize, usize) {
    let start = url.find("://").map_or(0, |at| at + 3);
    let end = url[start..].find(['/', '?', '#']).map_or(url.len(), |at| start + at);
    (start, end)
}

/// Splits `url` into the URL without userinfo and the raw userinfo.
fn split_userinfo(url: &str) -> (String, Option<&str>) {
    let (start, end) = authority_range(url);
    match url[start..end].rfind('@') {
        Some(at) => {
            let at = start + at;
            let bare = format!("{}{}", &url[..start], &url[at + 1..]);
            (bare, Some(&url[start..at]))
        }
        None => (url.to_owned(), None),
    }
}

/// `url` without `user:password@`, safe to show in errors and logs.
pub fn redact_userinfo(url: &str) -> String {
    split_userinfo(url).0
}

/// Percent-encodes everything except RFC 3986 unreserved characters, so the
/// result is valid in any query component or path segment whatever decoder
/// the server uses.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Decodes `%XX` sequences; malformed ones are kept as written.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match decoded {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn set_header(headers: &mut Vec<(String, String)>, name: String, value: String) {
    headers.retain(|(existing, _)| !existing.eq_ignore_ascii_case(&name));
    headers.push((name, value));
}

fn header_names(headers: &[(String, String)]) -> Vec<&str> {
    headers.iter().map(|(name, _)| name.as_str()).collect()
}

/// Checks header names and values; on failure returns the offending name.
fn parse_headers(headers: &[(String, String)]) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    headers
        .iter()
        .map(|(name, value)| {
            let parsed_name = HeaderName::try_from(name.as_str()).map_err(|_| name.clone())?;
            let parsed_value = HeaderValue::try_from(value.as_str()).map_err(|_| name.clone())?;
            Ok((parsed_name, parsed_value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn redaction_removes_user_and_password_only() {
        assert_eq!(
            redact_userinfo("http://user:secret@host:8080/p?q=1"),
            "http://host:8080/p?q=1"
        );
        assert_eq!(redact_userinfo("http://user@host/p"), "http://host/p");
        assert_eq!(redact_userinfo("http://host/a@b"), "http://host/a@b");
        assert_eq!(redact_userinfo("u:p@host/x"), "host/x");
        assert_eq!(redact_userinfo("http://a:b@c@host/"), "http://host/");
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(percent_encode("a b&c=d/ü~"), "a%20b%26c%3Dd%2F%C3%BC~");
    }

    #[test]
    fn percent_decoding_reverses_encoding_and_keeps_malformed_escapes() {
        assert_eq!(percent_decode("p%40ss%3Aw%C3%BCrd"), "p@ss:würd");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn query_is_merged_with_the_existing_one() {
        let q = pairs(&[("b", "2 3")]);
        let uri = |url| build_target(url, &q).unwrap().uri.to_string();
        assert_eq!(uri("http://h/p"), "http://h/p?b=2%203");
        assert_eq!(uri("http://h/p?a=1"), "http://h/p?a=1&b=2%203");
        assert_eq!(uri("http://h/p?"), "http://h/p?b=2%203");
        assert_eq!(uri("http://h/p?a=1#frag"), "http://h/p?a=1&b=2%203");
    }

    #[test]
    fn credentials_are_taken_out_of_the_uri() {
        let target = build_target("http://us%40r:p%3Ass@h:81/x", &[]).unwrap();
        assert_eq!(target.uri.to_string(), "http://h:81/x");
        assert_eq!(target.credentials, Some(("us@r".to_owned(), "p:ss".to_owned())));
    }

    #[test]
    fn urls_without_http_scheme_or_host_are_rejected() {
        assert!(build_target("ftp://h/x", &[]).is_err());
        assert!(build_target("/just/a/path", &[]).is_err());
        assert!(build_target("not a url", &[]).is_err());
        assert!(build_target("http:///x", &[]).is_err());
    }
}
